"""Quick side-by-side check of the process engine against multiprocessing and
ProcessPoolExecutor, 2 workers, medians of 3 runs, ratios printed.
(The full benchmark suite with joblib, shared arrays and the integration lives
in benchmarks/pool/.)

    .venv/bin/python benchmarks/processes_quick.py [N=200000]
"""
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import shoal


def f(x):
    return x


def med(fn, k=3):
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    s = 20_000
    with mp.Pool(2) as p, shoal.Pool(2) as sp:
        p.map(f, range(100))
        sp.map(f, range(100))
        a = med(lambda: p.map(f, range(n), chunksize=1))
        b = med(lambda: sp.map(f, range(n), chunksize=1))
        print(f"map({n}, chunksize=1): multiprocessing {a:.3f}s shoal {b:.3f}s -> {a / b:.1f}x")
        a = med(lambda: p.map(f, range(n)))
        b = med(lambda: sp.map(f, range(n)))
        print(f"map({n}) auto chunks: multiprocessing {a:.3f}s shoal {b:.3f}s -> {a / b:.1f}x")
    with ProcessPoolExecutor(2) as ex, shoal.Executor(2) as sx:
        ex.submit(f, 1).result()
        sx.submit(f, 1).result()
        a = med(lambda: [x.result() for x in [ex.submit(f, i) for i in range(s)]])
        b = med(lambda: [x.result() for x in [sx.submit(f, i) for i in range(s)]])
        print(f"{s} submits + results: ProcessPoolExecutor {a:.3f}s shoal {b:.3f}s -> {a / b:.1f}x")
        r = 300

        def rt(x):
            for i in range(r):
                x.submit(f, i).result()

        a = med(lambda: rt(ex))
        b = med(lambda: rt(sx))
        print(f"round trip: ProcessPoolExecutor {a / r * 1e6:.0f}us shoal {b / r * 1e6:.0f}us "
              f"-> {a / b:.1f}x")
    a, b = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        with mp.get_context("fork").Pool(2) as p:
            p.apply(f, (1,))
        a.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sp = shoal.Pool(2)
        sp.apply(f, (1,))
        sp.terminate()
        b.append(time.perf_counter() - t0)
    a, b = statistics.median(a), statistics.median(b)
    print(f"pool up + first result: multiprocessing fork {a * 1e3:.0f}ms shoal {b * 1e3:.0f}ms "
          f"-> {a / b:.2f}x")


if __name__ == "__main__":
    main()
