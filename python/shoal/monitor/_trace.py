"""A Run as gzipped Trace Event JSON, for ui.perfetto.dev and chrome://tracing.

    pid 1  "shoal: system"          C: cores busy, workers' CPU, runnable threads,
                                       memory, /dev/shm, GPU utilisation
    pid 2  "shoal: cores"           C: one "core N" counter per core (busy fraction)
    pid 3  "shoal: native loops"    a thread per native thread: an X slice per
                                       parallel_for/parallel_reduce call, args busy_ns
    pid 10+r "shoal: workers, rank r"  one thread per worker: an X slice per task
                                       attempt, args task/fn/outcome/bytes_in/bytes_out

Times are microseconds since the monitor's start (the file's start_ns); task
slices are on a 100 ns grid, 1 us beyond 250k slices (gzip pays for every
random digit: 1 M tasks make 11.5-17 MB, by how much their byte counts vary).
Slices on one worker never partially overlap: they are sorted, and a start
that clock noise put before the previous slice's end is moved to that end
(``args.clamped_ns`` says by how much). The JSON is streamed into gzip in
chunks, never built as one list of a million dicts; each event after the
first starts with ",\n".
"""

from __future__ import annotations

import gzip
import json
import math
from typing import IO, Any

import numpy as np

from . import _analysis
from ._run import OUTCOMES, Run

SYSTEM_PID, CORES_PID, NATIVE_PID, WORKERS_PID = 1, 2, 3, 10
MAX_CORE_EVENTS = 400_000   # per-core counters are binned in time beyond this
MAX_SERIES_EVENTS = 20_000  # per system counter
CHUNK = 50_000
TICK_NS = 100             # task slices: times on a 100 ns grid ...
COARSE_TICK_NS = 1000     # ... or on a 1 us grid beyond COARSE_TASKS slices
COARSE_TASKS = 250_000


def _clamped_starts(sched: _analysis.Schedule) -> np.ndarray:
    """Each start moved to at least the latest end before it on its worker."""
    start = sched.start.copy()
    b = sched.bounds
    for w in range(sched.workers):
        lo, hi = b[w], b[w + 1]
        if hi - lo < 2:
            continue
        prev_end = np.maximum.accumulate(sched.end[lo:hi - 1])
        start[lo + 1:hi] = np.maximum(start[lo + 1:hi], prev_end)
    return start


def _meta(out: IO[bytes], name: str, pid: int, args: dict, tid: int | None = None) -> None:
    ev: dict[str, Any] = {"name": name, "ph": "M", "pid": pid, "args": args}
    if tid is not None:
        ev["tid"] = tid
    out.write(b",\n" + json.dumps(ev, separators=(",", ":")).encode())


def _counter(out: IO[bytes], name: str, pid: int, t_ns: np.ndarray, series: dict[str, np.ndarray],
             limit: int = MAX_SERIES_EVENTS) -> int:
    """One C event per sample (every k-th beyond ``limit``); returns how many."""
    step = max(1, int(math.ceil(len(t_ns) / limit)))
    keys = list(series)
    t = (t_ns[::step] / 1e3).tolist()
    cols = [np.asarray(series[k], float)[::step].tolist() for k in keys]
    enc = json.dumps(name)
    parts = []
    for i, ts in enumerate(t):
        args = ",".join(f'"{k}":{_num(c[i])}' for k, c in zip(keys, cols))
        parts.append(f',\n{{"name":{enc},"ph":"C","ts":{ts:.3f},"pid":{pid},"args":{{{args}}}}}')
    out.write("".join(parts).encode())
    return len(t)


def _num(x: float) -> str:
    return "0" if not math.isfinite(x) else (str(int(x)) if x == int(x) else f"{x:.4g}")


def _worker_rank(run: Run, n: int) -> np.ndarray:
    rank = np.zeros(n, np.int64)
    if len(run.workers):
        w = run.workers
        keep = w["worker"] < n
        rank[w["worker"][keep]] = w["rank"][keep]
    return rank


