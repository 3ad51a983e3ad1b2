"""The course's sleep example on shoal's threads backend: 4 tasks that each
sleep 1 s, on 4 threads, take about 1 s in total (time.sleep releases the GIL).
More threads than CPUs is fine here: a sleeping thread leaves its CPU free.

    python examples/sleep_threads.py
"""

import time

import shoal


def sleeper(k):
    time.sleep(1)
    return k


if __name__ == "__main__":
    with shoal.Executor(max_workers=4, backend="threads") as ex:
        start = time.perf_counter()
        futures = [ex.submit(sleeper, k) for k in range(4)]
        print([f.result() for f in futures])
        print("Time spent: %.2f sec" % (time.perf_counter() - start))
