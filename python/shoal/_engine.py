"""The task ledger: what a pool knows about its tasks, whatever carries them.

A transport (python/shoal/_backend_processes.py: shared-memory rings; the
mpi backend: MPI messages) subclasses Engine. The ledger owns the records
(_Task, _MapJob, _Slot, ProcessFuture), submit and placement, the backlog,
maps, collection passes, completion, losses and retries, time limits,
cancel, break and shutdown. It reaches the transport through two things:

``self.chan``, a channel with PoolChannel's verbs (shoal/pool_channel.hpp),
one task ring and one result ring per worker slot, frames (task_id, kind,
flags, bytes) as in shoal/frame.hpp::

  push_tasks(slot, frames, start=0) -> index of the first frame not pushed
  push_task(slot, tid, kind, flags, data) -> bool        (one frame, if it fits)
  drain_by_slot() -> [(slot, [frame, ...])]               (every result waiting)
  drain_slot(slot) -> [frame, ...]
  doorbell() -> int; ring_doorbell(); wait_driver(seen, timeout_s, spin_us)
  pick_slot(max_queued, max_task_ns) -> i (awake, short tasks) or -1 - least loaded
  queued(slot), task_ns(slot), slot_state(slot) -> (current task id or 0, start ns)
  reset_slot(slot); set_pid(slot, pid); shutdown(); max_payload

and these methods, which Engine leaves abstract (each called per pass, per
oversize frame or per worker event, never per task)::

  _take_exits()            -> [(slot, pid, exit code, signal)]: workers gone
                              since the last call (lock held, once per pass)
  _start_worker(s)         a fresh worker on slot s (its bookkeeping reset
                              with _reset_slot first); sets s.pid. Lock held
  _kill(pid)               end a worker now (time limit, cancel_running); its
                              exit comes back through _take_exits
  _indirect(data)          -> (ref, keep): a frame payload over self.limit sent
                              by reference; keep stays alive with the task
  _load_indirect(ref)      -> bytes of a result frame flagged INDIRECT
  _sweep_dead(pids)        what dead workers left behind (once per pass)
  _write_cancel_mark(upto, exempt)  shutdown(cancel_futures=True): workers
                              skip tasks below upto not started yet, except
                              exempt[slot] (see Engine._next_to_start)
  _stop_workers(grace)     close(): workers leave (grace s), then are killed
  _release_transport()     close(): last, lock held: drop what holds memory

Data flow of one task (driver = the user's process)::

  submit(fn, args) / map(fn, items)
    │ fn pickled once per pool (cloudpickle for __main__/lambdas); each worker
    │ gets it once as a FunctionDef frame, then tasks name it by id
    v
  placement: least-loaded worker slot (_call_slot, _place) ── push frames
    │ (Call, or Batch = many tasks in one frame) through chan; a full slot
    │ or ring: the backlog deque, PENDING (cancellable), refilled each pass
    v
  worker (transport): runs each task, marks it current first
    │ (slot_state), sends one Result/Failure frame per task
    v
  run_pass (any driver thread: the one blocked in Future.result()/map, else
    │ the collector thread): take exits, drain every result ring, match
    │ frames to tasks under the lock; unpickle and complete Futures / map
    │ slots outside it
    v
  Future.set_result / map result list

  A worker lost (_take_exits): the task it was running (slot_state) fails
  with WorkerLost (or TaskTimeout / cancelled when the driver killed it on
  purpose), or runs again if retries remain; its other queued tasks go back
  to the backlog untouched; a replacement starts on the same slot
  (_start_worker). The driver keeps every task until its result arrives.

Locking: self.lock guards every table (tasks, slots, backlog, fn cache) and
the channel's single-producer/single-consumer roles on the driver side.
Futures are completed outside it (their callbacks may submit).

This module imports no _backend_* module.
"""

from __future__ import annotations

import functools
import itertools
import os
import pickle
import signal as _signal
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict, deque
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import (CANCELLED as _CANCELLED,
                                      CANCELLED_AND_NOTIFIED as _CANCELLED_NOTIFIED,
                                      FINISHED as _FINISHED, PENDING as _F_PENDING,
                                      RUNNING as _RUNNING)
from typing import Any, Callable, Iterable, Iterator

from . import _serialize
from ._backend import Backend
from ._mapping import time_left
from ._errors import (BrokenPool, RemoteTraceback, SerializationError, TaskTimeout,
                      WorkerLost, serialization_error)


# Frame kinds and flags: shoal/frame.hpp (same numbers in _worker.py).
FUNCTION_DEF, CALL, BATCH, RESULT, FAILURE, CONTROL = 1, 2, 3, 4, 5, 6
INDIRECT = 1

_PENDING = object()
#: a finished Call's data: its pickled arguments are dropped with the task,
#: not kept by the Future the caller holds (b"", not None: None marks a map item)
_NO_DATA = b""
_SCALARS = frozenset({int, float, bool, str, bytes, complex, type(None)})
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
_OOB_MARKER = _serialize._OOB_MARKER
_FN_CACHE_SIZE = 256

#: how long a thread waiting for a result spins before sleeping on the futex
SPIN_US = float(os.environ.get("SHOAL_DRIVER_SPIN_US", "50"))
#: Call frames (submit/apply tasks) queued per worker (on its ring, not
#: taken yet); the rest wait in the driver's backlog with PENDING futures,
#: so that Future.cancel() and shutdown(cancel_futures=True) can still stop
#: them (CPython's EXTRA_QUEUED_CALLS idea), and go to whichever worker
#: frees up first. How many: about QUEUE_NS of the worker's time by its
#: average task time (PoolChannel::set_current), at least 1 and at most
#: CALL_DEPTH, or CALL_DEPTH_HOT for a function whose tasks have run short
#: (a stream of short tasks: 8 would starve the worker between the driver's
#: refills). CALL_DEPTH while the worker's average is not known yet. Tasks
#: of 1 ms or more: one queued behind the running one, as in CPython.
CALL_DEPTH = max(1, int(os.environ.get("SHOAL_CALL_DEPTH", "8")))
CALL_DEPTH_HOT = max(CALL_DEPTH, int(os.environ.get("SHOAL_CALL_DEPTH_HOT", "64")))
QUEUE_NS = 1_000_000
#: submit() gives a task of a function whose tasks have run short to the
#: first worker that is awake (running or spinning) rather than to an idle
#: one, which may be asleep, when the awake one's tasks take under
#: AWAKE_TASK_NS each (as the worker measures them:
#: PoolChannel::set_current), it has at most AWAKE_QUEUE frames not taken
#: yet, and its current task, if any, has run at most twice its average.
#: Waking a sleeping worker costs the driver a futex wake, tens of
#: microseconds on a virtual machine: more than a few short tasks queued
#: behind an awake worker wait. While one worker keeps up with the driver,
#: the others sleep and leave their cores to it. Otherwise the least loaded
#: worker gets it: by frames not taken + its running task for a function
#: seen to run short, by outstanding tasks for any other.
AWAKE_TASK_NS = 20_000
AWAKE_QUEUE = min(4, CALL_DEPTH - 1)
#: Map Batch frames in flight per worker. The rest wait in the backlog and
#: go to whichever worker frees up first: a worker slowed down (a busy
#: neighbour on a shared machine, costlier items) then gets fewer items
#: instead of a fixed share. How many, from the worker's pace (seconds per
#: item while it had work queued): frames of 20 ms or more go one at a time,
#: like multiprocessing's shared queue (a round trip is ~0.1 ms of that);
#: shorter ones two, and four when a frame takes under 1 ms, so that the
#: worker never idles between the driver's refills.
MAP_FRAMES = max(1, int(os.environ.get("SHOAL_MAP_FRAMES", "2")))
MAP_FRAMES_HOT = max(MAP_FRAMES, 4)
MAP_LONG_FRAME_S = 0.020
MAP_SHORT_FRAME_S = 0.001
#: starts in a row that die before the worker is ready: the pool is broken
_MAX_EARLY_DEATHS = 3


# Monitor outcomes (shoal/monitor/_run.py), here without importing numpy.
_M_RAISED, _M_LOST, _M_TIMED_OUT, _M_CANCELLED, _M_RETRIED = 1, 2, 3, 4, 5