def write_trace(run: Run, path: str, sched: _analysis.Schedule | None = None,
                compresslevel: int = 6) -> str:
    """Write ``path`` (gzipped JSON; name it .json.gz); returns the path."""
    sched = _analysis.schedule(run) if sched is None else sched
    nw = max(sched.workers, 0)
    rank = _worker_rank(run, nw)
    with gzip.open(path, "wb", compresslevel=compresslevel) as out:
        other = {"tool": "shoal monitor", "command": run.meta.get("command"), "host": run.meta.get("host"),
                 "start_unix": run.meta.get("start_unix"), "cpus_given": run.meta.get("cpus_given"),
                 "dropped_records": int(run.dropped), "truncated": run.truncated or ""}
        # every event after the first one starts with ",\n"
        out.write(b'{"displayTimeUnit":"ms","otherData":' + json.dumps(other).encode() + b',"traceEvents":[\n'
                  + json.dumps({"name": "process_name", "ph": "M", "pid": SYSTEM_PID,
                                "args": {"name": "shoal: system"}}, separators=(",", ":")).encode())
        _meta(out, "process_sort_index", SYSTEM_PID, {"sort_index": 0})
        _meta(out, "process_name", CORES_PID, {"name": "shoal: cores"})
        _meta(out, "process_sort_index", CORES_PID, {"sort_index": 1})
        ranks = sorted(set(rank.tolist())) or [0]
        for r in ranks:
            label = "shoal: workers" + (f", rank {r}" if len(ranks) > 1 else "")
            _meta(out, "process_name", WORKERS_PID + r, {"name": label})
            _meta(out, "process_sort_index", WORKERS_PID + r, {"sort_index": 3 + r})
        pids = {}
        if len(run.workers):
            pids = dict(zip(run.workers["worker"].tolist(), run.workers["pid"].tolist()))
        for w in range(nw):
            os_pid = pids.get(w)
            label = f"worker {w}" + (f" (pid {os_pid})" if os_pid else "")
            _meta(out, "thread_name", WORKERS_PID + int(rank[w]), {"name": label}, tid=w + 1)
            _meta(out, "thread_sort_index", WORKERS_PID + int(rank[w]), {"sort_index": w}, tid=w + 1)
        _write_tasks(out, run, sched, rank)
        _write_native(out, run)
        _write_counters(out, run)
        out.write(b"\n]}\n")
    return path


def _write_tasks(out: IO[bytes], run: Run, sched: _analysis.Schedule, rank: np.ndarray) -> None:
    n = len(sched.worker)
    if n == 0:
        return
    # on a 100 ns grid (1 us beyond 250k slices): enough for any viewer, and
    # fewer random digits an event for gzip; rounding both ends keeps the
    # clamped slices in order
    start_ns = _clamped_starts(sched)
    clamped = start_ns - sched.start
    tick = TICK_NS if n <= COARSE_TASKS else COARSE_TICK_NS
    start = np.round(start_ns / tick).astype(np.int64)
    end = np.maximum(np.round(sched.end / tick).astype(np.int64), start)
    idx = sched.index
    t = run.tasks
    fns = [json.dumps(str(f)) for f in run.functions]
    outcomes = [json.dumps(o) for o in OUTCOMES]
    fn_idx = np.take(np.ascontiguousarray(t["fn"]), idx).astype(np.int64)
    if len(fns) == 0 or fn_idx.max() >= len(fns):
        fns = fns + [json.dumps(f"fn {k}") for k in range(len(fns), int(fn_idx.max()) + 1)]
    task_id = np.ascontiguousarray(t["task"])
    outcome = np.ascontiguousarray(t["outcome"])
    attempt = np.ascontiguousarray(t["attempt"])
    b_in, b_out = np.ascontiguousarray(t["bytes_in"]), np.ascontiguousarray(t["bytes_out"])
    fmt = (',\n{"name":%s,"ph":"X","ts":%s,"dur":%s,"pid":%d,"tid":%d,'
           '"args":{"task":%d,"fn":%s,"outcome":%s,"bytes_in":%d,"bytes_out":%d%s}}')
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        rows = idx[lo:hi]
        w = sched.worker[lo:hi].astype(np.int64)
        names = [fns[k] for k in fn_idx[lo:hi].tolist()]
        extra = [(f',"attempt":{a}' if a else "") + (f',"clamped_ns":{c}' if c > 0 else "")
                 for a, c in zip(np.take(attempt, rows).tolist(), clamped[lo:hi].tolist())]
        cols = (
            names,
            _us(start[lo:hi], tick),
            _us(end[lo:hi] - start[lo:hi], tick),
            (WORKERS_PID + rank[w]).tolist(),
            (w + 1).tolist(),
            np.take(task_id, rows).tolist(),
            names,
            [outcomes[k] for k in np.take(outcome, rows).tolist()],
            np.take(b_in, rows).tolist(),
            np.take(b_out, rows).tolist(),
            extra,
        )
        out.write("".join([fmt % row for row in zip(*cols)]).encode())


