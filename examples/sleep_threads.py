"""The course's sleep example on shoal's threads backend: 4 tasks that each
sleep 1 s, on 4 threads, take about 1 s in total (time.sleep releases the GIL).

    python examples/sleep_threads.py
"""

import time

from shoal import _backend  # shoal.Pool(backend="threads") once the pool front end lands


def sleeper(k):
    time.sleep(1)
    return k


if __name__ == "__main__":
    backend = _backend.create("threads", 4)
    start = time.perf_counter()
    futures = [backend.submit(sleeper, (k,)) for k in range(4)]
    print([f.result() for f in futures])
    print("Time spent: %.2f sec" % (time.perf_counter() - start))
    backend.shutdown()