def _monitor_outcome(exc: BaseException) -> int:
    if isinstance(exc, TaskTimeout):
        return _M_TIMED_OUT
    if isinstance(exc, CancelledError):
        return _M_CANCELLED
    if isinstance(exc, (WorkerLost, BrokenPool)):
        return _M_LOST
    return _M_RAISED


class _Failed:
    """A map slot holding an exception instead of a value."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _raise_failed(failed: _Failed) -> None:
    """Raises a map slot's exception, emptying the slot first: the raising
    frames end up in the exception's traceback, and a local that still held
    it would make a cycle that only the cyclic collector frees."""
    exc, failed.exc = failed.exc, None
    try:
        raise exc
    finally:
        exc = None


class _Task:
    """One map item's task. Defaults live on the class, so that creating one
    (a map of a million items creates a million) costs two attribute stores.
    A submit()/apply() task is its ProcessFuture itself (same fields)."""

    data = None        # Call payload bytes (None for map items: pickled per batch)
    keep = None        # what must stay alive until the result (segments)
    future = None      # a ProcessFuture's is itself
    job = None         # the _MapJob of a map item
    index = 0          # its position in the map
    item = None
    slot = -1          # the worker slot it was pushed to, -1 while in the backlog
    attempts = 0       # times its worker died under it
    timeout_ns = 0
    kill_reason = None

    def __init__(self, tid: int, fn_id: int) -> None:
        self.id = tid
        self.fn_id = fn_id


class _MapJob:
    __slots__ = ("results", "done", "ordered", "cancelled", "name", "per_frame", "finished")

    def __init__(self, ordered: bool, name: str = "", per_frame: int = 64) -> None:
        self.name = name
        self.per_frame = per_frame
        self.finished = 0  # results (values or failures) stored so far
        self.results: list = []
        self.done: deque = deque()  # completed indices, for unordered maps
        self.ordered = ordered
        self.cancelled = False

    def store(self, index: int, value: Any) -> None:
        """The result of item `index` (a value or a _Failed), unless the map
        was given up."""
        if not self.cancelled:
            self.results[index] = value
            self.finished += 1
            if not self.ordered:
                self.done.append(index)


class _Slot:
    __slots__ = ("index", "pid", "tasks", "sent_fns", "ready", "budget", "early_deaths",
                 "last_result", "pace", "busy")

    def __init__(self, index: int, budget: int | None) -> None:
        self.index = index
        self.pid = 0
        self.tasks: dict[int, _Task] = {}
        self.sent_fns: set[int] = set()
        self.ready = False
        self.budget = budget
        self.early_deaths = 0
        self.last_result = 0.0  # time.monotonic() of its last task result
        self.pace = 0.0         # seconds per task while busy (0: not known yet)
        self.busy = False       # it had tasks left after its last result


class ProcessFuture(Future, _Task):
    """A Future whose result() drains the result rings on the calling thread
    (no hop through the collector thread: that is where the round trip time goes).

    All futures of one pool share one Condition (an RLock, so as_completed()
    and wait(), which acquire every future's condition, still work): creating
    a Condition per task was a third of the cost of submit(). Nobody blocks
    on it but plain Future.result() calls of other code paths, which re-check
    their own state when woken.

    The future is also the engine's record of its task (a _Task, whose
    defaults it inherits): one object per submit() instead of two that
    refer to each other, which only the cyclic garbage collector could free."""

    def __init__(self, engine: "Engine", tid: int, fn_id: int) -> None:  # noqa: D107
        self._condition = engine.future_cond
        # PENDING while in the driver's backlog (cancellable), RUNNING once its
        # frame is on a worker's ring (at most CALL_DEPTH per worker).
        self._state = _F_PENDING
        self._waiters = []
        self._engine = engine
        self.id = tid
        self.fn_id = fn_id

    # Class-level until set: stores saved per submit().
    _result = None
    _exception = None
    #: a list once a callback is added (add_done_callback): one container
    #: fewer per submit() for the garbage collector to count and scan
    _done_callbacks = ()

    @property
    def future(self) -> "ProcessFuture":
        return self

    def _finished(self) -> bool:
        """done() without taking the condition (one attribute read is atomic);
        the predicate result() polls while it drains results."""
        state = self._state
        return state is _FINISHED or state is _CANCELLED or state is _CANCELLED_NOTIFIED

    def result(self, timeout: float | None = None) -> Any:
        if self._state is not _FINISHED:
            if not self._finished() and not self._engine.wait_until(self._finished, timeout):
                raise TimeoutError()
            if self._state is not _FINISHED:
                try:
                    Future.result(self, timeout=0)  # cancelled: raises
                finally:
                    self = None  # noqa: PLW0642 - see below
        if self._exception is None:
            return self._result  # set once, never changes afterwards
        # This frame ends up in the traceback of the exception the future
        # holds: `self = None` keeps the future out of a cycle that only the
        # cyclic collector would free (CPython's Future.result does the same).
        try:
            return Future.result(self, timeout=0)
        finally:
            self = None  # noqa: PLW0642

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        with self._condition:
            if self._state not in (_CANCELLED, _CANCELLED_NOTIFIED, _FINISHED):
                if type(self._done_callbacks) is tuple:
                    self._done_callbacks = []
                self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:  # noqa: BLE001 - as concurrent.futures does
            from concurrent.futures._base import LOGGER

            LOGGER.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        # Still in the backlog: the engine drops the task now (not when the
        # backlog reaches it), and wait()/as_completed() count it done at once.
        self._engine.forget(self)
        if self._state is _CANCELLED:
            try:
                self.set_running_or_notify_cancel()
            except RuntimeError:  # another thread's cancel() notified first
                pass
        return True

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self._finished() and not self._engine.wait_until(self._finished, timeout):
            raise TimeoutError()
        return super().exception(timeout=0)


def _describe_fn(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if isinstance(fn, functools.partial):
        return _describe_fn(fn.func)
    return name or type(fn).__name__


def _exit_text(code: int, sig: int) -> str:
    if sig:
        try:
            return f"killed by {_signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exited with code {code}"



class _StrongRef:
    """weakref.ref's interface for a callable that cannot be weakly referenced
    (a method descriptor, an operator.itemgetter ...): the cache keeps it."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __call__(self) -> Any:
        return self.obj


def _ident_ref(obj: Any) -> Any:
    try:
        return weakref.ref(obj)
    except TypeError:
        return _StrongRef(obj)



