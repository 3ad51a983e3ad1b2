"""shoal's mpi backend beside mpi4py.futures, under the same launcher, in one run.

    mpirun -n 3 python benchmarks/mpi/bench_mpi.py [--quick] [--repeats R]
    SHOAL_MPI_NODE_SIZE=2 mpirun -n 17 -x SHOAL_MPI_NODE_SIZE python benchmarks/mpi/bench_mpi.py --scale

Every rank runs this script. Each row runs twice: with mpi4py.futures'
``MPICommExecutor`` and with shoal's (``shoal.mpi.MPICommExecutor``, the
drop-in), the same ranks serving both (rank 0 submits, the others serve).
Medians of the repeats; ratios are mpi4py.futures' time over shoal's.
Goals (issue 10), with 3 ranks (root + 2 serving):
  1  map(f, range(20_000), chunksize=1), trivial f            >= 20x
  2  20,000 x submit(f, i), then all results                   >= 10x
  3  submit(f, i).result() one after another (round trip)      <= 1/10 of mpi4py.futures'
  4  map(f, range(200_000)), automatic chunks vs chunksize=1000 >= 1.5x
  5  eight 64 MiB numpy chunks summed on the serving ranks      >= 2x
  6  the course's integration (pure Python, n = 3000), speedup over serial >= 1.8x
  7  --scale: 16 serving ranks as 8 virtual nodes x 2: MPI messages the root
     sends and receives per task, and the root's CPU time per task (shoal only)
Also printed: the same for 3 ranks, and the share of a core an idle rank or
worker uses (shoal; target < 1%).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from mpi4py import MPI
from mpi4py.futures import MPICommExecutor as Mpi4pyExecutor

import shoal.mpi
from shoal.demo import integrate_rows


def trivial(x):
    return x


def chunk_sum(a):
    return float(a.sum())


def rows(args):
    """The course's 2D integration of sin(x+y): rows [i0, i1) of an n x n
    grid (shoal demo's loop, called with one tuple as map gives it)."""
    i0, i1, n = args
    return integrate_rows(n, i0, i1)


def pid_of_rank(_):
    import os
    import time

    time.sleep(0.05)  # (so that every worker gets one)
    # a worker process a leader spawned: its leader (the rank) too
    leader = os.getppid() if "OMPI_COMM_WORLD_RANK" not in os.environ else 0
    return os.getpid(), leader


def idle_cpu(ex, seconds=3.0):
    """CPU share of a core each serving rank (on this host) and the root use
    while the pool is open and has nothing to do."""
    import psutil

    pids = sorted({p for pair in ex.map(pid_of_rank, range(4 * ex.num_workers)) for p in pair}
                  - {0})
    procs = [psutil.Process(p) for p in pids if psutil.pid_exists(p)] + [psutil.Process()]
    before = [sum(p.cpu_times()[:2]) for p in procs]
    t = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t
    after = [sum(p.cpu_times()[:2]) for p in procs]
    return [(b - a) / dt for a, b in zip(before, after)]


def bare_ranks(comm, n_int, repeats):
    """The ceiling of row 6: the serving ranks integrate their share of the
    rows at once with no pool (point to point; the root waits with sleeps,
    not in a spinning MPI call). The root's median time, else None."""
    serving = comm.size - 1
    share = -(-n_int // serving)
    times = []
    for _ in range(repeats):
        if comm.rank == 0:
            t = time.perf_counter()
            for r in range(1, comm.size):
                comm.send(None, dest=r, tag=77)
            got = 0
            while got < serving:
                if comm.iprobe(source=MPI.ANY_SOURCE, tag=78):
                    comm.recv(source=MPI.ANY_SOURCE, tag=78)
                    got += 1
                else:
                    time.sleep(0.0005)
            times.append(time.perf_counter() - t)
        else:
            while not comm.iprobe(source=0, tag=77):
                time.sleep(0.0005)
            comm.recv(source=0, tag=77)
            i0 = (comm.rank - 1) * share
            comm.send(rows((i0, min(i0 + share, n_int), n_int)), dest=0, tag=78)
    return statistics.median(times) if times else None


def timed(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def rows_of(ex, quick, repeats, arrays, n_int):
    n1 = 2_000 if quick else 20_000
    n4 = 20_000 if quick else 200_000
    rt = 200 if quick else 2_000
    out = {}
    out[1] = timed(lambda: list(ex.map(trivial, range(n1), chunksize=1)), repeats)
    out[2] = timed(lambda: [f.result() for f in [ex.submit(trivial, i) for i in range(n1)]],
                   repeats)

    def round_trips():
        for i in range(rt):
            ex.submit(trivial, i).result()
    out[3] = timed(round_trips, repeats) / rt
    out[5] = timed(lambda: list(ex.map(chunk_sum, arrays)), repeats)
    blocks = 16
    step = -(-n_int // blocks)
    parts = [(i, min(i + step, n_int), n_int) for i in range(0, n_int, step)]
    out[6] = timed(lambda: list(ex.map(rows, parts)), repeats)
    out["n4"] = n4
    return out


def root_load(ex, n, chunksize=None):
    """MPI messages the root sent and received per task, and its CPU time
    per task, for a map of n trivial tasks (automatic chunks by default)."""
    chan = ex._backend._engine.chan
    list(ex.map(trivial, range(n // 10), chunksize=chunksize))  # warm: functions sent
    sent0, recv0 = chan.messages
    mcpu0 = chan.message_cpu_ns
    cpu0 = time.process_time()
    list(ex.map(trivial, range(n), chunksize=chunksize))
    cpu = time.process_time() - cpu0
    sent, recv = chan.messages[0] - sent0, chan.messages[1] - recv0
    per_msg = (chan.message_cpu_ns - mcpu0) * 1e-9 / max(1, sent + recv)
    return sent / n, recv / n, cpu / n, per_msg


def scale(comm, n) -> int:
    with shoal.mpi.MPICommExecutor(comm, root=0) as ex:
        if ex is not None:
            lay = shoal.mpi.layout()
            sent, recv, cpu, per_msg = root_load(ex, n)
            print(f"7    {comm.size} ranks: root + {len(lay.nodes)} (virtual) nodes of "
                  f"{'/'.join(str(len(x.ranks)) for x in lay.nodes)} ranks, "
                  f"{ex.num_workers} workers; map of {n:,} trivial tasks (auto chunks): "
                  f"{sent:.5f} messages sent and {recv:.5f} received per task by the root, "
                  f"{sent * n:.0f} + {recv * n:.0f} in all, {cpu * 1e6:.2f} us of root CPU "
                  f"per task, {per_msg * 1e6:.0f} us of its engine thread's CPU per message")
            m = n // 10
            sent, recv, cpu, per_msg = root_load(ex, m, chunksize=1)
            print(f"7    ... map of {m:,} trivial tasks, chunksize=1: {sent:.4f} + {recv:.4f} "
                  f"messages per task, {cpu * 1e6:.2f} us of root CPU per task, "
                  f"{per_msg * 1e6:.0f} us of engine-thread CPU per message")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scale", action="store_true",
                    help="goal 7 only (shoal): the root's load with many (virtual) nodes")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    if args.scale:
        return scale(comm, 20_000 if args.quick else 200_000)
    quick, repeats = args.quick, args.repeats
    n_int = 600 if quick else 3000
    mib = 4 if quick else 64
    arrays = [np.ones(mib * 2**20 // 8) for _ in range(8)] if comm.rank == 0 else []
    results = {}
    with Mpi4pyExecutor(comm, root=0) as ex:
        if ex is not None:
            r = rows_of(ex, quick, repeats, arrays, n_int)
            n4 = r.pop("n4")
            r[4] = timed(lambda: list(ex.map(trivial, range(n4), chunksize=1000)), repeats)
            results["mpi4py"] = r
    with shoal.mpi.MPICommExecutor(comm, root=0) as ex:
        if ex is not None:
            # Serial first, while the serving ranks wait idle (an MPI barrier
            # would have them spin on the two cores).
            results["serial"] = timed(lambda: rows((0, n_int, n_int)), 3)
            r = rows_of(ex, quick, repeats, arrays, n_int)
            n4 = r.pop("n4")
            r[4] = timed(lambda: list(ex.map(trivial, range(n4), chunksize=None)), repeats)
            results["shoal"] = r
            results["msgs"] = root_load(ex, n4)[:3]
            results["idle"] = idle_cpu(ex)
    bare = bare_ranks(comm, n_int, repeats)
    if comm.rank != 0:
        return 0
    serial = results["serial"]
    m, s = results["mpi4py"], results["shoal"]
    print(f"shoal mpi backend vs mpi4py.futures: {comm.size} ranks (root + {comm.size - 1} "
          f"serving), medians of {repeats}, {'quick' if quick else 'full'} sizes, "
          f"{MPI.Get_library_version().splitlines()[0][:40]}")
    print()
    print(f"{'goal':<5}{'workload':<58}{'mpi4py.futures':>16}{'shoal':>12}{'ratio':>9}"
          f"{'target':>9}  status")

    def row(goal, what, a, b, target, unit="s"):
        ratio = a / b
        ok = ratio >= target
        fa = f"{a * 1e6:.1f} us" if unit == "us" else f"{a:.3f} s"
        fb = f"{b * 1e6:.1f} us" if unit == "us" else f"{b:.3f} s"
        print(f"{goal:<5}{what:<58}{fa:>16}{fb:>12}{ratio:>8.2f}x{target:>8.1f}x  "
              f"{'PASS' if ok else 'FAIL'}")

    n1 = 2_000 if quick else 20_000
    row(1, f"map(f, range({n1:,}), chunksize=1)", m[1], s[1], 20)
    row(2, f"{n1:,} x submit(f, i), then all results", m[2], s[2], 10)
    row(3, "submit(f, i).result() one after another (per round trip)", m[3], s[3], 10, "us")
    n4 = 20_000 if quick else 200_000
    row(4, f"map(f, range({n4:,})): auto chunks vs chunksize=1000", m[4], s[4], 1.5)
    row(5, f"eight {mib} MiB numpy chunks summed on the serving ranks", m[5], s[5], 2)
    print(f"6    the course's integration, n = {n_int}, 16 row blocks: serial {serial:.3f} s, "
          f"mpi4py.futures {m[6]:.3f} s ({serial / m[6]:.2f}x), shoal {s[6]:.3f} s "
          f"({serial / s[6]:.2f}x); {comm.size - 1} bare ranks, one share each, no pool "
          f"{bare:.3f} s ({serial / bare:.2f}x, the ceiling); target >= 1.8x: "
          f"{'PASS' if serial / s[6] >= 1.8 else 'FAIL'}")
    sent, recv, cpu = results["msgs"]
    print(f"7    root, map of {n4:,} trivial tasks (auto chunks): {sent:.5f} messages sent and "
          f"{recv:.5f} received per task, {cpu * 1e6:.2f} us of root CPU per task")
    idle = results["idle"]
    print(f"8    idle pool for 3 s, share of a core: serving ranks and their workers "
          f"{', '.join(f'{100 * x:.2f}%' for x in idle[:-1])}, root {100 * idle[-1]:.2f}%"
          f"; target < 1% each: {'PASS' if max(idle[:-1]) < 0.01 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
