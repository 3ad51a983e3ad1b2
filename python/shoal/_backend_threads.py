"""The ``threads`` backend: Python callables on shoal's C++ thread pool.

For I/O-bound work and for libraries that release the GIL (numpy, I/O,
compiled code); pure-Python CPU work runs one thread at a time (the GIL), so
use the ``processes`` backend for that.

Data flow of one task::

    submit(fn, args) ─> _WorkItem (in state.pending) ─> _core.ThreadPool.submit(item.run)
                                                              │ C++ work-stealing pool
    worker k (its own Python thread state, GIL only while running Python):
        item.run(): leave pending ─> Future.set_running_or_notify_cancel()
                    ─> [deadline to the watchdog] ─> fn(*args) ─> set_result / set_exception
    watchdog thread: a running task past its deadline ─> its Future raises TaskTimeout
                     (the thread itself cannot be killed: it runs on until fn returns)

Semantics follow ``concurrent.futures.ThreadPoolExecutor``: exceptions
(BaseException included) go to the Future, with the formatted traceback as a
``shoal.RemoteTraceback`` ``__cause__`` like the processes backend; the
initializer runs once on each thread as it starts and a failing initializer
breaks the pool (``shoal.BrokenPool``); shutdown(wait, cancel_futures) as in
concurrent.futures; at interpreter exit, queued and running tasks finish first.

Library threads: ``workers`` threads each calling a BLAS that runs its own
threads would run workers x threads on the CPUs, so the pool caps them at
CPUs // workers (the allocation's CPUs, as default_workers() counts them),
as the processes backend does in each worker. All threads share one process,
so the cap has two scopes:

- OpenMP runtimes keep the thread count per calling thread
  (``omp_set_num_threads`` sets the caller's ICV): each pool thread caps its
  own as it starts; the driver's thread and other pools are not touched.
- BLAS libraries (OpenBLAS, MKL, BLIS) keep one process-wide count: it is
  capped while the pool is alive, to the smallest cap of the live pools, and
  the original counts come back when the last of them shuts down. The
  driver's own BLAS calls run under the cap meanwhile.

Only libraries already loaded when the pool starts (or, for OpenMP, when a
pool thread starts) are capped, through threadpoolctl, and only if numpy,
scipy, torch or sklearn is imported (importing threadpoolctl costs 20 ms).
The environment is not changed: it is the whole process's. A count the user
set (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, ...) is kept, with one warning if
it oversubscribes (allocation.thread_caps).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
import traceback
import weakref
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable

from ._backend import Backend, register
from ._errors import BrokenPool, RemoteTraceback, TaskTimeout


def _settle(method: Callable, value: Any) -> None:
    """Complete a Future unless the watchdog or terminate() already did."""
    try:
        method(value)
    except InvalidStateError:
        pass


class _Watchdog:
    """One thread for every threads backend: fails the Futures of tasks that
    run past their timeout. Stopped at interpreter exit (not a daemon: a
    daemon thread alive during finalization would keep objects alive past
    the extension's teardown)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, deadline: float, future: Future, timeout: float) -> None:
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._seq), future, timeout))
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="shoal-threads-watchdog")
                self._thread.start()
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._heap and not self._stopped:
                    self._cv.wait()
                if self._stopped:
                    self._heap.clear()
                    return
                deadline, _, future, timeout = self._heap[0]
                if future.done():
                    heapq.heappop(self._heap)
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                heapq.heappop(self._heap)
            _settle(future.set_exception, TaskTimeout(
                f"task ran longer than its timeout of {timeout} s (the threads backend cannot "
                "stop a running thread: it goes on until the function returns)"))


_watchdog = _Watchdog()

_NATIVE_USERS = ("numpy", "scipy", "torch", "sklearn")