class Engine:
    """The task ledger of one pool; a transport subclass supplies the channel
    and the hooks listed in the module docstring. The backend object is a
    thin handle on the engine, so that dropping the handle (gc) can terminate
    the engine while the collector thread still references it."""

    #: pickles what the ledger sends (functions, arguments, the initializer);
    #: a transport whose workers cannot map the driver's shared segments
    #: (other nodes) keeps the buffers in band
    _dumps = staticmethod(_serialize.dumps)
    #: ... and tasks' arguments (their big buffers out of band: shared
    #: segments, which the mpi transport sends as MPI messages of their own)
    _dumps_task = staticmethod(_serialize.dumps)

    def __init__(self, chan: Any, workers: int, initializer: Callable | None, initargs: tuple,
                 max_tasks_per_worker: int | None, retries: int) -> None:
        """The ledger's state; starts no thread (a transport may still fork
        its workers afterwards) and no worker: the subclass does both, then
        calls _start_collector()."""
        from . import _core

        self.core = _core
        self.chan = chan
        self.workers = workers
        self.retries = retries
        self.max_tasks = max_tasks_per_worker
        self.slots = [_Slot(i, max_tasks_per_worker) for i in range(workers)]
        self.budgeted = max_tasks_per_worker is not None  # slots count tasks down
        # The initializer's pickle, for the transport to give each new worker.
        self.init_data = None
        self.init_payload = None
        if initializer is not None:
            self.init_payload = self._dumps((initializer, tuple(initargs)))
            self.init_data = bytes(self.init_payload.data)
        self.limit = chan.max_payload // 2  # larger frame payloads go _indirect
        self.lock = threading.Lock()
        # (the plain locks under the conditions: `with lock` is C code,
        # `with condition` a Python method call, on every result)
        self.cv_lock = threading.Lock()
        self.cv = threading.Condition(self.cv_lock)  # guards waiters
        self.future_lock = threading.RLock()
        self.future_cond = threading.Condition(self.future_lock)  # shared by every ProcessFuture
        self.waiters = 0
        self.last_waiter = 0.0
        self.dead_pids: list[int] = []
        self.ids = itertools.count(1)
        self.tasks: dict[int, _Task] = {}
        self.timed: set[int] = set()
        self.backlog: deque[_Task] = deque()
        # (id(fn), chunked) -> (fn, fn_id, payload, name); insertion-ordered
        self.fns: OrderedDict[tuple, tuple] = OrderedDict()
        self.fn_data: dict[int, bytes] = {}                # fn_id -> data (for resends)
        # evicted functions whose data tasks may still need: (first id
        # after the eviction, fn_id, payload), oldest first (see _retire)
        self.retired: deque[tuple] = deque()
        self.fn_names: dict[int, str] = {}                 # fn_id -> name, for messages
        self.short_fns: set[int] = set()  # fn_ids whose tasks ran short (AWAKE_TASK_NS)
        self.fn_keep: list = []                            # segments of huge FunctionDefs
        self.closing = False      # no new tasks
        self.stopped = False      # workers are gone
        self.broken: BaseException | None = None
        self.owner_pid = os.getpid()
        self.disowned = False  # set in a child forked from this process
        self.thread: threading.Thread | None = None
        # The monitor's recorder (shoal/monitor/_session.py), None when it is
        # off: then every hook below is one `is None` check. Rings in shared
        # memory only for a channel whose workers can attach them.
        from .monitor import _session

        rings = hasattr(chan, "attach_monitor")
        self.mon = _session.recorder(type(self).__module__.rsplit("_", 1)[-1], workers, rings)
        # Workers that record nothing themselves (a transport without the
        # monitor's rings: the mpi backend): the ledger records each result
        # as it arrives (its end: then; its start: unknown).
        self.mon_ends = self.mon is not None and not rings

    def _start_collector(self) -> None:
        """The thread that runs passes while no caller does (see _collector)."""
        self.thread = threading.Thread(target=self._collector, name="shoal-collector", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ transport hooks
    # What each must do: the module docstring. Defaults only where doing
    # nothing is right for a transport that lacks the feature.
    def _take_exits(self) -> list:
        raise NotImplementedError

    def _start_worker(self, s: "_Slot") -> None:
        raise NotImplementedError

    def _kill(self, pid: int) -> None:
        raise NotImplementedError

    def _indirect(self, data: bytes) -> tuple:
        raise NotImplementedError(f"a frame of {len(data)} bytes is over the channel's limit")

    def _load_indirect(self, ref: bytes) -> bytes:
        raise NotImplementedError

    def _sweep_dead(self, pids: list) -> None:
        pass

    def _write_cancel_mark(self, upto: int, exempt: dict) -> None:
        pass  # no mark: tasks already on a ring run

    def _stop_workers(self, grace: float) -> None:
        raise NotImplementedError

    def _release_transport(self) -> None:
        pass

    def _worker_label(self, pid: int) -> str:
        """How messages name the worker the ledger knows as pid."""
        return f"worker {pid}"

    def _reset_slot(self, s: "_Slot") -> None:
        """A slot's bookkeeping for a new worker (the transport's _start_worker
        calls it first). Lock held (or the constructor)."""
        self.chan.reset_slot(s.index)
        s.tasks = {}
        s.sent_fns = set()
        s.ready = False
        s.budget = self.max_tasks
        s.last_result = 0.0
        s.pace = 0.0
        s.busy = False
        s.pid = 0


    def worker_pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid]

    # ------------------------------------------------------------ submitting
    def _fn_id(self, fn: Callable, chunked: bool = False) -> int:
        """The id under which workers know fn (pickled once per pool, sent once
        per worker). chunked: the function of map chunks, partial(run_chunk, fn).
        Bound methods are keyed by (object, function): a new bound-method
        object per attribute access must not mean a new pickle per task."""
        if isinstance(fn, types.MethodType):
            key = (id(fn.__self__), id(fn.__func__), chunked)
            ident = (fn.__self__, fn.__func__)
        else:
            key = (id(fn), chunked)
            ident = fn
        entry = self.fns.get(key)
        if entry is not None:
            ref = entry[0]
            if type(ref) is tuple:
                if type(ident) is tuple and ref[0]() is ident[0] and ref[1]() is ident[1]:
                    return entry[1]
            elif ref() is ident:
                return entry[1]  # eviction is FIFO: a re-pickle now and then is cheap
            # A dead function's id, now another object's: its entry goes.
            del self.fns[key]
            self._retire(entry)
        if chunked:
            from ._mapping import run_chunk

            obj = functools.partial(run_chunk, fn)
        else:
            obj = fn
        payload = self._dumps(obj)  # may raise SerializationError: nothing changed yet
        fn_id = next(self.ids)
        # The cache names the function weakly: a closure, a partial or the
        # object of a bound method is the caller's to drop (its pickle stays
        # cached until the entry is evicted).
        if type(ident) is tuple:
            self.fns[key] = ((_ident_ref(ident[0]), _ident_ref(ident[1])), fn_id, payload)
        else:
            self.fns[key] = (_ident_ref(ident), fn_id, payload)
        self.fn_data[fn_id] = bytes(payload.data)
        names = self.fn_names
        names[fn_id] = _describe_fn(fn)
        if self.mon is not None:
            self.mon.function(fn_id, names[fn_id])
        if len(names) > 16 * _FN_CACHE_SIZE:  # tasks of long-evicted functions say "?"
            for old in list(itertools.islice(names, len(names) // 2)):
                del names[old]
        if len(self.fns) > _FN_CACHE_SIZE:
            self._retire(self.fns.popitem(last=False)[1])
        return fn_id

    def _retire(self, entry: tuple) -> None:
        """An evicted function: workers forget it, submit() pickles it anew.
        Its FunctionDef data stays while tasks submitted before now may still
        need it (a backlogged task, one requeued after its worker died): until
        the oldest task left is younger than this moment. Lock held."""
        old_id = entry[1]
        self.short_fns.discard(old_id)
        # Workers forget it too (best effort: a full ring just keeps it).
        forget = self._dumps({"forget": [old_id]}).data
        for s in self.slots:
            if old_id in s.sent_fns:
                s.sent_fns.discard(old_id)
                self.chan.push_task(s.index, 0, CONTROL, 0, forget)
        retired = self.retired
        retired.append((next(self.ids), old_id, entry[2]))
        oldest = next(iter(self.tasks), None)  # ids grow: the dict's first is the oldest
        while retired and (oldest is None or retired[0][0] < oldest):
            _, fn_id, _ = retired.popleft()
            self.fn_data.pop(fn_id, None)
            for s in self.slots:
                s.sent_fns.discard(fn_id)  # resent since: the worker keeps a stale copy

    def _task_name(self, task: "_Task") -> str:
        if task.job is not None:
            return task.job.name
        return self.fn_names.get(task.fn_id, "?")

    def _check_open(self) -> None:
        if self.broken is not None:
            raise BrokenPool(f"the process pool is broken: {self.broken}") from self.broken
        if self.closing:
            # concurrent.futures' words (an atexit callback that submits gets
            # the second: the exit hook below has shut every Executor down).
            raise RuntimeError("cannot schedule new futures after interpreter shutdown"
                               if _interpreter_exiting else
                               "cannot schedule new futures after shutdown")

    def submit(self, fn: Callable, args: tuple, kwargs: dict | None,
               timeout: float | None) -> Future:
        # The hot path of Executor.submit: every line here costs per task.
        collect = False
        with self.lock:
            if self.broken is not None or self.closing:
                self._check_open()
            entry = self.fns.get((id(fn), False))
            if entry is not None and entry[0]() is fn:
                fn_id = entry[1]
            else:
                if not callable(fn):
                    raise TypeError(f"{fn!r} is not callable")
                fn_id = self._fn_id(fn)
            tid = next(self.ids)
            fut = ProcessFuture(self, tid, fn_id)  # also the task's record
            nargs = len(args)
            if kwargs is None and (type(args[0]) in _SCALARS if nargs == 1 else
                                   nargs <= 4 and all(type(a) in _SCALARS for a in args)):
                # Scalars: nothing can go out of band or refer to __main__, so
                # the serializer would only add its bookkeeping to a pickle.
                data = fut.data = _pickle_dumps((fn_id, args, None), 5)
            else:
                try:
                    payload = self._dumps_task((fn_id, args, kwargs))
                except SerializationError as exc:
                    fut.set_exception(exc)
                    return fut
                data = payload.data
                if type(data) is not bytes:
                    data = bytes(data)
                fut.data = data
                if payload.segments or payload.keepalive:  # big buffers, shoal.shared refs
                    fut.keep = payload
            if timeout is not None:
                if timeout <= 0:
                    raise ValueError(f"timeout must be > 0, got {timeout}")
                fut.timeout_ns = int(timeout * 1e9)
                self.timed.add(tid)
            self.tasks[tid] = fut
            if self.mon is not None:
                self.mon.submit(tid, fn_id, len(data))
            # Fast path (every task after the first of a function): one frame
            # to the least-loaded worker that already has the function.
            backlog = self.backlog
            s, awake = (None, False) if backlog else self._call_slot(fn_id)
            if (s is not None and fn_id in s.sent_fns
                    and (awake or self._room(s, fn_id) > 0)
                    and (s.budget is None or s.budget > 0)
                    and len(data) <= self.limit
                    and self.chan.push_task(s.index, tid, CALL, 0, data)):
                fut._state = _RUNNING  # nobody else holds fut yet: no lock needed
                fut.slot = s.index
                s.tasks[tid] = fut
                if s.budget is not None:
                    s.budget -= 1
                # A thread submitting many reads the results now and then
                # itself: the collector keeps off the lock while it is busy.
                collect = not tid & 255
            elif backlog:
                backlog.append(fut)
                collect = not tid & 3
            else:
                try:
                    placed = self._place([fut])
                except BaseException:
                    # e.g. OSError(ENOSPC) from a full /dev/shm for a big
                    # argument: the caller gets it, and no task is left
                    # behind for shutdown(wait=True) to wait on forever.
                    del self.tasks[tid]
                    self.timed.discard(tid)
                    raise
                if not placed:
                    self.backlog.append(fut)
            if self.timed:
                self.chan.ring_doorbell()  # the collector recomputes its wake-up time
        if collect:
            # The workers' rings hold only CALL_DEPTH tasks each: a thread
            # submitting many collects (and so refills) now and then itself,
            # or the workers would idle until the collector's next pass.
            self.run_pass()
        return fut

    def _pick_slot(self) -> _Slot | None:
        """The worker with the fewest outstanding tasks (and budget left)."""
        best = None
        least = 1 << 62
        for s in self.slots:
            n = len(s.tasks)
            if n < least and (s.budget is None or s.budget > 0):
                best, least = s, n
        return best

    def _call_slot(self, fn_id: int) -> tuple[_Slot | None, bool]:
        """Where Call frames of fn_id go, and whether it is an awake worker
        of short tasks (then it has room: AWAKE_QUEUE < CALL_DEPTH). For a
        function whose tasks have run short, such a worker rather than an
        idle one that needs a futex wake first, else the least loaded by its
        own load (PoolChannel::pick_slot); for any other, the fewest
        outstanding tasks (a task the worker has taken but not started, e.g.
        while it loads a new function, counts there, not in its own load)."""
        if not self.budgeted and fn_id in self.short_fns:
            i = self.chan.pick_slot(AWAKE_QUEUE, AWAKE_TASK_NS)
            if i >= 0:
                return self.slots[i], True
            return self.slots[-1 - i], False
        return self._pick_slot(), False

    def _frames_for(self, s: _Slot, tasks: list[_Task]) -> tuple[list, list]:
        """Frames carrying `tasks` (all Call, or all map items of one fn) to slot s,
        and for each frame the tasks it carries ([] for a FunctionDef)."""
        frames: list = []
        owners: list = []
        fn_id = tasks[0].fn_id
        if fn_id not in s.sent_fns:
            data = self.fn_data[fn_id]
            flags = 0
            if len(data) > self.limit:
                # Huge closures: the segment lives as long as the pool (its
                # name is unlinked when the pool closes).
                data, seg = self._indirect(data)
                self.fn_keep.append(seg)
                flags = INDIRECT
            frames.append((fn_id, FUNCTION_DEF, flags, data))
            owners.append(None)
        if tasks[0].data is not None:
            for t in tasks:
                data, flags = t.data, 0
                if len(data) > self.limit:
                    data, seg = self._indirect(data)
                    t.keep = (t.keep, seg)
                    flags = INDIRECT
                frames.append((t.id, CALL, flags, data))
                owners.append([t])
        else:
            ids = [t.id for t in tasks]
            data = self._dumps_task((fn_id, ids, [t.item for t in tasks]))
            raw = bytes(data.data)
            flags = 0
            if len(raw) > self.limit:
                raw, seg = self._indirect(raw)
                flags = INDIRECT
                data = (data, seg)
            frames.append((ids[0], BATCH, flags, raw))
            owners.append(tasks)
            if self.mon is not None:
                self.mon.frame(ids[0], len(ids), len(raw))
            for t in tasks:
                t.keep = data if (flags or data.segments or data.keepalive) else None
        return frames, owners

    def _place(self, tasks: list[_Task]) -> bool:
        """Pushes tasks (same kind, same fn) to the least-loaded slot. Returns
        False (and pushes nothing) if they do not fit now. Caller holds the lock."""
        s = self._pick_slot() if tasks[0].data is None else self._call_slot(tasks[0].fn_id)[0]
        if s is None:
            return False
        if s.budget is not None and s.budget < len(tasks):
            return False
        if tasks[0].data is not None:
            if self._room(s, tasks[0].fn_id) <= 0:
                return False  # Calls wait PENDING in the backlog (cancellable)
        elif s.tasks and len(s.tasks) >= len(tasks) * self._map_frames(s, len(tasks)):
            return False  # map items wait for the first worker to free up
        frames, owners = self._frames_for(s, tasks)
        n = self.chan.push_tasks(s.index, frames)
        if n < len(frames):
            # Partially pushed: keep what went, report the rest as not placed
            # only if nothing of the tasks went (simple and rare: a full ring).
            pushed_tasks = [t for o in owners[:n] if isinstance(o, list) for t in o]
            if owners and n > 0 and frames[0][1] == FUNCTION_DEF:
                s.sent_fns.add(frames[0][0])
            if not pushed_tasks:
                return False
            for t in pushed_tasks:
                t.slot = s.index
                s.tasks[t.id] = t
                if t.future is not None and t.future._state == _F_PENDING:
                    t.future.set_running_or_notify_cancel()
            if s.budget is not None:
                s.budget -= len(pushed_tasks)
            rest = [t for o in owners[n:] if isinstance(o, list) for t in o]
            self.backlog.extendleft(reversed(rest))
            return True
        if frames[0][1] == FUNCTION_DEF:
            s.sent_fns.add(frames[0][0])
        idx = s.index
        st = s.tasks
        for t in tasks:
            t.slot = idx
            st[t.id] = t
            if t.future is not None and t.future._state == _F_PENDING:
                # False if cancelled meanwhile: it runs, nobody gets the result.
                t.future.set_running_or_notify_cancel()
        if s.budget is not None:
            s.budget -= len(tasks)
        return True

    def _place_checked(self, tasks: list[_Task]) -> bool:
        """_place, except that map items that cannot be pickled fail alone
        (SerializationError naming them) and the others go on. Lock held."""
        try:
            return self._place(tasks)
        except SerializationError:
            good = []
            for t in tasks:
                try:
                    self._dumps(t.item)
                    good.append(t)
                except SerializationError as exc:
                    del self.tasks[t.id]
                    t.job.store(t.index, _Failed(exc))
            return not good or self._place(good)

    @staticmethod
    def _map_frames(s: _Slot, per_frame: int) -> int:
        """Map frames of per_frame items that slot s may have in flight."""
        frame_s = s.pace * per_frame
        if frame_s >= MAP_LONG_FRAME_S:
            return 1
        if frame_s == 0.0 or frame_s >= MAP_SHORT_FRAME_S:
            return MAP_FRAMES
        return MAP_FRAMES_HOT

    def _room(self, s: _Slot, fn_id: int) -> int:
        """How many more Call frames of fn_id slot s may have queued now (on
        its ring, not taken by its worker yet: a finished task whose result
        the driver has not read yet takes no room). See CALL_DEPTH."""
        chan = self.chan
        queued = chan.queued(s.index)
        took = chan.task_ns(s.index)
        if took == 0:
            return CALL_DEPTH - queued
        cap = CALL_DEPTH_HOT if fn_id in self.short_fns else CALL_DEPTH
        return min(cap, max(1, QUEUE_NS // took)) - queued

    def _refill_calls(self) -> bool:
        """The backlog's fast path for submit(): fills the least-loaded
        worker's free Call depth with one push, for Calls whose function that
        worker has. True if it took anything off the backlog. Lock held."""
        backlog, tasks, limit = self.backlog, self.tasks, self.limit
        s, _ = self._call_slot(backlog[0].fn_id)
        if s is None:
            return False
        room = self._room(s, backlog[0].fn_id)
        if s.budget is not None:
            room = min(room, s.budget)
        if room <= 0:
            return False
        batch = []
        fresh = []  # the ones made RUNNING here
        skipped = 0
        sent = s.sent_fns
        # RUNNING is set before the push, under the futures' condition: a
        # cancel() racing with it either wins (the task is skipped here) or
        # sees RUNNING (and returns False, as the task will run).
        with self.future_cond:
            while backlog and len(batch) < room:
                t = backlog[0]
                if tasks.get(t.id) is not t:
                    backlog.popleft()  # cancelled (forget) or failed meanwhile
                    skipped += 1
                    continue
                fut = t.future
                if fut is None or t.data is None or t.fn_id not in sent or len(t.data) > limit:
                    break  # the general path below handles it
                backlog.popleft()
                state = fut._state
                if state is _F_PENDING:
                    fut._state = _RUNNING
                    fresh.append(t)
                elif state is not _RUNNING:  # cancelled, forget() not yet run
                    del tasks[t.id]
                    self.timed.discard(t.id)
                    skipped += 1
                    continue
                # (RUNNING: requeued from a dead worker; it stays RUNNING)
                batch.append(t)
        if not batch:
            return skipped > 0
        n = self.chan.push_tasks(s.index, [(t.id, CALL, 0, t.data) for t in batch])
        idx, st = s.index, s.tasks
        for t in batch[:n]:
            t.slot = idx
            st[t.id] = t
        if s.budget is not None:
            s.budget -= n
        if n < len(batch):  # ring full: the rest stays queued (and cancellable)
            rest = batch[n:]
            with self.future_cond:
                for t in fresh:
                    if t in rest:
                        t.future._state = _F_PENDING
            backlog.extendleft(reversed(rest))
        return n > 0 or skipped > 0

    def _flush_backlog(self, done: list) -> None:
        # Caller holds the lock. Groups consecutive tasks of one kind and fn.
        # A group that cannot be placed for good (e.g. OSError from a full
        # /dev/shm) fails into `done`, finished by the caller after the lock.
        backlog = self.backlog
        while backlog:
            first = backlog[0]
            if first.future is not None and self._refill_calls():
                continue
            if first.id not in self.tasks or (first.future is not None
                                              and first.future.cancelled()):
                backlog.popleft()  # completed or cancelled meanwhile
                self.tasks.pop(first.id, None)
                self.timed.discard(first.id)
                continue
            group = [backlog.popleft()]
            limit = first.job.per_frame if first.data is None and first.job is not None else 1
            while backlog and len(group) < limit and backlog[0].fn_id == first.fn_id and \
                    (backlog[0].data is None) == (first.data is None):
                group.append(backlog.popleft())
            s = self._pick_slot()
            if s is not None and s.budget is not None and len(group) > s.budget:
                cut = max(1, s.budget)
                backlog.extendleft(reversed(group[cut:]))
                group = group[:cut]
            try:
                placed = self._place_checked(group)
            except Exception as exc:  # noqa: BLE001 - the tasks' callers get it
                for t in group:
                    if t.id in self.tasks:
                        self.timed.discard(t.id)
                        self._fail(t, exc, done)
                continue
            if not placed:
                backlog.extendleft(reversed(group))
                return

    # ------------------------------------------------------------ map
    def map(self, fn: Callable, iterable: Iterable, chunksize: int | None, ordered: bool,
            timeout: float | None, *, chunks: bool = False,
            eager: bool = False) -> Iterator[Any]:
        """Iterator over fn(x) for x in iterable; with chunks=True over
        sequences of result lists, for the caller to extend its list with each
        (map_list: no generator step per item, no flattened copy). eager:
        every item is submitted before this returns (Executor.map), instead
        of a window refilled as results are taken."""
        from ._mapping import GuardedSource, auto_chunksize, chunked, guided_chunks, use_guided

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            n = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            n = None
        sliceable = isinstance(iterable, (range, list, tuple))
        guided = chunksize is None and sliceable and use_guided(n, self.workers)
        if chunksize is None:
            chunksize = auto_chunksize(n, self.workers)
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        source = None if sliceable else GuardedSource(iterable)
        if guided:
            task_fn = fn
            units = guided_chunks(iterable, n, self.workers)
            n_units = None
        elif chunksize == 1:
            task_fn, units = fn, source if source is not None else iter(iterable)
            n_units = n
        else:
            task_fn = fn
            if sliceable:
                # Slices: a range chunk pickles as three integers.
                units = (iterable[i: i + chunksize] for i in range(0, n, chunksize))
            else:
                units = chunked(source, chunksize)
            n_units = None if n is None else -(-n // chunksize)
        # Tasks per Batch frame: enough to amortize a frame, few enough to balance.
        if guided:
            per_frame = 1
        elif n_units is None:
            per_frame = 32
        else:
            per_frame = max(1, min(512, n_units // (self.workers * 8)))
        window = max(per_frame * self.workers * 4, 2 * self.workers)
        if chunks:
            # In flight, not unread (see _map_iter): room for a stalled
            # worker's queued frames and two frames for each of the others.
            window = max(window, per_frame * (MAP_FRAMES_HOT + 2 * self.workers))
        name = _describe_fn(fn)
        job = _MapJob(ordered, name, per_frame)
        with self.lock:
            self._check_open()
            fn_id = self._fn_id(task_fn, chunked=guided or chunksize > 1)
        if eager:
            try:
                while True:
                    items = list(itertools.islice(units, per_frame))
                    if not items:
                        break
                    self._map_submit(job, fn_id, name, items)
            except BaseException:
                job.cancelled = True
                with self.lock:
                    self.backlog = deque(t for t in self.backlog if t.job is not job)
                    for t in [t for t in self.tasks.values() if t.job is job]:
                        del self.tasks[t.id]
                        self.timed.discard(t.id)
                raise
        return self._map_iter(job, fn_id, name, units, per_frame, window, deadline,
                              guided or chunksize > 1, chunks, source)

    def _map_submit(self, job: _MapJob, fn_id: int, name: str, items: list) -> None:
        results = job.results
        base = len(results)
        results.extend([_PENDING] * len(items))
        tasks = [_Task(0, fn_id) for _ in items]
        with self.lock:
            self._check_open()
            alltasks = self.tasks
            ids = self.ids
            index = base
            for t, item in zip(tasks, items):
                tid = t.id = next(ids)
                t.job = job
                t.index = index
                t.item = item
                alltasks[tid] = t
                index += 1
            if self.mon is not None:
                self.mon.submit_range(tasks[0].id, len(tasks), fn_id)
            if self.backlog:
                self.backlog.extend(tasks)
            elif not self._place_checked(tasks):
                self.backlog.extend(tasks)

    def _map_iter(self, job: _MapJob, fn_id: int, name: str, units: Iterator, per_frame: int,
                  window: int, deadline: float | None, flatten: bool,
                  chunks: bool = False, source: Any = None) -> Iterator[Any]:
        results = job.results
        nxt = 0            # next index to yield (ordered)
        yielded = 0
        exhausted = False

        # map_list (chunks) keeps every result until the end anyway: its window
        # bounds the items in flight, not those not yet handed over, so that
        # one long item at the head does not stall the items behind it.
        def in_window() -> int:
            return len(results) - (job.finished if chunks else yielded)

        def refill() -> None:
            nonlocal exhausted
            while not exhausted and in_window() < window:
                items = list(itertools.islice(units, per_frame))
                if not items:
                    exhausted = True
                    return
                self._map_submit(job, fn_id, name, items)

        def remaining() -> float | None:
            return time_left(deadline)

        try:
            refill()
            if job.ordered and chunks:
                # map_list: hand over every consecutive finished result at once.
                low = window - per_frame  # refill as soon as a frame fits
                while nxt < len(results):
                    if results[nxt] is _PENDING:
                        i = nxt
                        if not self.wait_until(
                                lambda: results[i] is not _PENDING or (
                                    not exhausted and in_window() <= low), remaining()):
                            raise TimeoutError("map() timed out")
                        if results[nxt] is _PENDING:
                            refill()  # room behind a slow head item
                            continue
                    end = nxt + 1
                    size = len(results)
                    while end < size and results[end] is not _PENDING:
                        end += 1
                    run = results[nxt:end]
                    results[nxt:end] = itertools.repeat(None, end - nxt)
                    yielded += end - nxt
                    nxt = end
                    for r in run:
                        if type(r) is _Failed:
                            run = None
                            _raise_failed(r)
                    if not exhausted and in_window() <= low:
                        refill()
                    # Lists for the caller to extend its result with: each
                    # chunk's own list (no flattened copy of them first).
                    yield run if flatten else (run,)
            elif job.ordered:
                while nxt < len(results):
                    r = results[nxt]
                    if r is _PENDING:
                        i = nxt
                        if not self.wait_until(lambda: results[i] is not _PENDING, remaining()):
                            raise TimeoutError("map() timed out")
                        r = results[nxt]
                    results[nxt] = None
                    nxt += 1
                    yielded += 1
                    if type(r) is _Failed:
                        _raise_failed(r)
                    if not exhausted and len(results) - yielded < window // 2:
                        refill()
                    if chunks:
                        yield r if flatten else (r,)
                    elif flatten:
                        yield from r
                    else:
                        yield r
            else:
                done = job.done
                while yielded < len(results):
                    if not done:
                        if not self.wait_until(lambda: bool(done), remaining()):
                            raise TimeoutError("map() timed out")
                    i = done.popleft()
                    r = results[i]
                    results[i] = None
                    yielded += 1
                    if type(r) is _Failed:
                        _raise_failed(r)
                    if not exhausted and len(results) - yielded < window // 2:
                        refill()
                    if flatten:
                        yield from r
                    else:
                        yield r
            if source is not None:
                source.raise_error()  # the user's iterable raised after these items
        finally:
            job.cancelled = True
            if yielded < len(results):
                with self.lock:
                    self.backlog = deque(t for t in self.backlog if t.job is not job)
                    for t in [t for t in self.tasks.values() if t.job is job]:
                        del self.tasks[t.id]
                        self.timed.discard(t.id)

    # ------------------------------------------------------------ collecting
    def wait_until(self, pred: Callable[[], bool], timeout: float | None) -> bool:
        """Drains results on this thread until pred() holds. False on timeout."""
        if self.disowned and not pred():
            raise BrokenPool(f"this pool belongs to process {self.owner_pid}; a process "
                             f"forked from it cannot wait for its tasks")
        deadline = None if timeout is None else time.monotonic() + timeout
        chan = self.chan
        with self.cv_lock:
            self.waiters += 1
        try:
            while True:
                seen = chan.doorbell()
                if pred():
                    return True
                self.run_pass()
                if pred():
                    return True
                if deadline is None:
                    wait = 0.1
                else:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        return False
                    wait = min(wait, 0.1)
                if self.timed:
                    wait = min(wait, 0.005)
                chan.wait_driver(seen, wait, SPIN_US)
        finally:
            with self.cv_lock:
                self.waiters -= 1
                self.last_waiter = time.monotonic()

    def _collector(self) -> None:
        chan, cv = self.chan, self.cv
        while not self.stopped:
            with cv:
                # A thread blocked in result()/map drains for everyone meanwhile,
                # and one that just left is likely to come back (submit, result,
                # submit, ...): stay out of its way for a moment, so that the
                # workers need not wake this thread for every result.
                while not self.stopped and (self.waiters or
                                            time.monotonic() - self.last_waiter < 0.002):
                    cv.wait(0.1 if self.waiters else 0.002)
            seen = chan.doorbell()
            try:
                # Not blocking: the lock is busy when a thread submits, and
                # waiting for it would make every one of its releases a
                # wake-up (a syscall) for this thread.
                found = self.run_pass(blocking=False)
            except BaseException as exc:  # noqa: BLE001 - must never die silently
                done: list = []
                with self.lock:
                    self._break(BrokenPool(f"internal error in the result collector: {exc!r}"),
                                cause=exc, done=done)
                self._finish(done)
                return
            if self.stopped:
                return
            if self.closing and not self.tasks:
                self.close(1.0)
                return
            if found:
                # Results are flowing: collect them in batches every half
                # millisecond without announcing a sleep, so the workers do not
                # pay a futex wake per result and this thread does not fight the
                # submitting thread for the GIL on every one.
                time.sleep(0.0005)
            else:
                chan.wait_driver(seen, 0.005 if self.timed else 0.1, 0.0)

    def run_pass(self, blocking: bool = True) -> int:
        """One collection pass: deaths, results, time limits, backlog.
        Returns the number of frames collected; -1 (not blocking) if another
        thread held the lock."""
        done: list = []  # (task, kind, flags, data) to complete after the lock
        fast: list = []  # (task, data): plain results, the common case
        if not self.lock.acquire(blocking):
            return -1
        try:
            if self.stopped:
                return 0
            exits = self._take_exits()  # first: what a dead worker sent is drained below
            groups = self.chan.drain_by_slot()
            nframes = self._collect(groups, fast, done) if groups else 0
            for slot, pid, code, sig in exits:
                if slot >= 0:
                    self._on_death(slot, pid, code, sig, done)
            if self.timed:
                self._check_time_limits()
            if self.backlog:
                self._flush_backlog(done)
        finally:
            self.lock.release()
        if fast:
            self._finish_values(fast)
        if done:
            self._finish(done)
        if self.dead_pids:
            with self.lock:
                dead, self.dead_pids = self.dead_pids, []
            self._sweep_dead(dead)
        if (done or fast) and self.waiters:
            self.chan.ring_doorbell()
        return nframes + len(exits)

    def _collect(self, groups: list, fast: list, done: list) -> int:
        """Matches result frames ([(slot, frames)] from drain_by_slot) to their
        tasks: plain results into fast, the rest into done; updates each
        slot's pace and the short-task set. Returns the number of frames.
        Lock held."""
        nframes = 0
        tasks = self.tasks
        slots = self.slots
        chan = self.chan
        short_fns = self.short_fns
        now = time.monotonic()
        for slot, frames in groups:
            task = None
            s = slots[slot]
            st = s.tasks
            nframes += len(frames)
            results = 0
            for tid, kind, flags, data in frames:
                if tid == 0:
                    self._control(s, kind, data, done)
                    continue
                results += 1
                # Off the slot's count even when nobody wants the
                # result any more (an abandoned map, a cancel): a slot
                # whose count kept such tasks would look full forever
                # and starve the backlog (seen: a module-scoped pool
                # hung after a few abandoned maps).
                st.pop(tid, None)
                task = tasks.pop(tid, None)
                if task is None:
                    continue  # cancelled or abandoned meanwhile
                if kind == RESULT and not flags and not task.timeout_ns:
                    fast.append((task, data))  # the common case, see below
                else:
                    done.append((task, kind, flags, data))
            if self.mon_ends:
                self._record_ends(s, frames)
            if results:
                if s.busy:  # it worked from its previous result to now
                    s.pace = (now - s.last_result) / results
                s.last_result = now
                s.busy = bool(st)
                if task is not None and task.job is None:
                    # The function of its latest Call: short or not,
                    # by the worker's task time average (see submit).
                    if chan.task_ns(slot) < AWAKE_TASK_NS:
                        short_fns.add(task.fn_id)
                    else:
                        short_fns.discard(task.fn_id)
        return nframes

    def _record_ends(self, s: _Slot, frames: list) -> None:
        outcome = self.mon.outcome
        for tid, kind, _flags, _data in frames:
            if tid and (kind == RESULT or kind == FAILURE):
                outcome(tid, 0 if kind == RESULT else _M_RAISED, 0, -1, s.pid, s.index)

    def _control(self, s: _Slot, kind: int, data: bytes, done: list) -> None:
        if kind == CONTROL:
            s.ready = True
            s.early_deaths = 0
        elif kind == FAILURE:
            try:
                exc, tb = _serialize.loads(data, adopt=True)
                exc.__cause__ = RemoteTraceback(tb)
            except BaseException as e:  # noqa: BLE001
                exc = e
            self._break(BrokenPool(f"the pool's initializer raised {type(exc).__name__}: {exc}"),
                        cause=exc, done=done)

    def _finish_values(self, fast: list) -> None:
        """Completes tasks whose result frame arrived (most of them): map slots
        directly; Futures all under one acquisition of their shared condition
        with one notify_all, callbacks after it."""
        loads = _serialize.loads
        plain = _serialize._tracker is None  # no shoal.shared array to adopt
        futs = []
        for task, data in fast:
            task.keep = None
            try:
                if plain and data[0] != _OOB_MARKER and b"shoal.shared" not in data:
                    value = _pickle_loads(data)  # what loads() does for it, minus 2 calls
                else:
                    value = loads(data, adopt=True)
            except BaseException as exc:  # noqa: BLE001
                self._result_unloadable(task, exc)
                continue
            job = task.job
            if job is not None:
                if not job.cancelled:  # job.store(), inlined: once per map result
                    job.results[task.index] = value
                    job.finished += 1
                    if not job.ordered:
                        job.done.append(task.index)
            else:
                futs.append((task, value))  # a Call's task is its ProcessFuture
        if not futs:
            return
        callbacks = []
        cond = self.future_cond
        with self.future_lock:
            for fut, value in futs:
                fut.data = _NO_DATA  # the arguments' pickle: not needed any more
                if fut._state is _RUNNING or fut._state is _F_PENDING:
                    fut._result = value
                    fut._state = _FINISHED
                    for waiter in fut._waiters:
                        waiter.add_result(fut)
                    if fut._done_callbacks:
                        callbacks.append(fut)
            if cond._waiters:  # threads in plain Future.result()/exception()
                cond.notify_all()
        for fut in callbacks:
            fut._invoke_callbacks()

    def _result_unloadable(self, task: _Task, exc: BaseException) -> None:
        self._deliver_exc(task, serialization_error(
            f"the result of task {task.id} ({self._task_name(task)}) could not be loaded: "
            f"{type(exc).__name__}: {exc}", type(exc)))

    def _finish(self, done: list) -> None:
        loads = _serialize.loads
        for task, kind, flags, data in done:
            task.keep = None  # the worker has loaded its arguments: free their segments
            if task.job is None:
                task.data = _NO_DATA
            if task.timeout_ns:
                self.timed.discard(task.id)
            if kind == RESULT:
                try:
                    if flags & INDIRECT:
                        data = self._load_indirect(data)
                    value = loads(data, adopt=True)
                except BaseException as exc:  # noqa: BLE001
                    self._result_unloadable(task, exc)
                    continue
                job = task.job
                if job is not None:
                    job.store(task.index, value)
                else:
                    try:
                        task.future.set_result(value)
                    except InvalidStateError:
                        pass
            elif kind == FAILURE:
                try:
                    if flags & INDIRECT:
                        data = self._load_indirect(data)
                    exc, tb = loads(data, adopt=True)
                    exc.__cause__ = RemoteTraceback(tb)
                except BaseException as e:  # noqa: BLE001
                    exc = e
                self._deliver_exc(task, exc)
            elif kind == CONTROL:  # skipped by its worker: past the cancel mark
                self._cancel_queued(task)
            else:  # an exception made by the driver
                self._deliver_exc(task, data)

    def _cancel_queued(self, task: _Task) -> None:
        """A task that its worker did not start because shutdown(cancel_futures=
        True) cancelled it: its Future is cancelled although it was RUNNING
        (on a ring), as if it had waited in the backlog."""
        if self.mon is not None:
            self.mon.outcome(task.id, _M_CANCELLED, task.attempts)
        job = task.job
        if job is not None:
            job.store(task.index, _Failed(CancelledError("cancelled by shutdown")))
            return
        fut = task.future
        with self.future_cond:
            if fut._state is not _RUNNING and fut._state is not _F_PENDING:
                return
            fut._state = _CANCELLED_NOTIFIED
            for waiter in fut._waiters:
                waiter.add_cancelled(fut)
            self.future_cond.notify_all()
        fut._invoke_callbacks()

    def _deliver_exc(self, task: _Task, exc: BaseException) -> None:
        job = task.job
        if job is not None:
            job.store(task.index, _Failed(exc))
            return
        fut = task.future
        try:
            if isinstance(exc, CancelledError) and not fut.running():
                fut.cancel()
            else:
                fut.set_exception(exc)
        except InvalidStateError:
            pass

    def _fail(self, task: _Task, exc: BaseException, done: list, started: int = -1,
              pid: int = 0, slot: int = 0xFFFF, attempt: int | None = None) -> None:
        # Caller holds the lock. started, pid, slot, attempt (from 0): where
        # and when it was running, for the monitor's record of the attempt.
        self.tasks.pop(task.id, None)
        done.append((task, -1, 0, exc))
        if self.mon is not None:
            self.mon.outcome(task.id, _monitor_outcome(exc),
                             task.attempts if attempt is None else attempt, started, pid, slot)

    def _on_death(self, slot: int, pid: int, code: int, sig: int, done: list) -> None:
        s = self.slots[slot]
        if s.pid != pid:
            return
        self.dead_pids.append(pid)
        # Results it pushed before dying were drained in this pass already.
        for tid, kind, flags, data in self.chan.drain_slot(slot):
            task = self.tasks.pop(tid, None)
            if task is not None:
                s.tasks.pop(tid, None)
                done.append((task, kind, flags, data))
        current, started = self.chan.slot_state(slot)
        mon = self.mon
        if mon is not None:
            mon.worker_ended(slot, pid)
        else:
            started = -1
        how = _exit_text(code, sig)
        abnormal = sig != 0 or code != 0
        tasks = list(s.tasks.values())
        if current not in s.tasks and abnormal and tasks:
            current = tasks[0].id  # died between tasks (e.g. while loading one): blame the oldest
        requeue = []
        for task in tasks:
            if task.id not in self.tasks:
                continue
            task.slot = -1
            if task.id != current:
                requeue.append(task)
                continue
            if task.kill_reason == "timeout":
                self._fail(task, TaskTimeout(
                    f"task {task.id} ({self._task_name(task)}) ran past its time limit of "
                    f"{task.timeout_ns / 1e9:g} s; {self._worker_label(pid)} was killed and "
                    "replaced"), done, started, pid, slot)
            elif task.kill_reason == "cancel":
                self._fail(task, CancelledError(
                    f"task {task.id} ({self._task_name(task)}) was cancelled while running; "
                    f"{self._worker_label(pid)} was killed and replaced"), done, started, pid, slot)
            else:
                task.attempts += 1
                if task.attempts <= self.retries:
                    requeue.append(task)
                    if mon is not None:
                        mon.outcome(task.id, _M_RETRIED, task.attempts - 1, started, pid, slot)
                else:
                    self._fail(task, WorkerLost(
                        f"{self._worker_label(pid)} {how} while running task {task.id} "
                        f"({self._task_name(task)})",
                        exitcode=None if sig else code, signal=sig or None), done, started, pid,
                        slot, task.attempts - 1)
        self.backlog.extendleft(reversed(requeue))
        s.tasks = {}
        if self.closing and not self.tasks and not requeue:
            s.pid = 0
            return
        if not s.ready and abnormal:
            s.early_deaths += 1
            if s.early_deaths >= _MAX_EARLY_DEATHS:
                self._break(BrokenPool(f"workers keep dying before they are ready "
                                       f"(last: {pid} {how})"), done=done)
                return
        try:
            self._start_worker(s)
        except BaseException as exc:  # noqa: BLE001
            self._break(BrokenPool(f"could not start a replacement worker: {exc}"), cause=exc,
                        done=done)

    def _check_time_limits(self) -> None:
        now = self.core.monotonic_ns()
        for tid in list(self.timed):
            task = self.tasks.get(tid)
            if task is None:
                self.timed.discard(tid)
                continue
            if task.slot < 0 or task.kill_reason:
                continue
            current, started = self.chan.slot_state(task.slot)
            if current == tid and now - started > task.timeout_ns:
                task.kill_reason = "timeout"
                self._kill(self.slots[task.slot].pid)

    def forget(self, fut: Future) -> None:
        """A backlogged task's Future was cancelled: nothing will run it (the
        backlog skips tasks no longer in self.tasks). Lock not held."""
        task = fut if getattr(fut, "_engine", None) is self else None
        if task is None:
            return
        with self.lock:
            if task.slot < 0 and self.tasks.get(task.id) is task:
                del self.tasks[task.id]
                self.timed.discard(task.id)
                task.keep = None
                task.data = _NO_DATA
                if self.mon is not None:
                    self.mon.outcome(task.id, _M_CANCELLED, task.attempts)

    def cancel_running(self, fut: Future) -> bool:
        task = fut if getattr(fut, "_engine", None) is self else None
        if task is None or fut.done():
            return False
        with self.lock:
            if task.id not in self.tasks:
                return False
            if task.slot < 0:  # still in the backlog
                del self.tasks[task.id]
                self.timed.discard(task.id)
                done = [(task, -1, 0, CancelledError(f"task {task.id} cancelled"))]
                if self.mon is not None:
                    self.mon.outcome(task.id, _M_CANCELLED, task.attempts)
            else:
                current, _ = self.chan.slot_state(task.slot)
                if current != task.id:
                    # Queued in a worker's ring: it will run, but nobody waits for it.
                    del self.tasks[task.id]
                    self.slots[task.slot].tasks.pop(task.id, None)
                    self.timed.discard(task.id)
                    done = [(task, -1, 0, CancelledError(f"task {task.id} cancelled"))]
                    if self.mon is not None:
                        self.mon.outcome(task.id, _M_CANCELLED, task.attempts)
                else:
                    task.kill_reason = "cancel"
                    self._kill(self.slots[task.slot].pid)
                    done = []
        if done:
            self._finish(done)
            return True
        self.wait_until(fut.done, 10.0)
        return fut.cancelled() or isinstance(fut.exception(0), CancelledError)

    # ------------------------------------------------------------ ending
    def _break(self, exc: BaseException, *, cause: BaseException | None = None,
               done: list) -> None:
        """The pool cannot go on: every task fails with exc. Lock held; the
        caller finishes `done` after releasing it."""
        if cause is not None:
            exc.__cause__ = cause
        if self.broken is None:
            self.broken = exc
        for task in list(self.tasks.values()):
            self._fail(task, exc, done)
        self.backlog.clear()
        self.timed.clear()
        self.closing = True

    def _next_to_start(self, s: _Slot) -> int:
        """The id of the task slot s's worker starts next (0: none known):
        the one after its current task in s.tasks, which is in push order,
        the order the worker runs them in; the first one if it runs none
        (or one whose result was read already). Lock held. If the worker
        moves on meanwhile, the task named here runs or has run, and every
        later one is cancelled: never more than one queued task runs."""
        current, _ = self.chan.slot_state(s.index)
        it = iter(s.tasks)
        if current in s.tasks:
            for tid in it:
                if tid == current:
                    break
        return next(it, 0)

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        done: list = []
        with self.lock:
            self.closing = True
            if cancel_futures:
                # Tasks on the rings (or taken, not started) up to here:
                # their workers skip them, but for the next one each.
                self._write_cancel_mark(next(self.ids),
                                        {s.index: self._next_to_start(s) for s in self.slots})
                for task in list(self.backlog):
                    if task.id in self.tasks:
                        self._fail(task, CancelledError("cancelled by shutdown"), done)
                self.backlog.clear()
            idle = not self.tasks
        if done:
            self._finish(done)
        if self.stopped:
            return
        if wait:
            self.wait_until(lambda: not self.tasks or self.stopped, None)
            self.close(2.0)
        elif idle:
            self.close(2.0)
        else:
            self.chan.ring_doorbell()  # the collector closes once the last task is done

    def terminate(self) -> None:
        with self.lock:
            if self.stopped:
                return
            done: list = []
            self.closing = True
            for task in list(self.tasks.values()):
                self._fail(task, BrokenPool("the pool was terminated"), done)
            self.backlog.clear()
        self.close(0)
        self._finish(done)

    def close(self, grace: float) -> None:
        """Stops workers (grace seconds to leave on their own, then SIGKILL),
        the supervisor and the collector. Idempotent."""
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            self.closing = True
        self.chan.shutdown()
        self._stop_workers(grace)
        self.chan.ring_doorbell()
        with self.cv:
            self.cv.notify_all()
        t = getattr(self, "thread", None)
        if t is not None and t is not threading.current_thread():
            t.join(5)
        # Drop what keeps segments alive.
        with self.lock:
            self.fns.clear()
            self.fn_data.clear()
            self.retired.clear()
            self.fn_keep.clear()
            self.init_data = None
            self.init_payload = None
            for task in self.tasks.values():
                task.keep = None
            self._release_transport()
        if self.mon is not None:
            self.mon.close([(s.index, s.pid) for s in self.slots if s.pid])


# Executors that were never shut down: their submitted work still runs before
# the interpreter exits (concurrent.futures semantics), unless it exits on an
# uncaught Ctrl-C, which terminates them at once. Backends of every transport
# (anything with shutdown(wait=) and terminate()).
_finish_at_exit: "weakref.WeakSet" = weakref.WeakSet()
#: set by _at_exit: interpreter shutdown has begun (concurrent.futures'
#: _global_shutdown); Executors made after it accept no task
_interpreter_exiting = False


def interpreter_exiting() -> bool:
    return _interpreter_exiting


def finish_at_exit(backend: Any) -> None:
    """backend's submitted work finishes when the interpreter exits."""
    _finish_at_exit.add(backend)


def _at_exit() -> None:
    global _interpreter_exiting
    _interpreter_exiting = True
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for backend in list(_finish_at_exit):
        try:
            if interrupted:
                backend.terminate()
            else:
                backend.shutdown(wait=True)
        except Exception:  # noqa: BLE001 - the finalizer still terminates it
            pass


if hasattr(threading, "_register_atexit"):  # before atexit: threads still usable
    threading._register_atexit(_at_exit)


class EngineBackend(Backend):
    """What a backend over the ledger offers the front ends (Pool, Executor):
    every call goes to its ``_engine`` (an Engine subclass the transport's
    backend makes in its __init__)."""

    _engine: Engine

    def submit(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, *,
               timeout: float | None = None) -> Future:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._engine.submit(fn, tuple(args), kwargs or None, timeout)

    def submitter(self) -> Callable[[Callable, tuple, "dict | None", "float | None"], Future]:
        return self._engine.submit  # checks callable(fn) when it first meets fn

    def map(self, fn: Callable, iterable: Iterable, *, chunksize: int | None = None,
            ordered: bool = True, timeout: float | None = None) -> Iterator[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._engine.map(fn, iterable, chunksize, ordered, timeout)

    def map_eager(self, fn: Callable, items: list, *, chunksize: int | None = None,
                  timeout: float | None = None) -> Iterator[Any]:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        return self._engine.map(fn, items, chunksize, True, timeout, eager=True)

    def map_list(self, fn: Callable, iterable: Iterable, *,
                 chunksize: int | None = None) -> list:
        """``list(map(...))`` without a generator step per item."""
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        out: list = []
        extend = out.extend
        for parts in self._engine.map(fn, iterable, chunksize, True, None, chunks=True):
            for part in parts:
                extend(part)
        return out

    def cancel_running(self, future: Future) -> bool:
        return self._engine.cancel_running(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._engine.shutdown(wait, cancel_futures)

    def terminate(self) -> None:
        self._engine.terminate()

    def finish_at_exit(self) -> None:
        """Let submitted work finish at interpreter exit (Executor semantics);
        without this (Pool semantics) exit terminates the workers."""
        if interpreter_exiting():
            # Made in an atexit callback: it accepts no task, as in
            # concurrent.futures, and stops now (no exit hook would stop it
            # any more: its workers and threads outlived the interpreter's end).
            self._engine.terminate()
            return
        finish_at_exit(self)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids (for tests and monitoring)."""
        return self._engine.worker_pids()
