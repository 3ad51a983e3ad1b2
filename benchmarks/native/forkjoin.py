"""Fork-join overhead seen from Python: one call of an empty parallel loop over
2 threads, side by side in one run:

    shoal.parallel_for(2, empty_cfunc, threads=2, grain=1)
    numba @njit(parallel=True) prange(2) with an empty body
    C #pragma omp parallel for num_threads(2) over 2 empty iterations, called through ctypes
    the same C function with num_threads(1) (= the cost of the Python->C call alone)

    python benchmarks/native/forkjoin.py [--calls 5000] [--repeats 5]

Medians over repeats of the mean time per call, in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from integration import build  # noqa: E402

C_EMPTY = r"""
#include <omp.h>
void empty_loop(long n, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < n; ++i) { __asm__ volatile("" ::: "memory"); }
}
"""


def main(argv: list[str] | None = None) -> int:
    import ctypes

    import numba
    from numba import cfunc, njit, prange, types

    import shoal

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    t = args.threads

    @cfunc(types.void(types.int64, types.int64, types.voidptr))
    def empty(b, e, ctx):
        pass

    @njit(parallel=True)
    def prange_empty(n):
        s = 0
        for i in prange(n):
            s += i
        return s

    numba.set_num_threads(t)
    methods = {
        f"shoal.parallel_for, {t} threads": lambda: shoal.parallel_for(t, empty, threads=t, grain=1),
        f"shoal.parallel_for, 1 thread": lambda: shoal.parallel_for(t, empty, threads=1),
        f"numba prange, {t} threads": lambda: prange_empty(t),
    }
    lib = build("forkjoin_omp", C_EMPTY, ["cc"], ["-fopenmp"])
    if not isinstance(lib, str):
        lib.empty_loop.restype = None
        lib.empty_loop.argtypes = [ctypes.c_long, ctypes.c_int]
        fn = lib.empty_loop
        methods[f"C OpenMP via ctypes, {t} threads"] = lambda: fn(t, t)
        methods["C OpenMP via ctypes, 1 thread"] = lambda: fn(t, 1)
    else:
        print("OpenMP:", lib)
    for f in methods.values():
        for _ in range(1000):
            f()
    per_call: dict[str, list[float]] = {k: [] for k in methods}
    names = list(methods)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            f = methods[name]
            t0 = time.perf_counter()
            for _ in range(args.calls):
                f()
            per_call[name].append((time.perf_counter() - t0) / args.calls * 1e6)
    print(f"\nEmpty parallel loop from Python, median of {args.repeats} x {args.calls} calls "
          f"(numba threading layer: {numba.threading_layer()})\n")
    print(f"{'method':<36} {'us/call':>8} {'vs OpenMP':>9}")
    ref = statistics.median(per_call.get(f"C OpenMP via ctypes, {t} threads", [float("nan")]))
    for name in names:
        m = statistics.median(per_call[name])
        print(f"{name:<36} {m:>8.2f} {m / ref:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
