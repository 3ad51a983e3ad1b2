"""The terminal summary of one monitor file: the figures, one verdict line,
and the advice that follows from it (in the manner of ``jobstats``).

    Run ──► _analysis.schedule() ──► stats(): figures ──► _findings(): rules
                                                     └──► summary(): text

Definitions (docs/monitor.md repeats them for users):

* CPU efficiency = busy core-seconds / (wall time x CPUs given). Busy time
  comes from the always-on per-worker counters (exact even when task records
  were dropped), else from the task records; ``busy_source`` says which.
  The native loops' per-thread busy time (parallel_for, parallel_reduce) adds
  to it.
* Measured CPU = the CPU time the sampler saw the workers use (process CPU
  for process workers, thread CPU for threads), over the same denominator.
* Overhead = on each worker, the time between the end of one task and the
  start of the next while that next task was already submitted (so the
  worker idled with work queued), summed; overhead share = overhead /
  (overhead + busy). Submit->start latency (queueing included) is shown
  beside it but is not overhead: a task may wait because every worker is busy.
* The tail = the last 10% of the span from the first task start to the last
  task end; a worker is busy in it if it ran tasks >= half of that window.
* A worker's busy share = its busy time / the time it was alive (the wall
  time unless the file says it started late or ended early).
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from ._analysis import Schedule, quantiles, schedule
from ._run import OUTCOMES, RETRIED, Run

# Thresholds of the verdict rules (docs/monitor.md lists them).
GOOD, FINE, FAIR = 0.90, 0.80, 0.65   # CPU efficiency grades
SERIAL_CONCURRENCY = 1.25             # busy CPUs on average at most this: effectively serial
WAITING = 0.5                         # workers' measured CPU under this share of their task time
IDLE_WORKER = 0.10                    # a worker busy less than this share of the wall time
OVERSUBSCRIBED_SAMPLES = 0.20         # share of samples with more runnable threads than CPUs
TINY_TASK_S = 1e-3                    # median task below this: batch
OVERHEAD_SHARE = 0.10                 # overhead above this share of busy time: batch
CHUNK_TARGET_S = 10e-3                # a chunk should take at least this long
IMBALANCE = 1.5                       # busiest worker over the mean
TAIL_SHARE, TAIL_BUSY = 0.10, 0.50    # last 10% of the span; under half the workers busy
MEMORY_LOW, MEMORY_HIGH = 0.70, 0.90  # peak over the limit
GPU_IDLE = 15.0                       # percent utilisation while allocated
MIN_TASKS, MIN_SAMPLES = 100, 10      # below both: no verdict

_LEVEL_ORDER = {"bad": 0, "warn": 1, "note": 2, "good": 3}


# ---------------------------------------------------------------- figures

def _library_threads(meta: dict) -> list[dict[str, Any]]:
    """The driver's library thread pools, and what each of shoal's workers
    runs of them (``per_worker``): shoal caps a library inside its workers
    to CPUs // workers unless the user set its variable (meta "thread_env",
    recorded at the start); None where the file does not say."""
    from ..allocation import library_threads, library_variable

    env = meta.get("thread_env")
    out = []
    for lib in meta.get("thread_pools") or []:
        n = lib.get("num_threads") or 1
        variable = library_variable(lib.get("user_api"), lib.get("internal_api"))
        per_worker = None if env is None else library_threads(variable, env)
        out.append({"name": lib.get("internal_api") or lib.get("user_api") or "a library",
                    "threads": int(n), "variable": variable, "capped": env is not None
                    and per_worker is None, "per_worker": per_worker})
    return out


def _max_alive_workers(run: Run, workers: int) -> int:
    """The most workers alive at once (a replaced worker is a new row)."""
    w = run.workers
    if len(w) == 0:
        return workers
    ev_t = np.concatenate([w["started"], np.where(w["ended"] >= 0, w["ended"], np.iinfo(np.int64).max)])
    ev_d = np.concatenate([np.ones(len(w), np.int64), -np.ones(len(w), np.int64)])
    order = np.lexsort((ev_d, ev_t))    # at equal times, ends first
    return int(np.cumsum(ev_d[order]).max())


def _measured_cpu_ns(run: Run) -> float | None:
    """CPU time the workers used between their first and last sample."""
    ws = run.worker_samples
    if len(ws) < 2:
        return None
    order = np.lexsort((ws["t"], ws["worker"]))
    w = ws["worker"][order]
    cpu = ws["cpu_ns"][order].astype(np.int64)
    first = np.r_[True, w[1:] != w[:-1]]
    last = np.r_[w[1:] != w[:-1], True]
    return float(np.clip(cpu[last] - cpu[first], 0, None).sum())


def _memory(run: Run) -> tuple[int, str]:
    ss = run.system_samples
    if len(ss) and int(ss["mem_peak"].max()) > 0:
        return int(ss["mem_peak"].max()), "cgroup memory peak"
    if len(ss) and int(ss["mem_current"].max()) > 0:
        return int(ss["mem_current"].max()), "largest cgroup memory.current sampled"
    ws = run.worker_samples
    if len(ws):
        # one RSS per process: thread workers all report the driver's
        w = ws["worker"].astype(np.int64)
        pid_of = -1 - np.arange(int(w.max()) + 1, dtype=np.int64)    # unknown: a process of its own
        known = run.workers[run.workers["worker"] <= w.max()]
        pid_of[known["worker"]] = known["pid"]
        keys = np.rec.fromarrays([ws["t"], pid_of[w]], names="t,pid")
        _, first = np.unique(keys, return_index=True)
        times, which = np.unique(ws["t"][first], return_inverse=True)
        total = np.bincount(which, weights=ws["rss"][first].astype(float))
        return int(total.max()), "largest sum of the worker processes' RSS sampled"
    return 0, "not sampled"


def stats(run: Run, sched: Schedule | None = None) -> dict[str, Any]:
    """Every figure of the summary and the findings of the verdict rules, as
    a JSON-ready dict (seconds, bytes, fractions in [0, 1]). ``sched``:
    _analysis.schedule(run), if the caller has it already."""
    meta = run.meta
    sched = schedule(run) if sched is None else sched
    wall_ns = max(sched.wall, 1)
    cpus = max(1, sched.cpus)
    nw = sched.workers
    t = run.tasks
    attempts = len(t)
    outcome = np.ascontiguousarray(t["outcome"])
    # u1 compares: several times faster than bincount's conversion to intp
    outcome_counts = np.array([np.count_nonzero(outcome == k) for k in range(len(OUTCOMES))])
    dur = sched.duration

    # busy time per worker: the counters (exact), else the task records
    c = run.counters
    if len(c) and int(c["tasks"].sum()) > 0:
        busy_w = np.bincount(c["worker"], weights=c["busy_ns"].astype(float), minlength=nw)
        busy_source = "always-on counters"
        tasks = int(c["tasks"].sum())
    else:
        busy_w = np.bincount(sched.worker, weights=dur.astype(float), minlength=nw) if len(dur) else np.zeros(nw)
        busy_source = "task records"
        tasks = int(attempts - outcome_counts[RETRIED])
    busy_ns = float(busy_w.sum())
    native = _native(run)
    if native:
        busy_ns += native["busy_s"] * 1e9
        busy_source += " + native loops' per-thread busy time"
    efficiency = busy_ns / (wall_ns * cpus)
    share_w = busy_w / _lifetimes(run, nw, wall_ns)

    # task durations (records of attempts that ran; retried attempts included)
    if len(dur):
        p50, p90, p99 = quantiles(dur, (0.5, 0.9, 0.99))
        durations = {"p50": p50 / 1e9, "p90": p90 / 1e9, "p99": p99 / 1e9,
                     "max": float(dur.max()) / 1e9, "mean": float(dur.mean()) / 1e9}
        duration_source = "task records" + (f" ({run.dropped:,} dropped: a sample)" if run.dropped else "")
    elif len(c) and int(c["tasks"].sum()) > 0:
        durations = _hist_quantiles(c["hist"].sum(axis=0))
        duration_source = "always-on counters' log2 histogram (within 2x)"
    else:
        durations = {k: None for k in ("p50", "p90", "p99", "max", "mean")}
        duration_source = "none"

    # overhead: gaps on one worker while its next task was already submitted
    overhead_ns = 0.0
    latency = {"p50": None, "p99": None}
    tail_busy = tail_active = 0
    task_span = 0
    if len(dur):
        first, last = int(sched.start.min()), int(sched.end.max())
        task_span = last - first
        # in place, no masks: a million-row run pays a few passes here
        gap = np.maximum(sched.end[:-1], sched.submit[1:])
        np.subtract(sched.start[1:], gap, out=gap)
        np.maximum(gap, 0, out=gap)
        gap[sched.bounds[1:-1][(sched.bounds[1:-1] > 0) & (sched.bounds[1:-1] < len(dur))] - 1] = 0
        overhead_ns = float(gap.sum())
        lat = sched.start - sched.submit
        if int(sched.submit.min()) < 0:
            lat = lat[sched.submit >= 0]
        if len(lat):
            l50, l99 = quantiles(lat, (0.5, 0.99))
            latency = {"p50": max(0.0, l50) / 1e9, "p99": max(0.0, l99) / 1e9}
        window = (last - first) * TAIL_SHARE
        if window > 0:
            t0 = last - window
            late = sched.end > t0
            part = np.clip(sched.end[late], t0, last) - np.clip(sched.start[late], t0, last)
            tail_w = np.bincount(sched.worker[late], weights=part.astype(float), minlength=nw)
            tail_busy = int((tail_w >= TAIL_BUSY * window).sum())
        tail_active = int((np.diff(sched.bounds) > 0).sum())
    task_busy_ns = float(dur.sum()) if len(dur) else float(busy_w.sum())
    # The time some task ran (the union of the tasks' intervals): only for
    # a run that may be serial, where the verdict needs it (a sort: ~70 ms
    # for a million tasks)
    task_union = task_span
    if len(dur) and busy_ns / wall_ns <= SERIAL_CONCURRENCY:
        order = np.argsort(sched.start, kind="stable")
        starts = sched.start[order]
        ends = np.maximum.accumulate(sched.end[order])
        idle = np.maximum(starts[1:] - ends[:-1], 0)
        task_union = int(ends[-1] - starts[0] - idle.sum())
    overhead_share = overhead_ns / (overhead_ns + task_busy_ns) if overhead_ns + task_busy_ns > 0 else 0.0

    measured = _measured_cpu_ns(run)
    cores = _job_cores_busy(run)
    ss = run.system_samples
    alloc = meta.get("allocation") or {}
    host_cpus = int(alloc.get("host_cpus") or 0)
    whole_machine = not host_cpus or cpus >= host_cpus
    runnable_over = None
    if len(ss):
        limit = cpus if whole_machine else host_cpus
        # +1: the sampler itself is running while it reads /proc/stat
        runnable_over = float((ss["procs_running"].astype(np.int64) > limit + 1).mean())
    mem_peak, mem_source = _memory(run)
    mem_limit = meta.get("memory_limit") or (alloc.get("memory_limit_bytes") if alloc else None)
    gs = run.gpu_samples
    gpus = []
    if len(gs):
        names = meta.get("gpus") or []
        for g in np.unique(gs["gpu"]):
            rows = gs[gs["gpu"] == g]
            gpus.append({"gpu": int(g), "name": names[g] if g < len(names) else f"GPU {g}",
                         "util_mean": float(rows["util"].mean()), "util_max": float(rows["util"].max()),
                         "mem_peak": int(rows["mem_used"].max()), "mem_total": int(rows["mem_total"].max())})
    samples = max(len(ss), len(run.core_t), len(np.unique(run.worker_samples["t"])) if len(run.worker_samples) else 0)

    s: dict[str, Any] = {
        "command": meta.get("command"),
        "host": meta.get("host"),
        "backends": meta.get("backends") or [],
        "wall_s": wall_ns / 1e9,
        "cpus": cpus,
        "cpus_source": sched.cpus_source,
        "workers": nw,
        "workers_alive_max": _max_alive_workers(run, nw),
        "ranks": _ranks(run, busy_w, nw),
        "busy_core_s": busy_ns / 1e9,
        "busy_source": busy_source,
        "efficiency": efficiency,
        "concurrency": busy_ns / wall_ns,
        "measured_cpu_s": None if measured is None else measured / 1e9,
        "measured_efficiency": None if measured is None else measured / (wall_ns * cpus),
        "job_cores_busy": cores,
        "worker_busy_share": [float(x) for x in share_w],
        "tasks": tasks,
        "attempts": attempts,
        "outcomes": {OUTCOMES[k]: int(n) for k, n in enumerate(outcome_counts) if n},
        "duration_s": durations,
        "duration_source": duration_source,
        "overhead_s": overhead_ns / 1e9,
        "overhead_share": overhead_share,
        "latency_s": latency,
        "task_span_s": task_span / 1e9,
        "task_busy_s": task_busy_ns / 1e9,
        "task_union_s": task_union / 1e9,
        "node_cpus": _node_cpus(alloc),
        "graded_by": "tasks",
        "tail_workers_busy": tail_busy,
        "tail_workers_active": tail_active,
        "samples": samples,
        "runnable_over_share": runnable_over,
        "runnable_limit": "the job's CPUs" if whole_machine else f"the node's {host_cpus} CPUs",
        "library_threads": _library_threads(meta),
        "memory_peak": mem_peak,
        "memory_source": mem_source,
        "memory_limit": int(mem_limit) if mem_limit else None,
        "memory_share": (mem_peak / mem_limit) if mem_limit and mem_peak else None,
        "gpus": gpus,
        "gpu_note": meta.get("gpu_note"),
        "native": native,
        "dropped": int(run.dropped),
        "truncated": run.truncated or "",
        "slurm": bool((alloc.get("slurm") or {}).get("in_job")) if alloc else False,
    }
    findings = _findings(s)
    s["findings"] = findings
    s["verdict"], s["level"] = _verdict(s, findings)
    return s


def _ranks(run: Run, busy_w: np.ndarray, nw: int) -> list[dict[str, Any]]:
    """Per MPI rank (from the workers table): workers and busy core-seconds;
    empty off MPI (one rank)."""
    w = run.workers
    if len(w) == 0 or len(np.unique(w["rank"])) < 2:
        return []
    rank_of = np.zeros(nw, np.int64)
    keep = w["worker"] < nw
    rank_of[w["worker"][keep]] = w["rank"][keep]
    out = []
    for r in np.unique(rank_of).tolist():
        mine = rank_of == r
        out.append({"rank": int(r), "workers": int(mine.sum()), "busy_core_s": float(busy_w[mine].sum()) / 1e9})
    return out


def _node_cpus(alloc: dict) -> int | None:
    """The CPUs SLURM gave this node (SLURM_CPUS_ON_NODE, else the job's per-node count)."""
    slurm = (alloc or {}).get("slurm") or {}
    if not slurm.get("in_job"):
        return None
    if slurm.get("cpus_on_node"):
        return int(slurm["cpus_on_node"])
    per_node = slurm.get("job_cpus_per_node") or []
    node = slurm.get("node_id") or 0
    try:
        return int(per_node[node]) if per_node else None
    except (IndexError, TypeError, ValueError):
        return None


def _native(run: Run) -> dict[str, Any] | None:
    """parallel_for / parallel_reduce: calls, threads, busy time, and the share
    of the threads' time inside the calls they were busy."""
    nat = run.native
    if len(nat) == 0:
        return None
    span = np.clip(nat["end"] - nat["start"], 0, None).astype(float)
    busy = float(nat["busy_ns"].sum())
    _, first = np.unique(nat["call"], return_index=True)
    return {"calls": int(len(first)), "threads": int(len(np.unique(nat["thread"]))),
            "busy_s": busy / 1e9, "loop_s": float(span[first].sum()) / 1e9,
            "busy_share": busy / span.sum() if span.sum() > 0 else 0.0}


def _lifetimes(run: Run, nw: int, wall_ns: int) -> np.ndarray:
    """How long each worker was alive (a replaced worker's row, its part of
    the run), the wall time where the file does not say."""
    alive = np.full(nw, float(wall_ns))
    w = run.workers
    if len(w):
        keep = w["worker"] < nw
        w = w[keep]
        started = np.clip(w["started"], 0, wall_ns)
        ended = np.where(w["ended"] >= 0, np.minimum(w["ended"], wall_ns), wall_ns)
        alive[w["worker"]] = np.maximum(ended - started, 1)
    return alive


def _hist_quantiles(h: np.ndarray) -> dict[str, float | None]:
    total = h.sum()
    if total == 0:
        return {k: None for k in ("p50", "p90", "p99", "max", "mean")}
    cum = np.cumsum(h)
    mid = 2.0 ** (np.arange(len(h)) + 0.5) / 1e9      # geometric middle of [2^k, 2^(k+1))
    out = {f"p{int(q * 100)}": float(mid[np.searchsorted(cum, q * total)]) for q in (0.5, 0.9, 0.99)}
    out["max"] = float(2.0 ** (np.flatnonzero(h)[-1] + 1) / 1e9)
    out["mean"] = float((h * mid).sum() / total)
    return out


def _job_cores_busy(run: Run) -> float | None:
    """Busy cores of the job on average, all processes on them (the sampler's
    per-core figures, on the job's cores where the file names them)."""
    b = run.core_busy
    if b.size == 0:
        return None
    ids = run.meta.get("cpu_ids")
    if ids and run.core_ids:
        wanted = set(ids)
        cols = [i for i, cid in enumerate(run.core_ids) if cid in wanted]
        if cols:
            b = b[:, cols]
    return float(b.sum(axis=1).mean())


# ---------------------------------------------------------------- the rules

def _finding(code: str, level: str, text: str, *advice: str) -> dict[str, Any]:
    return {"code": code, "level": level, "text": text, "advice": list(advice)}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _chunksize(median_s: float) -> int:
    return max(2, int(math.ceil(CHUNK_TARGET_S / max(median_s, 1e-9))))


def _findings(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule that fires, most severe first. None when there is too little data."""
    out: list[dict[str, Any]] = []
    if s["tasks"] < MIN_TASKS and s["samples"] < MIN_SAMPLES:
        return [_finding("too_little_data", "note",
                         f"no verdict: {s['tasks']} task{'s' if s['tasks'] != 1 else ''} and "
                         f"{s['samples']} sample{'s' if s['samples'] != 1 else ''} (a verdict needs "
                         f"{MIN_TASKS} tasks or {MIN_SAMPLES} samples, i.e. a run of about 1 s)")]
    eff, cpus = s["efficiency"], s["cpus"]
    conc = s["concurrency"]
    measured = s["measured_cpu_s"]
    backends = s["backends"]
    serial = False
    # while some task ran: how much of the run, and how many tasks at once
    union = s.get("task_union_s", s["task_span_s"])
    span = union / s["wall_s"] if s["wall_s"] else 1.0
    in_span = s["task_busy_s"] / union if union else 0.0
    # on 2 CPUs, 1.25 busy is also two workers at 62%: only a clear 1 there
    if (cpus >= 3 and conc <= SERIAL_CONCURRENCY) or (cpus == 2 and conc <= 1.1):
        serial = True
        causes = []
        if span < 0.5:
            causes.append(f"tasks ran during only {_pct(span)} of the wall time ({in_span:.1f} "
                          "workers busy then): the rest is the caller's own serial work (loading, "
                          "writing, between maps)")
        if s["workers_alive_max"] <= 1:
            causes.append("a pool of 1 worker (Pool(1), SHOAL_WORKERS=1, or a pool sized where a "
                          "launch line had left the process 1 CPU)")
        elif in_span <= SERIAL_CONCURRENCY:
            causes.append(f"{s['workers_alive_max']} workers but tasks one at a time (submitted one "
                          "by one, each waited on before the next: result() inside the loop)")
        if "threads" in backends:
            causes.append("the GIL: CPU-bound Python on backend='threads' runs one thread at a time")
        if not causes:
            causes.append("few tasks for the workers: each waited on the caller")
        out.append(_finding(
            "serial", "bad",
            f"effectively serial: {conc:.2f} of {cpus} CPUs busy on average (about 1/{cpus} "
            "of the allocation)",
            "likely causes: " + "; ".join(causes)))
    elif (cpus >= 2 and measured is not None and "threads" in backends
          and 0.6 <= measured / s["wall_s"] <= SERIAL_CONCURRENCY and conc > 1.5 * SERIAL_CONCURRENCY
          and s["duration_s"]["p50"] is not None):
        # one thread at a time at full speed: the GIL (waiting threads use ~0 CPUs instead)
        serial = True
        out.append(_finding(
            "serial", "bad",
            f"effectively serial: tasks overlapped ({conc:.1f} busy on average) but the workers "
            f"used {measured / s['wall_s']:.2f} CPUs: the GIL",
            "CPU-bound Python code needs backend='processes' (the default), or code that releases "
            "the GIL (numpy, numba nogil=True, shoal.parallel_for)"))
        s["graded_by"] = "measured"
    elif cpus == 1 and s["node_cpus"] and s["node_cpus"] > 1:
        serial = True
        out.append(_finding(
            "serial", "bad",
            f"effectively serial: the process had 1 CPU ({s['cpus_source']}) of the "
            f"{s['node_cpus']} SLURM gave this node",
            "a launch line that bound it to 1 CPU: srun without --cpus-per-task (or "
            "SLURM_CPUS_PER_TASK unset), mpirun's per-core binding, taskset; check `shoal info` "
            "inside the job"))
    if not serial:
        if eff < FAIR:
            out.append(_finding("low_efficiency", "bad",
                                f"CPU efficiency {_pct(eff)} of {cpus} CPUs: most of the allocation idled",
                                "see the causes below; if none applies, the job waits on I/O or on the "
                                "caller between maps, or asks for more CPUs than it can use"))
        elif eff < FINE:
            out.append(_finding("fair_efficiency", "note",
                                f"CPU efficiency {_pct(eff)} of {cpus} CPUs: fair"))

    if (not serial and measured is not None and conc >= 1 and s["wall_s"] > 0
            and measured / s["wall_s"] < WAITING * conc):
        out.append(_finding(
            "waiting", "note",
            f"the tasks mostly waited: {conc:.1f} workers busy with tasks on average, but they used "
            f"{measured / s['wall_s']:.2f} CPUs (sleep, I/O, locks, a remote service)",
            "CPU efficiency counts the time inside tasks; for I/O-bound tasks more workers than "
            "CPUs (backend='threads') can help, for CPU-bound code this means something blocks"))

    # idle workers
    share = np.asarray(s["worker_busy_share"])
    if len(share) >= 2:
        idle = int((share < IDLE_WORKER).sum())
        if idle:
            out.append(_finding(
                "idle_workers", "warn",
                f"idle workers: {idle} of {len(share)} workers busy less than {_pct(IDLE_WORKER)} of the time",
                f"fewer workers would do the same work (Pool({max(1, len(share) - idle)})), or give them "
                "more tasks: fewer, larger items leave workers without any; the caller may be the "
                "bottleneck (producing items, consuming results)"))

    # oversubscription
    over = s["runnable_over_share"]
    # (a library shoal capped in its workers cannot oversubscribe them)
    libs = [dict(lib, threads=lib["per_worker"] or lib["threads"])
            for lib in s["library_threads"] if not lib["capped"]]
    libs = [lib for lib in libs if lib["threads"] > 1]
    workers = max(1, s["workers_alive_max"])
    threads_over = [lib for lib in libs if workers * lib["threads"] > cpus]
    if threads_over:
        names = ", ".join(f"{lib['name']} {lib['threads']} threads" for lib in threads_over)
        variables = sorted({lib["variable"] for lib in threads_over})
        per = max(1, cpus // workers)
        out.append(_finding(
            "oversubscribed", "bad",
            f"oversubscribed: {workers} workers x library threads ({names}) > {cpus} CPUs",
            "set " + ", ".join(f"{v}={per}" for v in variables) + " (workers x threads <= CPUs), "
            f"or threadpoolctl.threadpool_limits({per}) inside the tasks"))
    elif over is not None and over > OVERSUBSCRIBED_SAMPLES:
        out.append(_finding(
            "oversubscribed", "bad",
            f"oversubscribed: more runnable threads than {s['runnable_limit']} in {_pct(over)} of samples",
            "if the tasks call BLAS/OpenMP code, set OMP_NUM_THREADS (and OPENBLAS_NUM_THREADS / "
            f"MKL_NUM_THREADS) to {max(1, cpus // workers)}; use workers=None (shoal.default_workers()) "
            "rather than os.cpu_count(); procs_running counts the whole node, other jobs included"))

    # tiny tasks / overhead
    p50 = s["duration_s"]["p50"]
    tiny = p50 is not None and p50 < TINY_TASK_S
    costly = s["overhead_share"] > OVERHEAD_SHARE
    if tiny or costly:
        why = []
        if tiny:
            why.append(f"median task {_seconds(p50)} (< {_seconds(TINY_TASK_S)})")
        if costly:
            why.append(f"overhead {_pct(s['overhead_share'])} of worker time (> {_pct(OVERHEAD_SHARE)})")
        size = _chunksize(p50) if p50 else None
        advice = (f"batch your tasks: pool.map(f, items, chunksize={size}) makes a chunk about "
                  f"{_seconds(size * p50)} (>= {_seconds(CHUNK_TARGET_S)}); or have each task handle "
                  f"{size} items" if size else "batch your tasks: several items per task")
        out.append(_finding("tiny_tasks", "warn", "tasks too small: " + "; ".join(why), advice))

    # imbalance / tail
    active = share[share > 0]
    if len(active) >= 2:
        mean = float(active.mean())
        top = float(active.max())
        if mean > 0 and top > IMBALANCE * mean:
            out.append(_finding(
                "imbalance", "warn",
                f"imbalance: the busiest worker was busy {top / mean:.1f}x the mean",
                "uneven tasks: submit the long ones first, split them, or use a smaller chunksize "
                "so the placement can even them out"))
        elif s["tail_workers_active"] >= 2 and s["tail_workers_busy"] < TAIL_BUSY * s["tail_workers_active"]:
            out.append(_finding(
                "tail", "warn",
                f"long tail: {s['tail_workers_busy']} of {s['tail_workers_active']} workers busy in the "
                f"last {_pct(TAIL_SHARE)} of the run",
                "the last tasks ran alone: submit long tasks first, or split them"))

    nat = s["native"]
    if nat and nat["busy_share"] < FAIR:
        out.append(_finding(
            "native_imbalance", "warn",
            f"native loops: their threads were busy {_pct(nat['busy_share'])} of the time inside the "
            f"{nat['calls']:,} calls",
            "uneven iterations or too few of them per thread: a smaller grain= spreads them; "
            "very short calls spend their time starting and joining the threads"))

    # memory
    ms = s["memory_share"]
    if ms is not None:
        if ms > MEMORY_HIGH:
            out.append(_finding("memory_high", "warn",
                                f"memory close to the limit: peak {_bytes(s['memory_peak'])} of "
                                f"{_bytes(s['memory_limit'])} ({_pct(ms)})",
                                "a little more data and the job is killed (OOM): ask for more memory, "
                                "or use fewer workers / smaller chunks (each worker holds its own)"))
        elif ms < MEMORY_LOW:
            ask = _bytes(int(s["memory_peak"] * 1.25))
            out.append(_finding("memory_low", "note",
                                f"memory peak {_bytes(s['memory_peak'])} is {_pct(ms)} of the "
                                f"{_bytes(s['memory_limit'])} limit",
                                f"could ask for less: about {ask} (peak + 25%)"
                                + (", e.g. sbatch --mem" if s["slurm"] else "")))

    # GPU
    for g in s["gpus"]:
        if g["util_mean"] <= GPU_IDLE:
            out.append(_finding("gpu_idle", "warn",
                                f"GPU idle: {g['name']} averaged {g['util_mean']:.0f}% utilisation "
                                f"(max {g['util_max']:.0f}%) while allocated",
                                "the tasks do not use it (CPU-only code, a missing CUDA build), or "
                                "do not ask for a GPU"))
    if s["dropped"]:
        out.append(_finding("dropped", "note", f"{s['dropped']:,} task records dropped (rings full); "
                            "busy time and task counts come from the exact counters"))
    if s["truncated"]:
        out.append(_finding("truncated", "note", f"the file ends early: {s['truncated']}"))
    out.sort(key=lambda f: _LEVEL_ORDER[f["level"]])
    return out


def _grade(eff: float) -> tuple[str, str]:
    if eff >= GOOD:
        return "good", "good"
    if eff >= FINE:
        return "fine", "good"
    if eff >= FAIR:
        return "fair", "note"
    return "poor", "bad"


def _verdict(s: dict[str, Any], findings: list[dict[str, Any]]) -> tuple[str, str]:
    """One line: the efficiency grade and the most severe finding."""
    if findings and findings[0]["code"] == "too_little_data":
        return findings[0]["text"][0].upper() + findings[0]["text"][1:], "note"
    if s["graded_by"] == "measured":      # tasks overlapped, the CPUs did not: grade what they did
        grade, level = _grade(s["measured_efficiency"])
        head = f"{grade} ({_pct(s['measured_efficiency'])} measured CPU on {s['cpus']} CPUs)"
    else:
        grade, level = _grade(s["efficiency"])
        head = f"{grade} ({_pct(s['efficiency'])} CPU efficiency on {s['cpus']} CPUs)"
    worst = [f for f in findings if f["level"] in ("bad", "warn")]
    if worst:
        level = "bad" if worst[0]["level"] == "bad" or level == "bad" else "warn"
        # the efficiency finding restates the head: name the cause instead, if one was found
        causes = [f for f in worst if f["code"] != "low_efficiency"] or worst
        rest = f" (+{len(causes) - 1} more below)" if len(causes) > 1 else ""
        joint = ": " if grade in ("poor", "fair") else ", but "
        return f"{head}{joint}{causes[0]['text']}{rest}", level
    return f"{head}: nothing to change", level


# ---------------------------------------------------------------- text

def _seconds(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.3g} s"
    if x >= 1e-3:
        return f"{x * 1e3:.3g} ms"
    if x >= 1e-6:
        return f"{x * 1e6:.3g} us"
    return f"{x * 1e9:.0f} ns"


def _bytes(n: int | None) -> str:
    if not n:
        return "unknown"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.3g} {unit}"
        x /= 1024
    return str(n)


_COLORS = {"bad": "\033[31m", "warn": "\033[33m", "note": "\033[36m", "good": "\033[32m",
           "bold": "\033[1m", "dim": "\033[2m"}
_RESET = "\033[0m"


def _use_color(color: bool | None) -> bool:
    if color is not None:
        return color
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def _meter(frac: float, width: int, color: bool) -> str:
    frac = min(max(frac, 0.0), 1.0)
    n = int(round(frac * width))
    full, empty = ("\u2588", "\u2591") if color else ("#", ".")
    return "[" + full * n + empty * (width - n) + "]"


def summary(run: Run, color: bool | None = None, s: dict[str, Any] | None = None) -> str:
    """The summary as text: colour on a terminal (or ``color=True``), plain
    otherwise. ``s``: stats(run), if already computed."""
    s = stats(run) if s is None else s
    use = _use_color(color)

    def paint(text: str, level: str) -> str:
        return f"{_COLORS[level]}{text}{_RESET}" if use else text

    level_of = _grade(s["efficiency"])[1]
    lines = []
    title = "shoal monitor" + (f": {s['command']}" if s["command"] else "")
    extra = [x for x in (s["host"], ", ".join(s["backends"])) if x]
    lines.append(paint(title, "bold") + (f"  ({'; '.join(extra)})" if extra else ""))

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<16} {value}")

    row("wall time", _seconds(s["wall_s"]))
    row("CPUs given", f"{s['cpus']} ({s['cpus_source']})")
    row("CPU efficiency", paint(f"{_meter(s['efficiency'], 30, use)} {_pct(s['efficiency']):>4}", level_of)
        + f"  {s['busy_core_s']:.4g} busy core-s ({s['busy_source']}) / "
          f"({_seconds(s['wall_s'])} x {s['cpus']} CPUs)")
    if s["measured_cpu_s"] is not None:
        row("measured CPU", f"{_meter(s['measured_efficiency'], 30, use)} {_pct(s['measured_efficiency']):>4}"
            f"  {s['measured_cpu_s']:.4g} CPU-s used by the workers (sampler)")
    if s["job_cores_busy"] is not None:
        row("cores busy", f"{s['job_cores_busy']:.2f} of the job's cores on average "
            "(sampler; every process on them)")
    share = s["worker_busy_share"]
    if share:
        if len(share) <= 16:
            row("workers", f"{s['workers']}, busy share of the wall time:")
            for w, x in enumerate(share):
                lines.append(f"    worker {w:<3} {_meter(x, 20, use)} {_pct(x):>4}")
        else:
            arr = np.asarray(share)
            row("workers", f"{len(arr)}, busy share min {_pct(arr.min())}, median "
                f"{_pct(float(np.median(arr)))}, max {_pct(arr.max())}; "
                f"{int((arr < IDLE_WORKER).sum())} under {_pct(IDLE_WORKER)}")
    if s["ranks"]:
        row("MPI ranks", ", ".join(f"rank {r['rank']}: {r['workers']} workers, {r['busy_core_s']:.4g} busy core-s"
                                   for r in s["ranks"][:8]) + (", ..." if len(s["ranks"]) > 8 else ""))
    outcomes = ", ".join(f"{k} {v:,}" for k, v in s["outcomes"].items())
    row("tasks", f"{s['tasks']:,}" + (f" ({s['attempts']:,} attempt records: {outcomes})" if outcomes else ""))
    d = s["duration_s"]
    if d["p50"] is not None:
        row("task duration", f"p50 {_seconds(d['p50'])}  p90 {_seconds(d['p90'])}  "
            f"p99 {_seconds(d['p99'])}  max {_seconds(d['max'])}  ({s['duration_source']})")
        row("overhead", f"{_pct(s['overhead_share'])} of worker time idle between tasks with the next "
            f"one queued ({_seconds(s['overhead_s'])})")
        lat = s["latency_s"]
        if lat["p50"] is not None:
            row("submit->start", f"p50 {_seconds(lat['p50'])}  p99 {_seconds(lat['p99'])} "
                "(queueing included)")
    nat = s["native"]
    if nat:
        row("native loops", f"{nat['calls']:,} calls on {nat['threads']} threads, {_seconds(nat['loop_s'])}: "
            f"threads busy {_pct(nat['busy_share'])} of that ({nat['busy_s']:.4g} core-s)")
    if s["memory_peak"]:
        mem = f"peak {_bytes(s['memory_peak'])} ({s['memory_source']})"
        if s["memory_limit"]:
            mem += f" of {_bytes(s['memory_limit'])} limit ({_pct(s['memory_share'])})"
        row("memory", mem)
    if s["gpus"]:
        for g in s["gpus"]:
            row("GPU", f"{g['name']}: {g['util_mean']:.0f}% mean, {g['util_max']:.0f}% max utilisation; "
                f"memory peak {_bytes(g['mem_peak'])} of {_bytes(g['mem_total'])}")
    else:
        row("GPU", s["gpu_note"] or "no GPU samples")
    if s["dropped"]:
        row("records", f"{s['dropped']:,} task records dropped (rings full); counters exact")
    if s["truncated"]:
        row("file", paint(f"truncated: {s['truncated']}", "warn"))
    lines.append("")
    lines.append(paint("Verdict: ", "bold") + paint(s["verdict"], s["level"]))
    for f in s["findings"]:
        if f["code"] == "too_little_data":
            continue
        lines.append("  " + paint("!" if f["level"] in ("bad", "warn") else "-", f["level"]) + " " + f["text"])
        for a in f["advice"]:
            lines.append(f"      {a}")
    return "\n".join(lines)


__all__ = ["stats", "summary"]
