"""Synthetic monitor Runs with known schedules, for the report tests and the
benchmark: what a recording of each situation would hold, built with numpy.

``build()`` turns per-worker task durations into a Run (tasks back to back
on each worker, a 10 Hz sampler consistent with them); the named factories
below are the situations the verdict rules look for.
"""

from __future__ import annotations

import numpy as np

from shoal.monitor._run import (COUNTER_DTYPE, GPU_SAMPLE_DTYPE, NATIVE_DTYPE, OK, RAISED, SYSTEM_SAMPLE_DTYPE,
                                TASK_DTYPE, WORKER_DTYPE, WORKER_SAMPLE_DTYPE, Run)

S = 1_000_000_000  # ns per second
GiB = 1 << 30


def _meta(cpus: int, wall_ns: int, **extra) -> dict:
    meta = {
        "version": 1, "start_ns": 0, "start_unix": 1.8e9, "end_ns": wall_ns,
        "command": "python job.py", "argv": ["job.py"], "cwd": "/tmp", "host": "node1", "pid": 1,
        "backends": ["processes"],
        "allocation": {"cpus": cpus, "cpus_source": "test allocation", "host_cpus": cpus,
                       "slurm": {"in_job": False}},
        "cpus_given": cpus, "cpu_ids": list(range(cpus)), "memory_limit": None,
        "thread_pools": [], "sample_hz": 10, "gpu_note": "no NVIDIA GPU", "gpus": [],
    }
    meta.update(extra)
    return meta


def build(worker: np.ndarray, start: np.ndarray, end: np.ndarray, *, cpus: int, wall: float | None = None,
          submit: np.ndarray | None = None, cpu: float = 1.0, samples: bool = True,
          memory: tuple[int, int | None] | None = None, procs_extra: int = 0,
          counters: bool = True, outcome: np.ndarray | None = None, **meta) -> Run:
    """A Run of tasks (times in ns) on workers 0..max(worker); the sampler at
    10 Hz over [0, wall]: per-core busy (worker i on core i % cpus), worker
    CPU time (``cpu`` x the busy time: 1 CPU-bound, ~0 sleeping), runnable
    threads (busy workers + 1 + ``procs_extra``), memory ``(peak, limit)``."""
    worker = np.asarray(worker, np.uint32)
    start = np.asarray(start, np.int64)
    end = np.asarray(end, np.int64)
    n = len(worker)
    nw = int(worker.max()) + 1 if n else 1
    wall_ns = int(wall * S) if wall is not None else (int(end.max()) if n else S)
    t = np.zeros(n, TASK_DTYPE)
    t["task"] = np.arange(n)
    t["submit"] = start if submit is None else submit
    t["start"], t["end"], t["worker"] = start, end, worker
    t["bytes_in"], t["bytes_out"] = 100, 50
    t["outcome"] = OK if outcome is None else outcome
    workers = np.zeros(nw, WORKER_DTYPE)
    workers["worker"] = np.arange(nw)
    workers["pid"] = 1000 + np.arange(nw)
    workers["ended"] = -1
    dur = end - start
    c = np.zeros(nw if counters else 0, COUNTER_DTYPE)
    if counters:
        c["worker"] = np.arange(nw)
        c["tasks"] = np.bincount(worker, minlength=nw)
        c["busy_ns"] = np.bincount(worker, weights=dur, minlength=nw).astype(np.uint64)
        k = np.clip(np.log2(np.maximum(dur, 1)).astype(int), 0, 39)
        np.add.at(c["hist"], (worker, k), 1)
    run = Run(meta=_meta(cpus, wall_ns, **meta), tasks=t, functions=["work"], workers=workers, counters=c)
    if memory is not None:
        run.meta["memory_limit"] = memory[1]
    if samples:
        _sample(run, worker, start, end, nw, cpus, wall_ns, cpu, memory, procs_extra)
    return run


