"""The course's 2D integration of sin(x+y) over [0, pi]^2, side by side in one run:

    shoal.parallel_reduce + numba cfunc (plain and deterministic)
    numba @njit(parallel=True) with prange
    C with #pragma omp parallel for reduction(+:s)     (cc -O3 -fopenmp -shared, built here)
    C++ with oneTBB parallel_reduce                    (if tbb is installed)
    C++ with shoal::parallel_reduce                    (libshoal's sources, built here)

    python benchmarks/native/integration.py [--n 5000] [--threads 1,2] [--repeats 5]

Every repeat runs every method once, in a rotating order, so machine noise
hits them alike; the table shows medians, ratios at equal thread counts and
the parallel efficiency T1 / (t * Tt). On a bigger node pass e.g.
--threads 1,2,4,8,16,32 (and pin: SHOAL_PROC_BIND=spread OMP_PROC_BIND=spread).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "bench"

C_OPENMP = r"""
#include <math.h>
#include <omp.h>
double integrate_omp(long n, int threads) {
    double h = M_PI / (double)n, s = 0.0;
    #pragma omp parallel for num_threads(threads) reduction(+:s) schedule(static)
    for (long i = 0; i < n; ++i) {
        double x = h * (i + 0.5);
        for (long j = 0; j < n; ++j) s += sin(x + h * (j + 0.5));
    }
    return s * h * h;
}
"""

CXX_TBB = r"""
#include <cmath>
#include <functional>
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_reduce.h>
#include <oneapi/tbb/task_arena.h>
extern "C" double integrate_tbb(long n, int threads) {
    const double h = M_PI / (double)n;
    tbb::task_arena arena(threads);
    double s = arena.execute([&] {
        return tbb::parallel_reduce(tbb::blocked_range<long>(0, n), 0.0,
            [&](const tbb::blocked_range<long>& r, double acc) {
                for (long i = r.begin(); i < r.end(); ++i) {
                    double x = h * (i + 0.5);
                    for (long j = 0; j < n; ++j) acc += std::sin(x + h * (j + 0.5));
                }
                return acc;
            }, std::plus<double>());
    });
    return s * h * h;
}
"""

CXX_SHOAL = r"""
#include <cmath>
#include <functional>
#include "shoal/parallel.hpp"
extern "C" double integrate_shoal(long n, int threads, int deterministic) {
    const double h = M_PI / (double)n;
    shoal::ReduceOptions o;
    o.threads = threads;
    o.deterministic = deterministic != 0;
    double s = shoal::parallel_reduce(0, n, 0.0, [&](std::int64_t b, std::int64_t e, double acc) {
        for (std::int64_t i = b; i < e; ++i) {
            double x = h * (i + 0.5);
            for (std::int64_t j = 0; j < n; ++j) acc += std::sin(x + h * (j + 0.5));
        }
        return acc;
    }, std::plus<double>(), o);
    return s * h * h;
}
"""


def build(name: str, source: str, compiler: list[str], flags: list[str]) -> ctypes.CDLL | str:
    """Compile source into build/bench/lib<name>.so; returns the library or why not."""
    BUILD.mkdir(parents=True, exist_ok=True)
    suffix = ".c" if compiler[0] in ("cc", "gcc", "clang") else ".cpp"
    src = BUILD / f"{name}{suffix}"
    lib = BUILD / f"lib{name}.so"
    src.write_text(source)
    if shutil.which(compiler[0]) is None:
        return f"{compiler[0]} not found"
    cmd = [*compiler, "-O3", "-shared", "-fPIC", str(src), "-o", str(lib), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return "build failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    return ctypes.CDLL(str(lib))


def make_methods(n: int):
    import numba
    from numba import cfunc, njit, prange, types

    import shoal

    h = math.pi / n

    @cfunc(types.float64(types.int64, types.int64, types.voidptr))
    def rows(begin, end, ctx):
        s = 0.0
        for i in range(begin, end):
            x = h * (i + 0.5)
            for j in range(n):
                s += math.sin(x + h * (j + 0.5))
        return s

    @njit(parallel=True)
    def prange_integral(n):
        h = math.pi / n
        s = 0.0
        for i in prange(n):
            x = h * (i + 0.5)
            for j in range(n):
                s += math.sin(x + h * (j + 0.5))
        return s * h * h

    prange_integral(8)  # compile outside the timings

    def with_numba_threads(fn):
        def run(t):
            numba.set_num_threads(t)
            return fn(n)
        return run

    methods: dict[str, object] = {
        "shoal parallel_reduce+cfunc": lambda t: shoal.parallel_reduce(n, rows, threads=t) * h * h,
        "shoal deterministic": lambda t: shoal.parallel_reduce(n, rows, threads=t,
                                                               deterministic=True) * h * h,
        "numba prange": with_numba_threads(prange_integral),
    }
    omp = build("integ_omp", C_OPENMP, ["cc"], ["-fopenmp", "-lm"])
    if isinstance(omp, str):
        methods["C OpenMP"] = omp
    else:
        omp.integrate_omp.restype = ctypes.c_double
        omp.integrate_omp.argtypes = [ctypes.c_long, ctypes.c_int]
        methods["C OpenMP"] = lambda t: omp.integrate_omp(n, t)
    tbb = build("integ_tbb", CXX_TBB, ["c++", "-std=c++17"], ["-ltbb"])
    if isinstance(tbb, str):
        methods["C++ oneTBB"] = "oneTBB unavailable (" + tbb + "; apt-get install libtbb-dev)"
    else:
        tbb.integrate_tbb.restype = ctypes.c_double
        tbb.integrate_tbb.argtypes = [ctypes.c_long, ctypes.c_int]
        methods["C++ oneTBB"] = lambda t: tbb.integrate_tbb(n, t)
    srcs = [str(ROOT / "src" / f) for f in ("thread_pool.cpp", "parallel.cpp", "allocation.cpp", "check.cpp")]
    cxx = build("integ_shoal", CXX_SHOAL, ["c++", "-std=c++20", f"-I{ROOT / 'include'}", *srcs],
                ["-pthread"])
    if isinstance(cxx, str):
        methods["C++ shoal::parallel_reduce"] = cxx
    else:
        cxx.integrate_shoal.restype = ctypes.c_double
        cxx.integrate_shoal.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int]
        methods["C++ shoal::parallel_reduce"] = lambda t: cxx.integrate_shoal(n, t, 0)
    return methods


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    methods = make_methods(args.n)
    runnable = {k: v for k, v in methods.items() if callable(v)}
    for k, v in methods.items():
        if not callable(v):
            print(f"{k}: {v}")
    times: dict[tuple[str, int], list[float]] = {}
    values: dict[tuple[str, int], float] = {}
    names = list(runnable)
    for t in threads:
        for name in names:  # warm-up: first calls, pools, thread creation
            runnable[name](t)
    for r in range(args.repeats):
        for t in threads:
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                values[name, t] = runnable[name](t)
                times.setdefault((name, t), []).append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    import numba

    print(f"\n2D integration of sin(x+y), n = {args.n} ({args.n**2:,} points), medians of "
          f"{args.repeats} repeats, {os.cpu_count()} CPUs here, load {os.getloadavg()[0]:.1f}, "
          f"numba threading layer {numba.threading_layer()}\n")
    head = (f"{'method':<28} {'thr':>3} {'time [s]':>9} {'efficiency':>10} "
            f"{'vs prange':>9} {'vs OpenMP':>9} {'integral':>11}")
    print(head)
    print("-" * len(head))
    for name in names:
        for t in threads:
            m = med[name, t]
            eff = med[name, threads[0]] * threads[0] / (t * m)
            vp = med.get(("numba prange", t))
            vo = med.get(("C OpenMP", t))
            # ratio > 1: this method is faster than the reference
            print(f"{name:<28} {t:>3} {m:>9.4f} {eff:>9.0%} "
                  f"{(vp / m if vp else float('nan')):>8.2f}x {(vo / m if vo else float('nan')):>8.2f}x "
                  f"{values[name, t]:>11.2e}")
    for t in threads:
        p, d = med.get(("shoal parallel_reduce+cfunc", t)), med.get(("shoal deterministic", t))
        if p and d:
            print(f"deterministic / plain at {t} thread(s): {d / p:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
