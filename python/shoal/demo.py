"""``shoal demo``: the course's 2D integration of sin(x+y) over [0, pi]^2,
serial and on each of shoal's backends, side by side.

Each backend contributes one row function to ``ROWS``: it takes (n, workers)
and returns the integral, or raises to be reported as unavailable.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def integrate_rows(n: int, begin: int, end: int) -> float:
    """Partial sum over x-rows [begin, end) of the midpoint rule: the course's loop."""
    h = math.pi / n
    s = 0.0
    for i in range(begin, end):
        x = h * (i + 0.5)
        for j in range(n):
            s += math.sin(x + h * (j + 0.5))
    return s * h * h


def serial(n: int, workers: int) -> float:
    return integrate_rows(n, 0, n)


def calibrate(target_s: float = 1.0) -> int:
    """Grid size for which serial Python takes about target_s seconds here."""
    n = 200
    t0 = time.perf_counter()
    integrate_rows(n, 0, n)
    dt = time.perf_counter() - t0
    return max(200, int(n * math.sqrt(target_s / max(dt, 1e-6))))


def _row_blocks(n: int, workers: int) -> list[tuple[int, int, int]]:
    """Row blocks of the grid: a few per worker, so that a slow core does not
    hold everyone up, yet few enough that each task is long."""
    blocks = max(1, min(n, 4 * workers))
    edges = [n * k // blocks for k in range(blocks + 1)]
    return [(n, edges[k], edges[k + 1]) for k in range(blocks)]


def shoal_processes(n: int, workers: int) -> float:
    """shoal.Pool over row blocks (pool start-up included in the time)."""
    from .pool import Pool

    with Pool(workers) as pool:
        return sum(pool.starmap(integrate_rows, _row_blocks(n, workers)))


def multiprocessing_pool(n: int, workers: int) -> float:
    """multiprocessing.Pool, same split (pool start-up included in the time)."""
    import multiprocessing

    with multiprocessing.Pool(workers) as pool:
        return sum(pool.starmap(integrate_rows, _row_blocks(n, workers)))


# (label, function). Backends append their rows below.
ROWS: list[tuple[str, Callable[[int, int], float]]] = [
    ("serial Python", serial),
    ("shoal processes", shoal_processes),
    ("multiprocessing.Pool", multiprocessing_pool),
]


# ---- native kernel and threads backend rows (threads helper) ----
_native_rows = None


def _compile_native_rows():
    """The course's inner loops as a numba cfunc kernel over x-rows [begin, end);
    n and h come through ctx, so one compilation serves every n."""
    global _native_rows
    if _native_rows is None:
        import math as m

        from numba import cfunc, types

        @cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
        def rows(begin, end, params):
            n = int(params[0])
            h = params[1]
            s = 0.0
            for i in range(begin, end):
                x = h * (i + 0.5)
                for j in range(n):
                    s += m.sin(x + h * (j + 0.5))
            return s

        _native_rows = rows
    return _native_rows


def native_kernel(n: int, workers: int) -> float:
    import numpy as np

    from .parallel import parallel_reduce

    h = math.pi / n
    params = np.array([n, h], dtype=np.float64)
    return parallel_reduce(n, _compile_native_rows(), params, threads=workers) * h * h


native_kernel.prepare = lambda n, workers: _compile_native_rows()  # JIT outside the timing


def threads_backend(n: int, workers: int) -> float:
    # Pure-Python rows: the GIL lets one thread run at a time, so expect ~1x.
    from . import _backend

    backend = _backend.create("threads", workers)
    try:
        step = max(1, n // (4 * workers))
        futures = [backend.submit(integrate_rows, (n, b, min(b + step, n)))
                   for b in range(0, n, step)]
        return sum(f.result() for f in futures)
    finally:
        backend.shutdown()


ROWS.append(("native: cfunc + parallel_reduce", native_kernel))
ROWS.append(("threads backend (GIL-bound, ~1x)", threads_backend))


def main(n: int | None = None, workers: int | None = None, repeats: int = 3,
         report: str | None = "shoal-demo") -> int:
    """The demo; with ``report`` (a path prefix), under the job monitor: its
    summary at the end, and report.shoal / .html / .png written."""
    import contextlib

    from . import info
    from .allocation import default_workers

    info.main(as_json=False, summary=True)
    workers = workers or default_workers()
    n = n or calibrate()
    repeats = max(1, repeats)
    print(f"\n2D integration of sin(x+y) over [0,pi]^2, n = {n} ({n * n:,} points), "
          f"{workers} worker(s); exact value 0; median of {repeats} rounds, every row once "
          f"per round, the order turning each round\n")
    # One-off set-up (e.g. JIT) is not timed; a row that cannot run here
    # says why and the demo goes on.
    live: list = []
    failed: dict = {}
    for label, fn in ROWS:
        prepare = getattr(fn, "prepare", None)
        try:
            if prepare is not None:
                prepare(n, workers)
            live.append((label, fn))
        except Exception as exc:  # noqa: BLE001
            failed[label] = exc
    times: dict = {label: [] for label, _ in live}
    values: dict = {}
    mon = None
    if report:
        try:
            from . import monitor

            mon = monitor(report + ".shoal")
        except Exception as exc:  # noqa: BLE001 - the demo runs without its monitor
            print(f"(the demo runs without the job monitor: {type(exc).__name__}: {exc})")
    with mon if mon is not None else contextlib.nullcontext():
        _rounds(live, failed, times, values, n, workers, repeats)
    _table(failed, times, values)
    if mon is not None:
        _report(mon, report)
    return 0


def _rounds(live: list, failed: dict, times: dict, values: dict, n: int, workers: int,
            repeats: int) -> None:
    # The threads left behind by the native kernel's C++ pool (idle) and by
    # the threads backend (joined) do not stop a process pool started next
    # from forking its workers (python/shoal/_backend_processes.py: _can_fork).
    for k in range(repeats):
        turn = k % len(live) if live else 0
        for label, fn in live[turn:] + live[:turn]:
            if label in failed:
                continue
            try:
                t0 = time.perf_counter()
                values[label] = fn(n, workers)
                times[label].append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001
                failed[label] = exc


def _table(failed: dict, times: dict, values: dict) -> None:
    import statistics

    print(f"{'method':<34} {'integral':>14} {'error':>10} {'time [s]':>9} {'speedup':>8}")
    base = None
    for label, _ in ROWS:
        if label in failed:
            exc = failed[label]
            print(f"{label:<34} unavailable: {type(exc).__name__}: {exc}")
            continue
        dt = statistics.median(times[label])
        value = values[label]
        base = base or dt
        print(f"{label:<34} {value:>14.6e} {abs(value):>10.2e} {dt:>9.3f} {base / dt:>7.2f}x")


def _report(mon, prefix: str) -> None:
    """The monitor's view of the demo: its summary, and the HTML and PNG
    reports (the demo goes on without them if they cannot be made)."""
    print("\nThe job monitor on this demo (every row above, all rounds):\n")
    try:
        print(mon.summary())
        from .monitor._report import write_reports

        run = mon.run()
        write_reports(run, html=prefix + ".html", png=prefix + ".png")
    except Exception as exc:  # noqa: BLE001 - the demo's figures stand without it
        print(f"(no monitor report: {type(exc).__name__}: {exc})")
        return
    import os

    print(f"\nrecorded: {os.path.abspath(prefix + '.shoal')}; reports: "
          f"{os.path.abspath(prefix + '.html')}, {os.path.abspath(prefix + '.png')} "
          f"(shoal report {prefix}.shoal --trace {prefix}.json.gz for Perfetto)")