def _busy_until(start: np.ndarray, end: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Busy ns of one worker's back-to-back tasks (sorted) up to each time in ``at``."""
    if len(start) == 0:
        return np.zeros(len(at))
    cum = np.concatenate([[0], np.cumsum(end - start)])
    i = np.searchsorted(start, at, side="right")   # tasks begun by then
    running = np.clip(at - start[np.maximum(i - 1, 0)], 0, (end - start)[np.maximum(i - 1, 0)])
    return np.where(i > 0, cum[np.maximum(i - 1, 0)] + running, 0)


def _sample(run: Run, worker, start, end, nw, cpus, wall_ns, cpu, memory, procs_extra) -> None:
    at = np.arange(0, wall_ns + 1, S // 10, dtype=np.int64)
    busy = np.zeros((nw, len(at)))
    for w in range(nw):
        mine = worker == w
        order = np.argsort(start[mine])
        busy[w] = _busy_until(start[mine][order], end[mine][order], at)
    frac = np.diff(busy, axis=1, prepend=0) / (S // 10)
    cores = np.zeros((len(at), cpus), np.float32)
    for w in range(nw):
        cores[:, w % cpus] += frac[w]
    run.core_t = at
    run.core_busy = np.clip(cores, 0, 1)
    run.core_ids = list(range(cpus))
    ws = np.zeros(nw * len(at), WORKER_SAMPLE_DTYPE)
    ws["t"] = np.tile(at, nw)
    ws["worker"] = np.repeat(np.arange(nw), len(at))
    ws["cpu_ns"] = (busy * cpu).reshape(-1)
    ws["rss"] = 100 << 20
    run.worker_samples = ws
    ss = np.zeros(len(at), SYSTEM_SAMPLE_DTYPE)
    ss["t"] = at
    ss["procs_running"] = np.round(np.clip(frac, 0, 1).sum(axis=0)) + 1 + procs_extra
    if memory is not None:
        peak = memory[0]
        ss["mem_current"] = np.linspace(peak / 4, peak, len(at)).astype(np.uint64)
        ss["mem_peak"] = np.maximum.accumulate(ss["mem_current"])
    run.system_samples = ss


def back_to_back(durations: list, *, gap: float = 0.0, t0: float = 0.0):
    """(worker, start, end) in ns: worker w runs durations[w] (seconds) one
    after the other from t0, ``gap`` seconds apart."""
    ws, ss, es = [], [], []
    for w, ds in enumerate(durations):
        ds = np.asarray(ds, float) * S
        ends = t0 * S + np.cumsum(ds + gap * S) - gap * S
        ws.append(np.full(len(ds), w))
        ss.append((ends - ds).astype(np.int64))
        es.append(ends.astype(np.int64))
    return np.concatenate(ws), np.concatenate(ss), np.concatenate(es)


# ---------------------------------------------------------------- situations

def two_workers(tasks: int = 20, task_s: float = 0.05, wall: float = 0.5, cpus: int = 2, **kw) -> Run:
    """2 workers share ``tasks`` sleep-like tasks of ``task_s`` (the brief's
    2 workers x 20 x 50 ms on 2 CPUs over 0.5 s: 100% efficient)."""
    per = [[task_s] * (tasks // 2 + (tasks % 2 if w == 0 else 0)) for w in range(2)]
    return build(*back_to_back(per), cpus=cpus, wall=wall, **kw)


def healthy(workers: int = 4, tasks: int = 400, task_s: float = 0.02, **kw) -> Run:
    """Every worker busy the whole run, tasks of 20 ms, 4 CPUs, 2 s: nothing to say."""
    per = [[task_s] * (tasks // workers)] * workers
    w, s, e = back_to_back(per)
    if "memory" not in kw:
        kw["memory"] = (int(0.8 * 4 * GiB), 4 * GiB)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S, **kw)


def serial(cpus: int = 8, tasks: int = 200, task_s: float = 0.01) -> Run:
    """One worker of 8 runs everything; the other 7 are never used."""
    w, s, e = back_to_back([[task_s] * tasks])
    run = build(w, s, e, cpus=cpus, wall=float(e.max()) / S)
    return run


def launch_line() -> Run:
    """srun without --cpus-per-task: SLURM gave the node 8 CPUs, the process 1."""
    w, s, e = back_to_back([[0.01] * 200])
    run = build(w, s, e, cpus=1, wall=float(e.max()) / S)
    run.meta["allocation"]["slurm"] = {"in_job": True, "cpus_on_node": 8, "job_cpus_per_node": [8]}
    run.meta["allocation"]["cpus_source"] = "CPU affinity"
    return run


def few_tasks(n: int = 5) -> Run:
    """5 tasks of 10 ms: too little data for a verdict."""
    w, s, e = back_to_back([[0.01] * n])
    return build(w, s, e, cpus=2, wall=0.06)


def oversubscribed_threads(workers: int = 4, threads: int = 4) -> Run:
    """A healthy schedule, but every worker's BLAS runs 4 threads on 4 CPUs."""
    run = healthy(workers=workers)
    run.meta["thread_pools"] = [{"user_api": "blas", "internal_api": "openblas", "num_threads": threads},
                                {"user_api": "openmp", "internal_api": "openmp", "num_threads": threads}]
    return run


def oversubscribed_runnable(workers: int = 4) -> Run:
    """A healthy schedule with 8 more runnable threads than CPUs in every sample."""
    per = [[0.02] * 100] * workers
    w, s, e = back_to_back(per)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S, procs_extra=8)


def tiny_tasks(workers: int = 2, tasks: int = 20_000, task_s: float = 50e-6, gap: float = 20e-6) -> Run:
    """Tasks of 50 us with 20 us of dispatch between them, every worker busy."""
    per = [[task_s] * (tasks // workers)] * workers
    w, s, e = back_to_back(per, gap=gap)
    submit = np.zeros(len(w), np.int64)          # all submitted up front (a map)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S, submit=submit)


def imbalanced(workers: int = 4) -> Run:
    """Worker 0 gets 4x the work of the others."""
    per = [[0.02] * 400] + [[0.02] * 100] * (workers - 1)
    w, s, e = back_to_back(per)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S)


def long_tail(workers: int = 4) -> Run:
    """Every worker busy for 2 s, then worker 0 runs one last 1 s task alone
    (the busiest worker stays under 1.5x the mean: a tail, not an imbalance)."""
    per = [[0.02] * 100 + [0.5]] + [[0.02] * 100] * (workers - 1)
    w, s, e = back_to_back(per)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S)


def idle_workers(workers: int = 4) -> Run:
    """Workers 2 and 3 get one task each; 0 and 1 do the rest."""
    per = [[0.02] * 150, [0.02] * 150, [0.02], [0.02]]
    w, s, e = back_to_back(per)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S)


def memory_near_limit() -> Run:
    return healthy(memory=(int(0.95 * 4 * GiB), 4 * GiB))


def memory_low_use() -> Run:
    return healthy(memory=(int(0.2 * 4 * GiB), 4 * GiB))


def gpu_idle(util: float = 0.0) -> Run:
    """A healthy CPU run on a node with one allocated GPU that stays at ``util``%."""
    run = healthy()
    at = run.core_t
    g = np.zeros(len(at), GPU_SAMPLE_DTYPE)
    g["t"], g["gpu"], g["util"] = at, 0, util
    g["mem_used"], g["mem_total"] = 500 << 20, 80 * GiB
    run.gpu_samples = g
    run.meta["gpus"] = ["NVIDIA H100"]
    run.meta["gpu_note"] = None
    return run


def gil(workers: int = 4) -> Run:
    """backend='threads', 4 threads whose tasks overlap, but the workers use
    1 CPU between them (each 1/4 of its busy time): the GIL."""
    per = [[0.02] * 100] * workers
    w, s, e = back_to_back(per)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S, cpu=1.0 / workers, backends=["threads"])


def overlapping_records() -> Run:
    """Worker 0's records overlap by 30 us here and there (clock noise between
    the cores that stamped them); worker 1's are clean."""
    w, s, e = back_to_back([[0.001] * 200, [0.001] * 200])
    s = s.copy()
    s[(w == 0) & (np.arange(len(w)) % 7 == 3)] -= 30_000
    return build(w, s, e, cpus=2, wall=float(e.max()) / S)


def serial_driver(workers: int = 4) -> Run:
    """4 workers busy together for 1 s of a 10 s run: the caller's own code is the rest."""
    w, s, e = back_to_back([[0.01] * 100] * workers, t0=8.0)
    return build(w, s, e, cpus=workers, wall=10.0)


def replaced_worker() -> Run:
    """A healthy run where worker 1 died at 1 s and worker 4 took over its place."""
    per = [[0.02] * 100, [0.02] * 50, [0.02] * 100, [0.02] * 100, [0.02] * 50]
    w, s, e = back_to_back(per)
    s[w == 4] += 1_000_000_000
    e[w == 4] += 1_000_000_000
    run = build(w, s, e, cpus=4, wall=2.0)
    run.workers["ended"][1] = 1_000_000_000
    run.workers["started"][4] = 1_000_000_000
    return run


def native_loops(cpus: int = 4, calls: int = 200, busy: float = 1.0) -> Run:
    """No tasks: 200 parallel_reduce calls of 10 ms on 4 threads, back to back
    over 2 s, each thread busy ``busy`` of each call."""
    n = calls * cpus
    nat = np.zeros(n, NATIVE_DTYPE)
    nat["call"] = np.repeat(np.arange(calls), cpus)
    nat["thread"] = np.tile(np.arange(cpus), calls)
    nat["start"] = nat["call"].astype(np.int64) * 10_000_000
    nat["end"] = nat["start"] + 10_000_000
    nat["busy_ns"] = int(busy * 10_000_000)
    wall = calls * 0.01
    run = Run(meta=_meta(cpus, int(wall * S)), native=nat)
    run.meta["backends"] = []
    at = np.arange(0, int(wall * S) + 1, S // 10, dtype=np.int64)
    run.core_t, run.core_busy, run.core_ids = at, np.full((len(at), cpus), busy, np.float32), list(range(cpus))
    return run


def with_failures() -> Run:
    run = healthy()
    run.tasks["outcome"][::50] = RAISED
    return run


def million(workers: int = 14, tasks: int = 1_000_000, seed: int = 0, samples: bool = True) -> Run:
    """1 M tasks of about 1 ms (lognormal) on 14 workers, 10 us apart: ~75 s."""
    rng = np.random.default_rng(seed)
    per_worker = tasks // workers
    w_list, s_list, e_list = [], [], []
    for w in range(workers):
        d = (rng.lognormal(np.log(1e6), 0.5, per_worker)).astype(np.int64) + 1
        gaps = np.full(per_worker, 10_000, np.int64)
        ends = np.cumsum(d + gaps) - gaps[0]
        w_list.append(np.full(per_worker, w, np.uint32))
        s_list.append(ends - d)
        e_list.append(ends)
    w, s, e = np.concatenate(w_list), np.concatenate(s_list), np.concatenate(e_list)
    order = np.argsort(s, kind="stable")        # the reader's merge: in start order
    w, s, e = w[order], s[order], e[order]
    submit = np.maximum(s - 50_000, 0)
    return build(w, s, e, cpus=workers, wall=float(e.max()) / S + 0.05, submit=submit,
                 samples=samples, memory=(3 * GiB, 8 * GiB))
