"""The reader of monitor files: chunks (parsed and checked in C++,
shoal/monitor_file.hpp) joined into one Run (shoal/monitor/_run.py).

What each side wrote, joined here by (pool, task id, attempt):

  worker (TaskEvent)    task, start, end, bytes out, ok/raised, pool, slot, pid
  driver (DriverEvent)  submit: task, time, bytes in, fn     range: count map items at once
                        frame: bytes of a Batch frame         outcome: lost, timed out,
                                                              cancelled, retried (+ start)

A task's id in the Run is (pool - 1) << 48 | its pool's id (its low 48 bits;
the mpi backend's ids carry an epoch from bit 40): the first pool's tasks
keep their own ids. A task that was submitted and never ended (the job
died first: the file has no end chunk) is a LOST row with end -1.
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import MonitorFileError
from ._run import (COUNTER_DTYPE, GPU_SAMPLE_DTYPE, LOST, NATIVE_DTYPE, RETRIED,
                   SYSTEM_SAMPLE_DTYPE, TASK_DTYPE, WORKER_DTYPE, WORKER_SAMPLE_DTYPE, Run)

# chunk types: shoal/monitor_file.hpp
(META, FUNCTIONS, WORKERS, TASK_EVENTS, DRIVER_EVENTS, COUNTERS, CORE_SAMPLES, WORKER_SAMPLES,
 SYSTEM_SAMPLES, NATIVE, META_UPDATE, END, GPU_SAMPLES) = range(1, 14)

#: shoal::TaskEvent
TASK_EVENT = np.dtype([("task", "<u8"), ("start", "<i8"), ("end", "<i8"), ("bytes_out", "<u8"),
                       ("pid", "<u4"), ("pool", "<u2"), ("slot", "<u2"), ("outcome", "u1"),
                       ("pad", "V7")])
#: shoal::DriverEvent
DRIVER_EVENT = np.dtype([("task", "<u8"), ("t", "<i8"), ("aux", "<i8"), ("a", "<u4"),
                         ("pid", "<u4"), ("pool", "<u2"), ("slot", "<u2"), ("kind", "u1"),
                         ("outcome", "u1"), ("attempt", "u1"), ("pad", "V1")])
SUBMIT, RANGE, FRAME, OUTCOME = 1, 2, 3, 4
#: shoal::CounterRecord
COUNTER_RECORD = np.dtype([("pool", "<u2"), ("slot", "<u2"), ("pid", "<u4"), ("tasks", "<u8"),
                           ("busy_ns", "<u8"), ("dropped", "<u8"), ("hist", "<u8", (40,))])
#: shoal::WorkerSampleRecord
WORKER_SAMPLE_RECORD = np.dtype([("t", "<i8"), ("pool", "<u2"), ("slot", "<u2"), ("pid", "<u4"),
                                 ("cpu_ns", "<u8"), ("rss", "<u8")])
assert TASK_EVENT.itemsize == 48 and DRIVER_EVENT.itemsize == 40
assert COUNTER_RECORD.itemsize == 352 and WORKER_SAMPLE_RECORD.itemsize == 32
assert SYSTEM_SAMPLE_DTYPE.itemsize == 36 and NATIVE_DTYPE.itemsize == 32
assert GPU_SAMPLE_DTYPE.itemsize == 32
NO_WORKER = 0xFFFFFFFF


def _parse(data: bytes) -> tuple[int, list, str]:
    from .. import _core

    try:
        return _core.parse_monitor_file(data)
    except _core.MonitorFileError as exc:
        raise MonitorFileError(str(exc)) from None


def load(path: str | os.PathLike) -> Run:
    path = os.fspath(path)
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return build_run(data)
    except MonitorFileError as exc:
        raise MonitorFileError(f"{path}: {exc}") from None


def _records(parts: list, dtype: np.dtype) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype)
    return np.frombuffer(b"".join(parts), dtype)


_LOW48 = np.uint64((1 << 48) - 1)


def _key(pool: np.ndarray, task: np.ndarray) -> np.ndarray:
    return ((pool.astype(np.uint64) - np.uint64(1)) << np.uint64(48)) | \
        (task.astype(np.uint64) & _LOW48)


def _wkey(pool, slot, pid) -> np.ndarray:
    return (np.asarray(pool, np.uint64) << np.uint64(48)) | \
        (np.asarray(slot, np.uint64) << np.uint64(32)) | np.asarray(pid, np.uint64)


def build_run(data: bytes) -> Run:
    version, chunks, truncated = _parse(data)
    by: dict[int, list] = {}
    for kind, payload in chunks:
        by.setdefault(kind, []).append(payload)
    if not by.get(META):
        raise MonitorFileError("a shoal monitor file without its meta chunk")
    try:
        meta = json.loads(by[META][0])
        for upd in by.get(META_UPDATE, []):
            meta.update(json.loads(upd))
        end = json.loads(by[END][-1]) if by.get(END) else None
        fn_rows = [row for p in by.get(FUNCTIONS, []) for row in json.loads(p)]
        worker_rows = [row for p in by.get(WORKERS, []) for row in json.loads(p)]
    except (ValueError, KeyError) as exc:
        raise MonitorFileError(f"a damaged JSON chunk: {exc}") from None
    t0 = int(meta["start_ns"])
    meta.setdefault("backends", [])
    for k in ("end_ns", "gpu_note", "gpus"):
        meta.setdefault(k, None)
    if end is not None:
        meta["end_ns"] = end.get("end_ns")
        meta["sampler_cpu_ns"] = end.get("sampler_cpu_ns")
    elif not truncated:
        truncated = "no end record: the job ended (killed or crashed) before the monitor stopped"

    def rel(t: np.ndarray) -> np.ndarray:
        t = t.astype(np.int64)
        return np.where(t >= 0, t - t0, -1)

    # ---- functions
    functions: list[str] = []
    fn_index: dict[tuple[int, int], int] = {}
    for pool, fn_id, name in fn_rows:
        if (pool, fn_id) not in fn_index:
            fn_index[(pool, fn_id)] = len(functions)
            functions.append(name)

    # ---- workers: each start is a row; an end closes the newest open row of its key
    wlist: list[list] = []
    open_rows: dict[tuple, int] = {}
    for ev, pool, slot, pid, tid, t in worker_rows:
        k = (pool, slot, pid)
        if ev == 0:
            open_rows[k] = len(wlist)
            wlist.append([len(wlist), 0, pid, tid, t - t0, -1, pool, slot])
        elif k in open_rows:
            wlist[open_rows.pop(k)][5] = t - t0
    workers = np.zeros(len(wlist), WORKER_DTYPE)
    for i, row in enumerate(wlist):
        workers[i] = tuple(row[:6])
    wkeys = {}
    for row in wlist:
        wkeys[int(_wkey(row[6], row[7], row[2]))] = row[0]

    def worker_of(pool, slot, pid) -> np.ndarray:
        keys = _wkey(pool, slot, pid)
        if len(keys) == 0:
            return np.empty(0, np.uint32)
        uniq, inv = np.unique(keys, return_inverse=True)
        look = np.array([wkeys.get(int(u), NO_WORKER) for u in uniq], np.uint32)
        return look[inv]

    # ---- tasks
    te = _records(by.get(TASK_EVENTS, []), TASK_EVENT)
    de = _records(by.get(DRIVER_EVENTS, []), DRIVER_EVENT)
    tasks = _join_tasks(te, de, fn_index, worker_of, rel, end is not None)

    # ---- counters: the last snapshot of each (pool, slot, pid), less what the
    # slot's previous worker had counted (a slot's counters run on across workers)
    cr = _records(by.get(COUNTERS, []), COUNTER_RECORD)
    counters, dropped_seen = _counters(cr, worker_of)

    # ---- samples
    ws = _records(by.get(WORKER_SAMPLES, []), WORKER_SAMPLE_RECORD)
    worker_samples = np.zeros(len(ws), WORKER_SAMPLE_DTYPE)
    if len(ws):
        worker_samples["t"] = rel(ws["t"])
        worker_samples["worker"] = worker_of(ws["pool"], ws["slot"], ws["pid"])
        worker_samples["cpu_ns"] = ws["cpu_ns"]
        worker_samples["rss"] = ws["rss"]
    system = _records(by.get(SYSTEM_SAMPLES, []), SYSTEM_SAMPLE_DTYPE).copy()
    if len(system):
        system["t"] = rel(system["t"])
    core_ids = list(meta.get("cpu_ids") or [])
    core_t = np.empty(0, "<i8")
    core_busy = np.empty((0, len(core_ids)), "<f4")
    if by.get(CORE_SAMPLES) and core_ids:
        rec = np.dtype([("t", "<i8"), ("busy", "<f4", (len(core_ids),))])
        cs = _records(by[CORE_SAMPLES], rec)
        core_t = rel(cs["t"])
        core_busy = np.ascontiguousarray(cs["busy"], "<f4")
    gpu = _records(by.get(GPU_SAMPLES, []), GPU_SAMPLE_DTYPE).copy()
    if len(gpu):
        gpu["t"] = rel(gpu["t"])
    native = _records(by.get(NATIVE, []), NATIVE_DTYPE).copy()
    if len(native):
        native["start"] = rel(native["start"])
        native["end"] = rel(native["end"])
    dropped = int(end["dropped"]) if end is not None else dropped_seen
    return Run(meta=meta, tasks=tasks, functions=functions, workers=workers, counters=counters,
               core_t=core_t, core_busy=core_busy, core_ids=core_ids,
               worker_samples=worker_samples, system_samples=system, gpu_samples=gpu,
               native=native,
               dropped=dropped, truncated=truncated)


def _join_tasks(te, de, fn_index, worker_of, rel, ended: bool) -> np.ndarray:
    # Submits: one per submit(), or a range of map items, expanded here.
    sub = de[de["kind"] == SUBMIT]
    rng = de[de["kind"] == RANGE]
    counts = np.maximum(rng["aux"], 0).astype(np.int64)
    rep = np.repeat(np.arange(len(rng)), counts)
    offs = np.arange(len(rep), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    s_key = np.concatenate([_key(sub["pool"], sub["task"]),
                            _key(rng["pool"][rep], rng["task"][rep] + offs.astype(np.uint64))])
    s_t = np.concatenate([sub["t"], rng["t"][rep]])
    s_in = np.concatenate([np.maximum(sub["aux"], 0), np.zeros(len(rep), np.int64)]).astype(np.uint64)
    s_pool = np.concatenate([sub["pool"], rng["pool"][rep]])
    s_fn = np.concatenate([sub["a"], rng["a"][rep]])
    order = np.argsort(s_key, kind="stable")
    s_key, s_t, s_in, s_pool, s_fn = (a[order] for a in (s_key, s_t, s_in, s_pool, s_fn))
    # Batch frames: each item gets its share of the frame's bytes.
    fr = de[de["kind"] == FRAME]
    if len(fr) and len(s_key):
        n = np.maximum(fr["a"].astype(np.int64), 1)
        rep = np.repeat(np.arange(len(fr)), n)
        offs = np.arange(len(rep), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        f_key = _key(fr["pool"][rep], fr["task"][rep] + offs.astype(np.uint64))
        share = (np.maximum(fr["aux"], 0) // n)[rep].astype(np.uint64)
        pos = np.searchsorted(s_key, f_key)
        ok = (pos < len(s_key))
        ok[ok] &= s_key[pos[ok]] == f_key[ok]
        s_in[pos[ok]] = share[ok]

    # Rows: what the workers reported, then what only the driver knows.
    oc = de[de["kind"] == OUTCOME]
    w_key = _key(te["pool"], te["task"])
    o_key = _key(oc["pool"], oc["task"])
    retried = oc["outcome"] == RETRIED
    # A worker row is its task's last attempt: after every retry of it.
    r_keys, r_counts = np.unique(o_key[retried], return_counts=True)
    attempt_w = np.zeros(len(te), np.uint8)
    if len(r_keys):
        pos = np.minimum(np.searchsorted(r_keys, w_key), len(r_keys) - 1)
        hit = r_keys[pos] == w_key
        attempt_w[hit] = np.minimum(r_counts[pos[hit]], 255)
    rows_w = np.zeros(len(te), TASK_DTYPE)
    rows_w["task"] = w_key
    rows_w["start"] = te["start"]
    rows_w["end"] = te["end"]
    rows_w["worker"] = worker_of(te["pool"], te["slot"], te["pid"])
    rows_w["bytes_out"] = te["bytes_out"]
    rows_w["outcome"] = te["outcome"]
    rows_w["attempt"] = attempt_w
    # The driver's verdict on an attempt a worker also reported (a task
    # cancelled while queued that ran anyway) wins over the worker's.
    final = oc[~retried]
    f_key = o_key[~retried]
    extra = np.ones(len(final), bool)
    if len(final) and len(rows_w):
        wo = np.argsort(w_key, kind="stable")
        pos = np.minimum(np.searchsorted(w_key[wo], f_key), len(wo) - 1)
        hit = w_key[wo][pos] == f_key
        rows_w["outcome"][wo[pos[hit]]] = final["outcome"][hit]
        extra = ~hit
    drv = np.concatenate([oc[retried], final[extra]])
    rows_d = np.zeros(len(drv), TASK_DTYPE)
    rows_d["task"] = _key(drv["pool"], drv["task"])
    rows_d["start"] = drv["aux"]
    rows_d["end"] = drv["t"]
    rows_d["outcome"] = drv["outcome"]
    rows_d["attempt"] = drv["attempt"]
    has_worker = drv["pid"] != 0
    rows_d["worker"] = NO_WORKER
    if has_worker.any():
        rows_d["worker"][has_worker] = worker_of(drv["pool"][has_worker], drv["slot"][has_worker],
                                                 drv["pid"][has_worker])
    rows = np.concatenate([rows_w, rows_d])
    # Submitted tasks that never ended, in a run that did not end either (the
    # job died with them). In a run that ended, the ledger recorded every
    # task the workers did not (lost, cancelled, ...): a task with no row
    # there is one whose worker record was dropped (counted in Run.dropped).
    seen = np.unique(rows["task"])
    missing = s_key[~np.isin(s_key, seen)] if len(s_key) and not ended else s_key[:0]
    rows_m = np.zeros(len(missing), TASK_DTYPE)
    rows_m["task"] = missing
    rows_m["start"] = -1
    rows_m["end"] = -1
    rows_m["worker"] = NO_WORKER
    rows_m["outcome"] = LOST
    rows = np.concatenate([rows, rows_m])
    # Submit time, bytes in and function from the submits.
    rows["submit"] = -1
    if len(s_key) and len(rows):
        pos = np.minimum(np.searchsorted(s_key, rows["task"]), len(s_key) - 1)
        hit = s_key[pos] == rows["task"]
        rows["submit"][hit] = s_t[pos[hit]]
        rows["bytes_in"][hit] = s_in[pos[hit]]
        fns = _fn_lookup(s_pool, s_fn, fn_index)
        rows["fn"][hit] = fns[pos[hit]]
        rows["fn"][~hit] = NO_WORKER
    rows["start"] = rel(rows["start"])
    rows["end"] = rel(rows["end"])
    rows["submit"] = rel(rows["submit"])
    order = np.lexsort((rows["attempt"], rows["task"]))
    return rows[order]


def _fn_lookup(pools, fns, fn_index) -> np.ndarray:
    keys = (pools.astype(np.uint64) << np.uint64(32)) | fns.astype(np.uint64)
    uniq, inv = np.unique(keys, return_inverse=True)
    look = np.array([fn_index.get((int(u) >> 32, int(u) & 0xFFFFFFFF), NO_WORKER) for u in uniq],
                    np.uint32)
    return look[inv]


def _counters(cr: np.ndarray, worker_of) -> tuple[np.ndarray, int]:
    """Per worker: its slot's last snapshot while it produced, less the last
    snapshot of the slot's previous worker (a slot's counters run on across
    the workers it has had). Also the drops: the sum of every slot's last."""
    out = np.zeros(0, COUNTER_DTYPE)
    if len(cr) == 0:
        return out, 0
    slot_key = (cr["pool"].astype(np.uint64) << np.uint64(16)) | cr["slot"].astype(np.uint64)
    order = np.argsort(slot_key, kind="stable")  # file order within each slot
    c = cr[order]
    sk = slot_key[order]
    pid = c["pid"]
    # segments: runs of one (slot, pid); the last row of each is its total
    last = np.ones(len(c), bool)
    last[:-1] = (sk[1:] != sk[:-1]) | (pid[1:] != pid[:-1])
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1])
    # the previous segment's total, where it is of the same slot
    prev = ends - (ends - starts) - 1  # the row before the segment's first
    same = (starts > 0)
    same[same] = sk[prev[same]] == sk[starts[same]]
    seg = c[ends]
    out = np.zeros(len(ends), COUNTER_DTYPE)
    out["worker"] = worker_of(seg["pool"], seg["slot"], seg["pid"])
    out["tasks"] = seg["tasks"]
    out["busy_ns"] = seg["busy_ns"]
    out["hist"] = seg["hist"]
    base = c[prev[same]]
    out["tasks"][same] -= base["tasks"]
    out["busy_ns"][same] -= base["busy_ns"]
    out["hist"][same] -= base["hist"]
    slot_last = np.ones(len(c), bool)
    slot_last[:-1] = sk[1:] != sk[:-1]
    return out, int(c["dropped"][slot_last].sum())
