"""The recording session: one C++ Sampler, the pools it watches, the meta.

``current`` is the session pools record into (None: the monitor is off).
Pools ask for a PoolRecorder once, when they start (``pool_recorder``); the
ledger and the backends call its bound C++ methods on their own paths (see
shoal/monitor/__init__.py for the data flow). Everything here runs on the
driver only: a forked child drops the session without touching it.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any

# chunk types: shoal/monitor_file.hpp
META, FUNCTIONS, WORKERS, META_UPDATE, END = 1, 2, 3, 11, 12
#: outcomes: shoal/monitor/_run.py
OK, RAISED, LOST, TIMED_OUT, CANCELLED, RETRIED = range(6)
NO_SLOT = 0xFFFF

current: "Session | None" = None
_lock = threading.Lock()


def _warn(msg: str) -> None:
    from . import MonitorWarning

    warnings.warn(msg, MonitorWarning, stacklevel=4)



def _thread_env() -> dict:
    from ..allocation import _READ_ORDER

    names = {n for order in _READ_ORDER.values() for n in order}
    return {n: os.environ[n] for n in sorted(names) if n in os.environ}

class PoolRecorder:
    """What one pool records through. submit, submit_range and frame are
    bound methods of the pool's C++ PoolLog (shoal/sampler.hpp): no Python
    frame per call."""

    def __init__(self, session: "Session", pool: int, kind: str, workers: int, shared: bool) -> None:
        s = session.sampler
        self.session = session
        self.pool = pool
        self.kind = kind
        self.segment = s.add_rings(pool, workers, shared) if workers else ""
        log = s.pool_log(pool)
        self.submit = log.submit              # (task, fn, nbytes)
        self.submit_range = log.submit_range  # (first, count, fn)
        self.frame = log.frame                # (first, count, nbytes)
        self._outcome = log.outcome
        self.fns: dict[int, tuple[Any, int]] = {}  # id(fn) -> (weakref, fn id): threads backend
        self.fn_names: dict[str, int] = {}
        self.fn_ids = itertools.count(1)
        self.task_ids = itertools.count(1)
        self.closed = False
        session.backend_seen(kind)

    def outcome(self, task: int, outcome: int, attempt: int = 0, start: int = -1,
                pid: int = 0, slot: int = NO_SLOT) -> None:
        self._outcome(task, outcome, attempt, start, pid, slot)

    def function(self, fn_id: int, name: str) -> None:
        # (the low 32 bits, as the submit records keep them: bind_monitor.cpp)
        self.session.append(FUNCTIONS, [[self.pool, fn_id & 0xFFFFFFFF, name]])

    def fn_id(self, fn: Any, args: tuple = ()) -> int:
        """The threads backend's number for fn (the processes backend has its
        own): one per name; a map chunk, run_chunk(fn, chunk), is fn's. The
        cache by id() holds fn weakly (a caller's function must die when the
        caller drops it) and is emptied when it grows past 4096 entries."""
        if fn is _run_chunk() and args:
            fn = args[0]
        entry = self.fns.get(id(fn))
        if entry is not None and entry[0]() is fn:
            return entry[1]
        name = _describe(fn)
        i = self.fn_names.get(name)
        if i is None:
            i = self.fn_names[name] = next(self.fn_ids)
            self.function(i, name)
        try:
            ref = weakref.ref(fn)
        except TypeError:  # (no weak references to it: looked up by name each time)
            return i
        if len(self.fns) > 4096:
            self.fns.clear()
        self.fns[id(fn)] = (ref, i)
        return i

    def thread_writer(self, slot: int):
        return self.session.sampler.thread_writer(self.pool, slot)

    def worker_started(self, slot: int, pid: int, tid: int = 0) -> None:
        s = self.session
        s.sampler.watch(self.pool, slot, pid, tid)
        s.append(WORKERS, [[0, self.pool, slot, pid, tid, time.monotonic_ns()]])

    def worker_ended(self, slot: int, pid: int) -> None:
        s = self.session
        s.sampler.unwatch(self.pool, slot)
        s.append(WORKERS, [[1, self.pool, slot, pid, 0, time.monotonic_ns()]])

    def close(self, slots: list | None = None) -> None:
        """The pool has stopped: its rings are drained one last time."""
        if self.closed:
            return
        self.closed = True
        if slots:
            for slot, pid in slots:
                self.worker_ended(slot, pid)
        if not self.session.stopped:
            self.session.sampler.remove_rings(self.pool)


@functools.cache
def _run_chunk() -> Any:
    from .._mapping import run_chunk

    return run_chunk


def _describe(fn: Any) -> str:
    if isinstance(fn, functools.partial):  # map chunks: partial(run_chunk, fn)
        inner = fn.args[0] if getattr(fn.func, "__name__", "") == "run_chunk" and fn.args else fn.func
        return _describe(inner)
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod else str(name)


class Session:
    def __init__(self, path: str, hz: float, ring: int | None) -> None:
        from .. import _core

        if ring is None:
            ring = int(os.environ.get("SHOAL_MONITOR_RING", "32768"))
        self.path = path
        self.cpu_ids = sorted(os.sched_getaffinity(0))
        self.sampler = _core.MonitorSampler(path, hz, self.cpu_ids, max(2, ring))
        self.hz = hz
        self.pools = itertools.count(1)
        self.stopped = False
        self.warned = False
        self.owner = os.getpid()
        self.backends: list[str] = []
        self.append(META, self._meta())
        self.sampler.start()

    def append(self, kind: int, obj: Any) -> None:
        if self.stopped or os.getpid() != self.owner:
            return
        if not self.sampler.append_json(kind, json.dumps(obj, default=str)):
            self.check()

    def check(self) -> None:
        """One warning if the file stopped taking writes (a full disk)."""
        if not self.warned and self.sampler.failed:
            self.warned = True
            _warn(f"shoal.monitor: {self.sampler.error} ({self.path}); the job goes on, "
                  f"unrecorded from here")

    def backend_seen(self, kind: str) -> None:
        if kind not in self.backends:
            self.backends.append(kind)
            self.append(META_UPDATE, {"backends": self.backends})

    def pool_recorder(self, kind: str, workers: int, shared: bool) -> PoolRecorder | None:
        if self.stopped or os.getpid() != self.owner:
            return None
        try:
            return PoolRecorder(self, next(self.pools), kind, workers, shared)
        except Exception as exc:  # noqa: BLE001 - e.g. ENOSPC in /dev/shm: unrecorded pool
            _warn(f"shoal.monitor: this pool is not recorded: {exc}")
            return None

    def _meta(self) -> dict:
        import socket

        from .. import allocation as _allocation

        try:
            alloc = _allocation.allocation()
            alloc_d = alloc.to_dict()
            cpus, mem = alloc.cpus, alloc.memory_limit_bytes
        except Exception:  # noqa: BLE001 - meta is best effort
            alloc_d, cpus, mem = None, len(self.cpu_ids), None
        try:
            from threadpoolctl import threadpool_info

            pools = threadpool_info()
        except Exception:  # noqa: BLE001 - not installed, or a library it cannot read
            pools = None
        gpus, note = list(self.sampler.gpu_names), self.sampler.gpu_note
        return {
            "version": 1,
            "start_ns": self.sampler.start_ns,
            "start_unix": time.time(),
            "command": " ".join([sys.executable, *sys.argv]),
            "argv": list(sys.argv),
            "cwd": os.getcwd(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "allocation": alloc_d,
            "cpus_given": cpus,
            "cpu_ids": self.cpu_ids,
            "memory_limit": mem,
            "thread_pools": pools,
            # the thread-count variables the user set: shoal caps the others
            # inside its workers (allocation.thread_caps)
            "thread_env": _thread_env(),
            "sample_hz": self.hz,
            "gpu_note": note,
            "gpus": gpus,
            "ring_capacity": self.sampler.ring_capacity,
        }

    def stop(self, reason: str = "") -> None:
        if self.stopped or os.getpid() != self.owner:
            return
        self.stopped = True
        end = {"end_ns": time.monotonic_ns() - self.sampler.start_ns, "reason": reason,
               "dropped": self.sampler.dropped,
               "sampler_cpu_ns": self.sampler.thread_cpu_ns, "ticks": self.sampler.ticks}
        self.sampler.stop(json.dumps(end))
        self.check()


def start(path: str, hz: float = 10.0, ring: int | None = None) -> Session | None:
    """A new session, now current (one at a time: a second replaces none and warns)."""
    global current
    with _lock:
        if current is not None and not current.stopped and current.owner == os.getpid():
            _warn(f"shoal.monitor: already recording to {current.path}; {path} is not written")
            return None
        try:
            session = Session(path, hz, ring)
        except Exception as exc:  # noqa: BLE001 - the monitor never fails the job
            _warn(f"shoal.monitor: cannot record to {path}: {exc}; the job goes on unrecorded")
            return None
        current = session
        return session


def stop(session: Session | None, reason: str = "") -> None:
    global current
    if session is None:
        return
    with _lock:
        if current is session:
            current = None
    try:
        session.stop(reason)
    except Exception as exc:  # noqa: BLE001
        _warn(f"shoal.monitor: could not finish {session.path}: {exc}")


def recorder(kind: str, workers: int, shared: bool) -> PoolRecorder | None:
    """For a starting pool: its recorder, or None when the monitor is off."""
    s = current
    if s is None:
        return None
    return s.pool_recorder(kind, workers, shared)


def start_from_env() -> None:
    """SHOAL_MONITOR=path: the whole process is recorded, until it exits.
    The variable is removed, so that the workers and child processes this
    job starts do not record over the same file."""
    path = os.environ.pop("SHOAL_MONITOR", "")
    if path and _launch_rank() == 0:  # under mpirun/srun: the driver (rank 0) records
        start(path)  # stopped at exit (below)


def _launch_rank() -> int:
    """This process's rank as the launcher numbered it (Open MPI, MPICH/PMI,
    PMIx, SLURM's srun), 0 outside a launcher."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def _in_child() -> None:
    # A forked child (a worker) never records into, nor closes, the driver's
    # session: its Sampler thread did not come along. The object is leaked on
    # purpose (destroying it would join a thread this process does not have).
    global current
    if current is not None:
        _orphans.append(current)
    current = None


_orphans: list = []
os.register_at_fork(after_in_child=_in_child)
# Registered on first import, before any pool's exit hook: it runs after
# them, so the pools' last tasks are in the file.
atexit.register(lambda: stop(current))
