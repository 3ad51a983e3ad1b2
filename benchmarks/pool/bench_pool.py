"""Issue 3's seven goals, shoal's process pool side by side with its peers
(multiprocessing.Pool, concurrent.futures.ProcessPoolExecutor, joblib/loky),
2 workers, in ONE run: medians of repeats, ratio vs the goal, PASS/FAIL.

    python benchmarks/pool/bench_pool.py            # full sizes (a few minutes)
    python benchmarks/pool/bench_pool.py --quick    # small sizes, smoke test
    python benchmarks/pool/bench_pool.py --only 5   # one goal (or "1,3")

Writes benchmarks/results/pool.json (or --json PATH). Pools are started and
warmed outside the timed region except in goal 6, which times exactly that.
Goal 5a's "cold segments" row empties shoal's segment recycler before each
repeat (a first transfer); the main row lets it work (repeated transfers, as
joblib reuses its memmap folder only within one call).
The task functions live in this script's __main__, as a user's would: shoal
sends them by value (cached), the fork-based peers inherit them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

WORKERS = 2


# ----------------------------------------------------------------- task bodies

def f(x):
    return x


def chunk_sum(a):
    return float(a.sum())




from shoal.demo import integrate_rows  # noqa: E402 - the course's loop, as the demo runs it


def integrate_block(args):
    return integrate_rows(*args)


# ------------------------------------------------------------------- machinery

def median_time(fn: Callable[[], Any], repeats: int,
                setup: Callable[[], Any] | None = None) -> float:
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Unavailable(Exception):
    pass


def shoal_pool(workers: int = WORKERS):
    try:
        import shoal

        return shoal.Pool(workers)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"shoal.Pool: {type(exc).__name__}: {exc}") from exc


def shoal_executor(workers: int = WORKERS):
    try:
        import shoal

        return shoal.Executor(max_workers=workers)
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"shoal.Executor: {type(exc).__name__}: {exc}") from exc


def mp_pool(workers: int = WORKERS):
    return mp.get_context("fork").Pool(workers)


def ppe(workers: int = WORKERS):
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def close(pool: Any) -> None:
    if hasattr(pool, "shutdown"):
        pool.shutdown(wait=True)
    else:
        pool.close()
        pool.join()


def measure(label: str, make: Callable[[], Any] | None, body: Callable[[Any], Any],
            repeats: int, warm: Callable[[Any], Any] | None = None,
            setup: Callable[[], Any] | None = None) -> dict:
    """Time body(pool) (median of repeats) with a pool made and warmed outside."""
    pool = None
    try:
        pool = make() if make is not None else None
        if warm is not None:
            warm(pool)
        t = median_time(lambda: body(pool), repeats, setup)
        return {"label": label, "seconds": t}
    except Unavailable as exc:
        return {"label": label, "seconds": None, "error": str(exc)}
    except Exception as exc:  # a peer that fails is reported, the run goes on
        return {"label": label, "seconds": None, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if pool is not None:
            try:
                close(pool)
            except Exception:
                pass


def measure_interleaved(variants: list, repeats: int) -> list[dict]:
    """Like measure() for several rows, but one run of every row per round,
    rounds repeated: a machine whose speed drifts over seconds (a shared VM)
    then slows all rows alike instead of whichever ran last. The order turns
    by one row each round, so that no row always follows the same one (the
    row after the single-process one starts on a core the host had left
    idle). variants: (label, make, body, warm)."""
    pools: list = []
    rows: list[dict] = []
    try:
        live = []
        for label, make, body, warm in variants:
            try:
                pool = make() if make is not None else None
                pools.append(pool)
                if warm is not None:
                    warm(pool)
                live.append((label, pool, body))
            except Unavailable as exc:
                rows.append({"label": label, "seconds": None, "error": str(exc)})
        times: dict[str, list[float]] = {label: [] for label, _, _ in live}
        for k in range(repeats):
            turn = k % len(live) if live else 0
            for label, pool, body in live[turn:] + live[:turn]:
                gc.collect()
                t0 = time.perf_counter()
                body(pool)
                times[label].append(time.perf_counter() - t0)
        order = [v[0] for v in variants]
        rows += [{"label": label, "seconds": statistics.median(ts)} for label, ts in times.items()]
        rows.sort(key=lambda row: order.index(row["label"]))
        return rows
    finally:
        for pool in pools:
            if pool is not None:
                try:
                    close(pool)
                except Exception:
                    pass


def warm_map(pool: Any) -> None:
    list(pool.map(f, range(4 * WORKERS)))


def warm_submit(pool: Any) -> None:
    [fut.result() for fut in [pool.submit(f, i) for i in range(4 * WORKERS)]]


# ----------------------------------------------------------------------- goals
# Each returns (rows, shoal_label, reference_label, ratio_kind, target, title).
# ratio "speedup": reference_time / shoal_time must be >= target.

def goal1(q: bool, r: int):
    n = 20_000 if q else 200_000
    body = lambda p: p.map(f, range(n), chunksize=1)  # noqa: E731
    rows = [measure("shoal.Pool.map", shoal_pool, body, r, warm_map),
            measure("multiprocessing.Pool.map", mp_pool, body, r, warm_map),
            # about 50 s per run here: context only, one run
            measure("ProcessPoolExecutor.map (1 run)", ppe,
                    lambda p: list(p.map(f, range(n), chunksize=1)), 1, warm_submit)]
    return (rows, "shoal.Pool.map", "multiprocessing.Pool.map", 10.0,
            f"map(f, range({n:,}), chunksize=1)")


def goal2(q: bool, r: int):
    n = 2_000 if q else 20_000

    def body(p):
        futs = [p.submit(f, i) for i in range(n)]
        return [x.result() for x in futs]

    rows = [measure("shoal.Executor", shoal_executor, body, r, warm_submit),
            measure("ProcessPoolExecutor", ppe, body, r, warm_submit),
            measure("multiprocessing.Pool.apply_async", mp_pool,
                    lambda p: [x.get() for x in [p.apply_async(f, (i,)) for i in range(n)]],
                    r, warm_map)]
    return (rows, "shoal.Executor", "ProcessPoolExecutor", 25.0,
            f"{n:,} x submit(f, i), then all results")


def goal3(q: bool, r: int):
    n = 20_000 if q else 200_000
    body = lambda p: p.map(f, range(n))  # noqa: E731
    rows = [measure("shoal.Pool.map", shoal_pool, body, r, warm_map),
            measure("multiprocessing.Pool.map", mp_pool, body, r, warm_map),
            measure("ProcessPoolExecutor.map(chunksize=n/8)", ppe,
                    lambda p: list(p.map(f, range(n), chunksize=n // (4 * WORKERS))), r,
                    warm_submit),
            measure("joblib(loky, batch_size=auto)", None, lambda p: _joblib(f, range(n)), r,
                    lambda p: _joblib(f, range(8)))]
    return (rows, "shoal.Pool.map", "multiprocessing.Pool.map", 1.5,
            f"map(f, range({n:,})), automatic chunks")


def _joblib(fn, items):
    import joblib

    return joblib.Parallel(n_jobs=WORKERS)(joblib.delayed(fn)(x) for x in items)


def goal4(q: bool, r: int):
    n = 200 if q else 2_000

    def body(p):
        for i in range(n):
            p.submit(f, i).result()

    rows = [measure("shoal.Executor", shoal_executor, body, r, warm_submit),
            measure("ProcessPoolExecutor", ppe, body, r, warm_submit),
            measure("multiprocessing.Pool.apply", mp_pool,
                    lambda p: [p.apply(f, (i,)) for i in range(n)], r, warm_map)]
    for row in rows:  # report one round trip
        if row["seconds"] is not None:
            row["seconds"] /= n
    return (rows, "shoal.Executor", "ProcessPoolExecutor", 25.0,
            "submit(f, i).result() one after another (time per round trip)")


_BIG: dict = {}


def _big_arrays(q: bool):
    if "plain" not in _BIG:
        nbytes = (32 if q else 512) * 2**20
        a = np.random.default_rng(1).random(nbytes // 8)
        _BIG["plain"] = a
        _BIG["chunks"] = np.array_split(a, 8)
        _BIG["expected"] = float(a.sum())
    return _BIG


def goal5a(q: bool, r: int):
    big = _big_arrays(q)
    chunks, expected = big["chunks"], big["expected"]

    def body(p):
        total = sum(p.map(chunk_sum, chunks, chunksize=1))
        assert abs(total - expected) < 1e-6 * abs(expected), (total, expected)

    def body_joblib(_):
        total = sum(_joblib(chunk_sum, chunks))
        assert abs(total - expected) < 1e-6 * abs(expected)

    def cold():
        # forget recycled segments: every transfer allocates and maps anew
        from shoal import _serialize

        _serialize.clear_segment_cache()

    mib = big["plain"].nbytes // 2**20
    # warm: one transfer, so that the recycler holds segments (the cold row
    # below shows a first transfer)
    rows = [measure("shoal.Pool.map (out of band)", shoal_pool, body, r,
                    lambda p: (warm_map(p), body(p))),
            measure("shoal.Pool.map (out of band, cold segments)", shoal_pool, body, r, warm_map,
                    setup=cold),
            measure("joblib(loky, memmap)", None, body_joblib, r, lambda p: _joblib(f, range(8))),
            measure("multiprocessing.Pool.map (pickled)", mp_pool, body, r, warm_map)]
    return (rows, "shoal.Pool.map (out of band)", "joblib(loky, memmap)", 5.0,
            f"sum 8 chunks of a plain {mib} MiB float64 array in workers")


def goal5b(q: bool, r: int):
    big = _big_arrays(q)
    expected = big["expected"]
    rows = []
    try:
        import shoal.shared

        a = shoal.shared.copy(big["plain"])
        m = a.size // 8
        chunks = [a[i * m:(i + 1) * m if i < 7 else a.size] for i in range(8)]
    except Exception as exc:
        chunks = None
        rows.append({"label": "shoal.Pool.map (shoal.shared)", "seconds": None,
                     "error": f"{type(exc).__name__}: {exc}"})

    def body(p):
        total = sum(p.map(chunk_sum, chunks, chunksize=1))
        assert abs(total - expected) < 1e-6 * abs(expected), (total, expected)

    if chunks is not None:
        # warm: each worker maps the segment once (cached) and, after a few
        # passes, has page-table entries for all of it (a first touch costs
        # ~45 ms per 512 MiB per process here), as in any iterative use
        rows.append(measure("shoal.Pool.map (shoal.shared)", shoal_pool, body, r,
                            lambda p: (warm_map(p), body(p), body(p), body(p))))
    plain = big["plain"]
    rows.append(measure("one process, a.sum()", None, lambda p: sum(float(c.sum()) for c in
                                                                     np.array_split(plain, 8)), r))
    mib = plain.nbytes // 2**20
    return (rows, "shoal.Pool.map (shoal.shared)", "one process, a.sum()", 0.9,
            f"sum 8 chunks of a {mib} MiB shoal.shared array in workers")


def _goal6_rows(r: int) -> list[dict]:
    def up(make):
        def body(_):
            pool = make()
            try:
                pool.apply(f, (1,)) if hasattr(pool, "apply") else pool.submit(f, 1).result()
            finally:
                close(pool)
        return body

    # pool creation and first result are timed; the shutdown is included in
    # both (a fork pool's join is quick) to keep them comparable.
    rows = [measure("shoal.Pool", None, up(shoal_pool), max(r, 5)),
            measure("multiprocessing.Pool (fork)", None, up(mp_pool), max(r, 5)),
            measure("multiprocessing.Pool (spawn)", None,
                    up(lambda: mp.get_context("spawn").Pool(WORKERS)), max(r, 3)),
            measure("ProcessPoolExecutor (fork)", None, up(ppe), max(r, 5))]
    # A driver that runs another thread (here a sleeping one; after the
    # joblib rows of this run, loky's two): shoal does not fork it, as a
    # forked child inherits whatever locks that thread holds, and starts
    # fresh interpreters instead. multiprocessing forks it anyway.
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)
    t.start()
    try:
        rows.append(measure("shoal.Pool, driver running another thread", None,
                            up(shoal_pool), max(r, 3)))
        rows.append(measure("multiprocessing.Pool (fork), same driver", None, up(mp_pool),
                            max(r, 5)))
    finally:
        stop.set()
        t.join()
    return rows


def goal6(q: bool, r: int):
    # Measured in a fresh driver (numpy imported, a BLAS call made, as a
    # scientist's script has): what earlier goals left in this process
    # (loky's threads, a GiB of arrays) would decide it instead.
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--goal6-child", str(r)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"goal 6 driver failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return (rows, "shoal.Pool", "multiprocessing.Pool (fork)", 1.0,
            "pool of 2 workers up, first result back (fresh numpy driver)")


def goal7(q: bool, r: int):
    # grid size for about 1.5 s serial here (0.3 s with --quick)
    n0 = 200
    t0 = time.perf_counter()
    integrate_rows(n0, 0, n0)
    dt = time.perf_counter() - t0
    n = max(200, int(n0 * math.sqrt((0.3 if q else 1.5) / max(dt, 1e-6))))
    def split(blocks):
        edges = [n * k // blocks for k in range(blocks + 1)]
        return [(n, edges[k], edges[k + 1]) for k in range(blocks)]

    # Row blocks: enough to balance (a worker slowed down by the machine
    # takes fewer), few enough to be cheap. The goal's row.
    blocks = 8 * WORKERS
    tasks = split(blocks)
    # The course's own split, one block per worker, for comparison: nothing
    # to balance, so it runs at the pace of the slower worker.
    halves = split(WORKERS)

    def mapping(blocks_):
        def body(p):
            value = sum(p.map(integrate_block, blocks_, chunksize=1))
            assert abs(value) < 1e-6
        return body

    rows_ = [(n, i, i + 1) for i in range(n)]

    def by_rows(p):
        value = sum(p.map(integrate_block, rows_))
        assert abs(value) < 1e-6

    def bare(_):
        # What this machine gives two processes at all: fork two children,
        # each integrates half the rows and writes its sum to a pipe. No pool,
        # no scheduling: the ceiling any pool's speedup is measured under.
        kids = []
        for k in range(WORKERS):
            r_fd, w_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r_fd)
                v = integrate_block(halves[k])
                os.write(w_fd, repr(v).encode())
                os._exit(0)
            os.close(w_fd)
            kids.append((pid, r_fd))
        value = 0.0
        for pid, r_fd in kids:
            with os.fdopen(r_fd, "rb") as fh:
                value += float(fh.read())
            os.waitpid(pid, 0)
        assert abs(value) < 1e-6

    rows = measure_interleaved([
        ("serial Python", None, lambda p: integrate_rows(n, 0, n), None),
        ("shoal.Pool.map", shoal_pool, mapping(tasks), warm_map),
        ("multiprocessing.Pool.map", mp_pool, mapping(tasks), warm_map),
        (f"shoal.Pool.map, {WORKERS} halves (course)", shoal_pool, mapping(halves), warm_map),
        # One task per row, chunks left to the pool: guided ones for shoal,
        # n/(4 x workers) rows each for multiprocessing.
        ("shoal.Pool.map by rows, auto chunks", shoal_pool, by_rows, warm_map),
        ("multiprocessing by rows, auto chunks", mp_pool, by_rows, warm_map),
        (f"{WORKERS} bare forked processes (ceiling)", None, bare, None)], max(r, 2) * 4)
    return (rows, "shoal.Pool.map", "serial Python", 1.9,
            f"2D integration of sin(x+y), n = {n}, {blocks} row blocks")


def _goal_r_rows(q: bool, r: int) -> list:
    n = 20 if q else 100

    def recycled(make):
        def body(_):
            pool = make()
            try:
                assert pool.map(f, range(n), chunksize=1) == list(range(n))
            finally:
                close(pool)
        return body

    import shoal

    return measure_interleaved([
        ("shoal.Pool(max_tasks_per_worker=1)", None,
         recycled(lambda: shoal.Pool(WORKERS, max_tasks_per_worker=1)), None),
        ("multiprocessing.Pool(maxtasksperchild=1)", None,
         recycled(lambda: mp.get_context("fork").Pool(WORKERS, maxtasksperchild=1)), None)],
        max(r, 3))


def goal_r(q: bool, r: int):
    # Not one of the goals: workers recycled after every task, the
    # case where a pool starts most of its workers while it runs. shoal forks
    # them from its fork server, which it has only where it could fork the
    # driver at the start (no other thread): measured, like goal 6, in a
    # fresh driver (this one runs loky's threads by now). multiprocessing
    # forks its driver, threads or not.
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--goal-r-child",
                          str(r), "1" if q else "0"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"goal r driver failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    n = 20 if q else 100
    return (rows, "shoal.Pool(max_tasks_per_worker=1)", "multiprocessing.Pool(maxtasksperchild=1)",
            1.0, f"extra, not an issue goal: {n} tasks, a fresh worker each (fresh driver)")


GOALS = {"1": goal1, "2": goal2, "3": goal3, "4": goal4, "5a": goal5a, "5b": goal5b,
         "6": goal6, "7": goal7, "r": goal_r}


def evaluate(key: str, result: tuple) -> dict:
    rows, mine, ref, target, title = result
    by = {row["label"]: row["seconds"] for row in rows}
    ratio = None
    if by.get(mine) and by.get(ref):
        ratio = by[ref] / by[mine]
    status = "n/a" if ratio is None else ("PASS" if ratio >= target else "FAIL")
    return {"goal": key, "title": title, "shoal": mine, "reference": ref, "target": target,
            "ratio": ratio, "status": status, "rows": rows}


def print_goal(g: dict) -> None:
    print(f"\nGoal {g['goal']}: {g['title']}")
    ref = next((r["seconds"] for r in g["rows"] if r["label"] == g["reference"]), None)
    for row in g["rows"]:
        t = row["seconds"]
        if t is None:
            print(f"  {row['label']:<42} unavailable: {row.get('error', '')[:90]}")
            continue
        unit, scale = ("us", 1e6) if t < 1e-3 else ("ms", 1e3) if t < 1 else ("s", 1.0)
        rel = f"{ref / t:8.2f}x" if ref else ""
        print(f"  {row['label']:<42} {t * scale:10.3f} {unit:<2} {rel}")
    ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
    print(f"  => shoal vs {g['reference']}: {ratio} (goal >= {g['target']}x)  {g['status']}")


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--goal-r-child"]:
        print(json.dumps(_goal_r_rows(args_in[2] == "1", int(args_in[1]))))
        return 0
    if args_in[:1] == ["--goal6-child"]:
        a = np.ones((256, 256))
        a @ a  # OpenBLAS's threads are up, as in a script that used numpy
        print(json.dumps(_goal6_rows(int(args_in[1]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--only", help="goals to run, e.g. 5 or 1,3 or 5a")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per row (median)")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "results", "pool.json"))
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    keys = list(GOALS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        keys = [k for k in GOALS if k in wanted or k.rstrip("ab") in wanted]
        if not keys:
            ap.error(f"--only {args.only}: no such goal (have {', '.join(GOALS)})")
    print(f"shoal pool benchmarks: {WORKERS} workers, median of {repeats}, "
          f"{'quick' if args.quick else 'full'} sizes, {os.cpu_count()} CPUs visible, "
          f"Python {platform.python_version()}")
    goals = []
    for k in keys:
        g = evaluate(k, GOALS[k](args.quick, repeats))
        print_goal(g)
        goals.append(g)
    print("\nSummary")
    print(f"  {'goal':<5} {'what':<62} {'ratio':>8} {'target':>7}  status")
    for g in goals:
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}x"
        print(f"  {g['goal']:<5} {g['title'][:62]:<62} {ratio:>8} {g['target']:>6}x  {g['status']}")
    out = os.path.abspath(args.json)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
                   "quick": args.quick, "repeats": repeats, "workers": WORKERS,
                   "cpus": os.cpu_count(), "python": platform.python_version(),
                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "goals": goals}, fh, indent=2)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