def _controller():
    """threadpoolctl's view of the loaded libraries, or None where no library
    that runs a thread pool can be loaded yet (or threadpoolctl is missing)."""
    import sys

    if not any(m in sys.modules for m in _NATIVE_USERS):
        return None
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class _BlasCap:
    """The process-wide BLAS cap while threads-backend pools are alive: the
    smallest of their caps; the counts from before the first come back after
    the last one (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caps: list = []      # ThreadCaps of the live pools that cap
        self._saved: list = []     # (library controller, its count before the first pool)

    def acquire(self, caps: Any) -> None:
        with self._lock:
            if not self._caps:
                ctl = _controller()
                self._saved = [] if ctl is None else [
                    (lib, lib.num_threads) for lib in ctl.lib_controllers if lib.user_api == "blas"]
            self._caps.append(caps)
            self._apply()

    def release(self, caps: Any) -> None:
        with self._lock:
            if caps not in self._caps:
                return
            self._caps.remove(caps)
            self._apply()
            if not self._caps:
                self._saved = []

    def _apply(self) -> None:
        from .allocation import library_variable

        for lib, original in self._saved:
            var = library_variable(lib.user_api, lib.internal_api)
            limits = [n for n in (c.imposed(var) for c in self._caps) if n is not None]
            target = min(limits + ([original] if original else [])) if limits else original
            if target:
                lib.set_num_threads(target)


_blas_cap = _BlasCap()


def _cap_openmp_here(caps: Any) -> None:
    """Caps the OpenMP runtimes loaded now, for the calling thread only."""
    ctl = _controller()
    if ctl is None:
        return
    n = caps.imposed("OMP_NUM_THREADS")
    if n is None:
        return
    for lib in ctl.lib_controllers:
        if lib.user_api == "openmp":
            lib.set_num_threads(n)


class _State:
    """What the worker threads share with the backend. Workers hold this, not
    the backend, so a forgotten backend can still be garbage-collected."""

    def __init__(self, initializer: Callable | None, initargs: tuple, caps: Any = None,
                 mon: Any = None) -> None:
        self.caps = caps  # allocation.ThreadCaps: library threads per pool thread
        # The monitor's PoolRecorder (shoal/monitor/_session.py), None when off;
        # each pool thread then has its own ring writer in local.ring.
        self.mon = mon
        self.lock = threading.Lock()
        self.pending: set[_WorkItem] = set()   # submitted, not started (guarded by lock)
        self.running: set[_WorkItem] = set()   # started, not finished (guarded by lock)
        self.broken: str | None = None
        self.initializer = initializer
        self.initargs = initargs
        self.local = threading.local()

    def on_thread_start(self, index: int) -> None:
        self.local.worker = True
        if self.mon is not None:
            try:
                self.local.ring = self.mon.thread_writer(index)
                self.mon.worker_started(index, 0, threading.get_native_id())
            except Exception:  # noqa: BLE001 - the monitor never fails a pool
                self.local.ring = None
        if self.caps is not None:
            try:
                _cap_openmp_here(self.caps)
            except Exception:  # noqa: BLE001 - capping is best effort
                pass
        if self.initializer is None:
            return
        try:
            self.initializer(*self.initargs)
        except BaseException:
            self.break_pool("A thread initializer failed, the pool is not usable anymore:\n"
                            + traceback.format_exc())

    def break_pool(self, why: str) -> None:
        with self.lock:
            if self.broken is None:
                self.broken = why
            items = list(self.pending)
            self.pending.clear()
        for item in items:
            if item.future.set_running_or_notify_cancel():
                _settle(item.future.set_exception, BrokenPool(why))


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs", "timeout", "state", "tid", "__weakref__")

    def __init__(self, state: _State, future: Future, fn: Callable, args: tuple, kwargs: dict,
                 timeout: float | None) -> None:
        self.state, self.future, self.fn = state, future, fn
        self.args, self.kwargs, self.timeout = args, kwargs, timeout
        self.tid = 0  # the monitor's task id, when it is on

    def run(self) -> None:  # on a worker thread, GIL held
        st = self.state
        with st.lock:
            if self not in st.pending:  # taken by break_pool
                return
            st.pending.discard(self)
            st.running.add(self)
        try:
            future = self.future
            if not future.set_running_or_notify_cancel():
                if st.mon is not None:
                    st.mon.outcome(self.tid, 4)  # cancelled before it started
                return
            if st.broken is not None:
                _settle(future.set_exception, BrokenPool(st.broken))
                return
            if self.timeout is not None:
                _watchdog.add(time.monotonic() + self.timeout, future, self.timeout)
            mon = st.mon
            if mon is not None:
                t0 = time.monotonic_ns()
            try:
                result = self.fn(*self.args, **self.kwargs)
            except BaseException as exc:
                if mon is not None:
                    _record(st, self.tid, t0, 1, future)
                if exc.__cause__ is None:
                    exc.__cause__ = RemoteTraceback(
                        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                _settle(future.set_exception, exc)
                del exc  # break the frame <-> exception cycle
            else:
                if mon is not None:
                    _record(st, self.tid, t0, 0, future)
                _settle(future.set_result, result)
                result = None
        finally:
            with st.lock:
                st.running.discard(self)
            self.fn = self.args = self.kwargs = None  # free them now, not with the Future
            # This frame is in the traceback of an exception the Future now
            # holds: its locals must not lead back to the Future (a cycle
            # only the cyclic collector frees; concurrent.futures' _WorkItem
            # sets self = None for the same reason).
            self = future = st = None  # noqa: PLW0642


def _record(st: _State, tid: int, t0: int, outcome: int, future: Future) -> None:
    """The monitor's record of a task this thread ran (nothing moves between
    threads: no bytes in or out). A Future the watchdog already failed with
    TaskTimeout makes it a timed-out task (outcome 3)."""
    ring = getattr(st.local, "ring", None)
    if ring is not None:
        ring.record(tid, t0, 0, 3 if future.done() else outcome)


_live: "weakref.WeakSet[ThreadBackend]" = weakref.WeakSet()
_exiting = False


def threads_running() -> bool:
    """Whether a pool of this backend may have threads in this process: one
    that exists and was not joined (shutdown(wait=True)). The processes
    backend does not fork then: a forked child would inherit whatever Python
    locks those threads hold."""
    return any(not backend._joined for backend in list(_live))


def _in_forked_child() -> None:
    # The pools' threads stayed in the parent: their queues would never run.
    # The C++ pool refuses submit() there too (ThreadPool::forked_away) and
    # drops its threads' handles without joining them.
    for backend in list(_live):
        backend._joined = True
        if backend._state.broken is None:
            backend._state.broken = (f"this threads-backend pool belongs to process "
                                     f"{backend._owner_pid}; this process ({os.getpid()}) "
                                     f"was forked from it, without its threads")
    _live.clear()


os.register_at_fork(after_in_child=_in_forked_child)


def _at_exit() -> None:
    """Before the interpreter finalizes: let every pool finish and join its
    threads while they can still take the GIL (as concurrent.futures does)."""
    global _exiting
    _exiting = True
    for backend in list(_live):
        backend.shutdown(wait=True)
    _watchdog.stop()


if hasattr(threading, "_register_atexit"):  # runs before atexit, with threads still usable
    threading._register_atexit(_at_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_at_exit)


@register
class ThreadBackend(Backend):
    """Runs Python callables on ``workers`` C++ pool threads.

    ``max_tasks_per_worker`` and ``retries`` are accepted for the common
    contract and ignored: threads are not recycled and never die of a task.
    A task's ``timeout`` fails its Future with ``shoal.TaskTimeout``, but the
    thread keeps running the function (Python threads cannot be killed)."""

    name = "threads"
    # Threads waiting on I/O leave their CPU free: more threads than CPUs is
    # what this backend is for, not oversubscription (no warning).
    workers_use_cpus = False

    def __init__(self, workers: int, **options: Any) -> None:
        super().__init__(workers, **options)
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if self.initializer is not None and not callable(self.initializer):
            raise TypeError("initializer must be callable")
        from . import _core
        from .allocation import thread_caps, warn_thread_caps

        caps = thread_caps(workers)
        warn_thread_caps(caps)
        self._caps = caps
        try:
            _blas_cap.acquire(caps)
        except Exception:  # noqa: BLE001 - capping is best effort
            self._caps = None
        from .monitor import _session

        mon = _session.recorder("threads", workers, False)
        self._state = _State(self.initializer, tuple(self.initargs), caps, mon)
        self._lock = threading.Lock()
        self._shutdown = False
        self._joined = False
        self._owner_pid = os.getpid()
        self._pool = _core.ThreadPool(workers, self._state.on_thread_start)
        _live.add(self)

    def submit(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, *,
               timeout: float | None = None) -> Future:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        future: Future = Future()
        st = self._state
        with self._lock:
            if st.broken is not None:
                raise BrokenPool(st.broken)
            if _exiting:  # first: _at_exit has shut this pool down too
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            item = _WorkItem(st, future, fn, tuple(args), dict(kwargs or {}), timeout)
            mon = st.mon
            if mon is not None:
                item.tid = tid = next(mon.task_ids)
                mon.submit(tid, mon.fn_id(fn, args), 0)
            with st.lock:
                st.pending.add(item)
            self._pool.submit(item.run)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        st = self._state
        with self._lock:
            self._shutdown = True
            self._pool.stop()  # workers still drain the queue; cancelled items are skipped
        if cancel_futures:
            with st.lock:
                items = list(st.pending)
            for item in items:  # outside the locks: cancel() runs done-callbacks
                if item.future.cancel():
                    # It stays in the C++ queue until a thread skips it: free
                    # what it would have run now (concurrent.futures drops its
                    # work items from the queue). run() never reads them now.
                    item.fn = item.args = item.kwargs = None
        if wait:
            if getattr(st.local, "worker", False):
                raise RuntimeError("shutdown(wait=True) from one of the pool's own threads "
                                   "would wait for itself")
            self._pool.join()  # GIL released inside: workers finish their Python tasks
            self._joined = True
            if st.mon is not None:
                st.mon.close([(i, 0) for i in range(self.workers)])
        self._release_caps()  # tasks still running after wait=False run uncapped

    def _release_caps(self) -> None:
        caps, self._caps = self._caps, None
        if caps is not None:
            _blas_cap.release(caps)

    def terminate(self) -> None:
        """Cancel queued tasks and fail the Futures of running ones with
        BrokenPool now; the running threads finish in the background."""
        self.shutdown(wait=False, cancel_futures=True)
        with self._state.lock:
            running = list(self._state.running)
        for item in running:
            _settle(item.future.set_exception, BrokenPool("the pool was terminated"))

    def __del__(self) -> None:  # a backend dropped without shutdown: workers end when idle
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.stop()
        if getattr(self, "_caps", None) is not None:
            self._release_caps()
