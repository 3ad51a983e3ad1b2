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


def main(n: int | None = None, workers: int | None = None) -> int:
    from . import info
    from .allocation import default_workers

    info.main(as_json=False, summary=True)
    workers = workers or default_workers()
    n = n or calibrate()
    print(f"\n2D integration of sin(x+y) over [0,pi]^2, n = {n} ({n * n:,} points), "
          f"{workers} worker(s); exact value 0\n")
    print(f"{'method':<34} {'integral':>14} {'error':>10} {'time [s]':>9} {'speedup':>8}")
    base = None
    for label, fn in ROWS:
        try:
            t0 = time.perf_counter()
            value = fn(n, workers)
            dt = time.perf_counter() - t0
        except Exception as exc:  # a row that cannot run here says why, the demo goes on
            print(f"{label:<34} unavailable: {type(exc).__name__}: {exc}")
            continue
        base = base or dt
        print(f"{label:<34} {value:>14.6e} {abs(value):>10.2e} {dt:>9.3f} {base / dt:>7.2f}x")
    return 0