def _us(ticks: np.ndarray, tick: int = TICK_NS) -> list[str]:
    """Ticks of 100 ns (one decimal) or 1 us (none) as microseconds, written exactly."""
    if tick == 1000:
        return [str(x) for x in ticks.tolist()]
    whole, tenth = np.divmod(ticks, 10)
    return [f"{a}.{b}" if b else str(a) for a, b in zip(whole.tolist(), tenth.tolist())]


def _write_native(out: IO[bytes], run: Run) -> None:
    """parallel_for / parallel_reduce: a thread per native thread, a slice per
    call it took part in (clamped like the tasks), args busy_ns."""
    nat = run.native
    if len(nat) == 0:
        return
    _meta(out, "process_name", NATIVE_PID, {"name": "shoal: native loops"})
    _meta(out, "process_sort_index", NATIVE_PID, {"sort_index": 2})
    order = np.lexsort((nat["start"], nat["thread"]))
    thread = nat["thread"][order].astype(np.int64)
    start = nat["start"][order].astype(np.int64)
    end = np.maximum(nat["end"][order].astype(np.int64), start)
    bounds = np.flatnonzero(np.r_[True, thread[1:] != thread[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi - lo > 1:
            start[lo + 1:hi] = np.maximum(start[lo + 1:hi], np.maximum.accumulate(end[lo:hi - 1]))
    end = np.maximum(end, start)
    for th in np.unique(thread).tolist():
        _meta(out, "thread_name", NATIVE_PID, {"name": f"native thread {th}"}, tid=th + 1)
    s_t = np.round(start / TICK_NS).astype(np.int64)
    e_t = np.round(end / TICK_NS).astype(np.int64)
    parts = []
    for call, th, ts, du, busy in zip(nat["call"][order].tolist(), thread.tolist(), _us(s_t),
                                      _us(e_t - s_t), nat["busy_ns"][order].tolist()):
        parts.append(f',\n{{"name":"loop {call}","ph":"X","ts":{ts},"dur":{du},"pid":{NATIVE_PID},'
                     f'"tid":{th + 1},"args":{{"call":{call},"busy_ns":{busy}}}}}')
    out.write("".join(parts).encode())


def _write_counters(out: IO[bytes], run: Run) -> None:
    if run.core_busy.size:
        _counter(out, "cores busy", SYSTEM_PID, run.core_t, {"cores": run.core_busy.sum(axis=1)})
        cores = run.core_busy.shape[1]
        nbins = max(1, MAX_CORE_EVENTS // max(1, cores))
        edges, mean, ids = _analysis.core_bins(run, nbins)
        t = edges[:-1].astype(np.int64)
        for c, cid in enumerate(ids):
            _counter(out, f"core {cid}", CORES_PID, t, {"busy": np.nan_to_num(mean[c])}, limit=nbins)
    ws = run.worker_samples
    if len(ws) > 1:
        times, which = np.unique(ws["t"], return_inverse=True)
        order = np.lexsort((ws["t"], ws["worker"]))
        cpu = ws["cpu_ns"][order].astype(np.float64)
        w = ws["worker"][order]
        tt = ws["t"][order].astype(np.float64)
        same = np.r_[False, w[1:] == w[:-1]]
        rate = np.where(same, np.diff(cpu, prepend=0) / np.maximum(np.diff(tt, prepend=0), 1), 0)
        total = np.bincount(which[order], weights=rate, minlength=len(times))
        rss = np.bincount(which, weights=ws["rss"].astype(float), minlength=len(times))
        _counter(out, "workers' CPU", SYSTEM_PID, times, {"cpus": total})
        _counter(out, "workers' RSS", SYSTEM_PID, times, {"bytes": rss})
    ss = run.system_samples
    if len(ss):
        _counter(out, "runnable threads (node)", SYSTEM_PID, ss["t"], {"procs_running": ss["procs_running"]})
        if int(ss["mem_current"].max()) > 0:
            _counter(out, "memory (cgroup)", SYSTEM_PID, ss["t"], {"bytes": ss["mem_current"]})
        if int(ss["shm_bytes"].max()) > 0:
            _counter(out, "shoal /dev/shm", SYSTEM_PID, ss["t"], {"bytes": ss["shm_bytes"]})
    gs = run.gpu_samples
    for g in np.unique(gs["gpu"]) if len(gs) else []:
        rows = gs[gs["gpu"] == g]
        _counter(out, f"GPU {int(g)}", SYSTEM_PID, rows["t"], {"util": rows["util"], "mem_used": rows["mem_used"]})


__all__ = ["write_trace"]
