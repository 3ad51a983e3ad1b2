"""shoal's two front ends over one engine: ``Pool`` (the multiprocessing.Pool
surface) and ``Executor`` (a real concurrent.futures.Executor).

Both only talk to a backend through ``shoal._backend`` (``backend="processes"``
by default; ``"threads"`` and later ``"mpi"`` slot in without changing user
code)::

    with shoal.Pool() as pool:                  # every core this job was given
        squares = pool.map(f, range(1_000_000))  # list, adaptive chunks
        r = pool.apply_async(g, (x,), timeout=60)  # kills + replaces a stuck worker

    with shoal.Executor(max_workers=4) as ex:
        futs = [ex.submit(f, i) for i in range(100)]
        for fut in concurrent.futures.as_completed(futs): ...
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import threading
from typing import Any, Callable, Iterable, Iterator

from . import _backend
from .allocation import default_workers

__all__ = ["Pool", "Executor", "AsyncResult"]


class _Star:
    """fn(*args) for starmap; a class (not a closure) so that it pickles by
    reference to shoal.pool plus the wrapped fn."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, args: Any) -> Any:
        return self.fn(*args)

    def __reduce__(self):
        return (_Star, (self.fn,))


def _resolve_workers(workers: int | None, what: str, backend: str = "processes") -> int:
    if workers is None:
        return _backend.default_workers(backend) if backend != "processes" else default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {workers!r}")
    return workers


def _resolve_max_tasks(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive int or None, got {value!r}")
    return value


def _progress(it: Iterator, total: int | None, enabled: bool) -> Iterator:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return iter(tqdm(it, total=total, unit="task", smoothing=0.1))


def _length(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class _PoolTimeout(multiprocessing.TimeoutError, TimeoutError):
    """AsyncResult.get()'s timeout: both the builtin TimeoutError (what
    concurrent.futures raises) and multiprocessing.TimeoutError (what code
    ported from multiprocessing catches)."""


def _gather(parts: list[cf.Future]) -> cf.Future:
    """A Future of the concatenated results of parts (lists), in order;
    the first failed part's exception (in order) if any failed."""
    out: cf.Future = cf.Future()
    if not parts:
        out.set_result([])
        return out
    left = [len(parts)]
    lock = threading.Lock()

    def one(_: cf.Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        try:
            value = [x for p in parts for x in p.result()]
        except BaseException as exc:  # noqa: BLE001 - CancelledError included
            out.set_exception(exc)
        else:
            out.set_result(value)

    for p in parts:
        p.add_done_callback(one)
    return out


class AsyncResult:
    """What ``Pool.apply_async`` returns (the multiprocessing.AsyncResult surface)."""

    def __init__(self, future: cf.Future, backend: _backend.Backend,
                 callback: Callable | None, error_callback: Callable | None) -> None:
        self._future = future
        self._backend = backend
        if callback is not None or error_callback is not None:
            def done(f: cf.Future) -> None:
                exc = None if f.cancelled() else f.exception()
                if f.cancelled():
                    exc = cf.CancelledError()
                if exc is None:
                    if callback is not None:
                        callback(f.result())
                elif error_callback is not None:
                    error_callback(exc)
            future.add_done_callback(done)

    @property
    def future(self) -> cf.Future:
        return self._future

    def get(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except TimeoutError:
            if self._future.done():
                raise  # the task's own TimeoutError (or shoal.TaskTimeout)
            raise _PoolTimeout(f"no result within {timeout} s") from None

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._future.exception(timeout)
        except (cf.TimeoutError, cf.CancelledError):
            pass

    def ready(self) -> bool:
        return self._future.done()

    def successful(self) -> bool:
        if not self._future.done():
            raise ValueError("the result is not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def cancel(self, *, running: bool = True) -> bool:
        """Cancels the task; if it is already running and ``running`` is true,
        its worker is killed and replaced (the task raises CancelledError)."""
        if self._future.cancel():
            return True
        return running and self._backend.cancel_running(self._future)


class Pool:
    """``multiprocessing.Pool``'s surface on shoal's engine.

    The first four parameters are multiprocessing's, positional too:
    ``Pool(4, init, (x,), 100)``. ``workers=None`` means
    ``shoal.default_workers()``. ``context`` (a multiprocessing context) is
    accepted and not used: shoal chooses how to start its workers (fork while
    that is safe, fresh interpreters otherwise). ``retries``: how often a task
    whose worker died is re-run before it fails with ``shoal.WorkerLost``.
    Functions from ``__main__``, lambdas and closures work; no ``if __name__ ==
    "__main__"`` guard is needed.
    """

    _state = "unstarted"  # (for __del__ of a pool whose __init__ raised)

    def __init__(self, workers: int | None = None, initializer: Callable | None = None,
                 initargs: tuple = (), maxtasksperchild: int | None = None,
                 context: Any = None, *, max_tasks_per_worker: int | None = None,
                 retries: int = 0, backend: str = "processes",
                 processes: int | None = None) -> None:
        # processes= / maxtasksperchild=: multiprocessing.Pool's names.
        if processes is not None:
            if workers is not None:
                raise TypeError("give workers= or processes=, not both")
            workers = processes
        if maxtasksperchild is not None:
            if max_tasks_per_worker is not None:
                raise TypeError("give max_tasks_per_worker= or maxtasksperchild=, not both")
            max_tasks_per_worker = _resolve_max_tasks(maxtasksperchild, "maxtasksperchild")
        max_tasks_per_worker = _resolve_max_tasks(max_tasks_per_worker, "max_tasks_per_worker")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._workers = _resolve_workers(workers, "workers", backend)
        self._backend = _backend.create(backend, self._workers, initializer=initializer,
                                        initargs=tuple(initargs),
                                        max_tasks_per_worker=max_tasks_per_worker,
                                        retries=retries)
        self._workers = self._backend.workers  # (mpi: at most the serving ranks)
        self._state = "running"
        self._lock = threading.Lock()

    def __del__(self) -> None:
        # As multiprocessing (3.8+): a running pool that nobody closed. Its
        # engine's own finalizer then stops the workers.
        if self._state == "running":
            import warnings

            warnings.warn(f"unclosed running shoal pool {self!r}", ResourceWarning,
                          source=self)

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def backend(self) -> _backend.Backend:
        return self._backend

    def _check_running(self) -> None:
        if self._state != "running":
            raise ValueError(f"Pool not running (it was {self._state})")

    # -------------------------------------------------------------- maps
    def imap(self, fn: Callable, iterable: Iterable, chunksize: int | None = None, *,
             progress: bool = False) -> Iterator[Any]:
        """Results in order, as they come. ``chunksize=None``: chosen adaptively."""
        self._check_running()
        it = self._backend.map(fn, iterable, chunksize=chunksize, ordered=True)
        return _progress(it, _length(iterable), progress)

    def imap_unordered(self, fn: Callable, iterable: Iterable, chunksize: int | None = None, *,
                       progress: bool = False) -> Iterator[Any]:
        """Results in completion order."""
        self._check_running()
        it = self._backend.map(fn, iterable, chunksize=chunksize, ordered=False)
        return _progress(it, _length(iterable), progress)

    def map(self, fn: Callable, iterable: Iterable, chunksize: int | None = None, *,
            progress: bool = False) -> list:
        """``[fn(x) for x in iterable]`` in parallel. With ``chunksize=1`` every
        item is its own task (own error, own retry)."""
        map_list = getattr(self._backend, "map_list", None)
        if map_list is not None and not progress:
            self._check_running()
            return map_list(fn, iterable, chunksize=chunksize)
        return list(self.imap(fn, iterable, chunksize, progress=progress))

    def starmap(self, fn: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
                *, progress: bool = False) -> list:
        """``[fn(*args) for args in iterable]`` in parallel."""
        return list(self.imap(_Star(fn), iterable, chunksize, progress=progress))

    def map_async(self, fn: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None,
                  error_callback: Callable | None = None) -> AsyncResult:
        """``map`` without waiting: ``get()`` returns the list. Every chunk is
        submitted now; ``callback(list)`` or ``error_callback(exc)`` runs once."""
        from ._mapping import auto_chunksize, guided_chunks, run_chunk, use_guided

        self._check_running()
        items = list(iterable)
        n = len(items)
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        if chunksize is None and use_guided(n, self._workers):
            chunks: Iterable = guided_chunks(items, n, self._workers)
        else:
            size = chunksize or auto_chunksize(n, self._workers)
            chunks = (items[i: i + size] for i in range(0, n, size))
        parts = []
        try:
            for chunk in chunks:
                parts.append(self._backend.submit(run_chunk, (fn, chunk)))
        except BaseException:
            for p in parts:
                p.cancel()
            raise
        return AsyncResult(_gather(parts), self._backend, callback, error_callback)

    def starmap_async(self, fn: Callable, iterable: Iterable[Iterable],
                      chunksize: int | None = None, callback: Callable | None = None,
                      error_callback: Callable | None = None) -> AsyncResult:
        """``starmap`` without waiting (see ``map_async``)."""
        return self.map_async(_Star(fn), iterable, chunksize, callback, error_callback)

    # -------------------------------------------------------------- single tasks
    def apply_async(self, fn: Callable, args: tuple = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None,
                    *, timeout: float | None = None) -> AsyncResult:
        """Runs ``fn(*args, **kwds)``. Past ``timeout`` seconds of running, its
        worker is killed and replaced and ``get()`` raises ``shoal.TaskTimeout``."""
        self._check_running()
        fut = self._backend.submit(fn, tuple(args), dict(kwds) if kwds else None,
                                   timeout=timeout)
        return AsyncResult(fut, self._backend, callback, error_callback)

    def apply(self, fn: Callable, args: tuple = (), kwds: dict | None = None, *,
              timeout: float | None = None) -> Any:
        return self.apply_async(fn, args, kwds, timeout=timeout).get()

    # -------------------------------------------------------------- lifetime
    def close(self) -> None:
        """No new tasks; the workers leave once the submitted ones are done."""
        with self._lock:
            if self._state == "running":
                self._state = "closed"
                self._backend.shutdown(wait=False)

    def terminate(self) -> None:
        """Stops now: running and queued tasks fail, workers are killed."""
        with self._lock:
            self._state = "terminated"
        self._backend.terminate()

    def join(self) -> None:
        """Waits for the workers to exit (after close() or terminate())."""
        if self._state == "running":
            raise ValueError("call close() or terminate() before join()")
        self._backend.shutdown(wait=True)

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Unlike multiprocessing (which always terminates), a clean exit lets
        # submitted work finish; an exception stops everything at once.
        if exc_type is None:
            self.close()
            self.join()
        else:
            self.terminate()

    def __repr__(self) -> str:
        return f"<shoal.Pool workers={self._workers} backend={self._backend.name!r} {self._state}>"


class Executor(cf.Executor):
    """A ``concurrent.futures.Executor`` on shoal's engine.

    ``task_timeout``: a time limit for every task of this executor (the
    worker is killed and replaced, the Future raises ``shoal.TaskTimeout``);
    ``submit_with(fn, args, kwargs, timeout=...)`` sets one per task while
    leaving ``submit``'s keyword arguments to ``fn``.
    """

    def __init__(self, max_workers: int | None = None, *, backend: str = "processes",
                 initializer: Callable | None = None, initargs: tuple = (),
                 max_tasks_per_worker: int | None = None, retries: int = 0,
                 task_timeout: float | None = None) -> None:
        if isinstance(max_workers, int) and not isinstance(max_workers, bool) \
                and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")  # concurrent.futures' words
        self._workers = _resolve_workers(max_workers, "max_workers", backend)
        max_tasks_per_worker = _resolve_max_tasks(max_tasks_per_worker, "max_tasks_per_worker")
        if task_timeout is not None and task_timeout <= 0:
            raise ValueError(f"task_timeout must be > 0, got {task_timeout}")
        self._backend = _backend.create(backend, self._workers, initializer=initializer,
                                        initargs=tuple(initargs),
                                        max_tasks_per_worker=max_tasks_per_worker,
                                        retries=retries)
        self._workers = self._backend.workers  # (mpi: at most the serving ranks)
        self._max_workers = self._workers  # what concurrent.futures' executors call it (dask reads it)
        # concurrent.futures lets submitted work finish at interpreter exit.
        getattr(self._backend, "finish_at_exit", lambda: None)()
        self._task_timeout = task_timeout
        self._shutdown = False
        self._submit = self._backend.submitter()

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def backend(self) -> _backend.Backend:
        return self._backend

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._submit(fn, args, kwargs or None, self._task_timeout)

    def submit_with(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, *,
                    timeout: float | None = None) -> cf.Future:
        """``submit`` with a per-task time limit in seconds."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return self._backend.submit(fn, tuple(args), kwargs or None,
                                    timeout=self._task_timeout if timeout is None else timeout)

    def cancel_running(self, future: cf.Future) -> bool:
        """Cancels a task even if it already runs (its worker is killed and
        replaced; the Future raises CancelledError)."""
        if future.cancel():
            return True
        return self._backend.cancel_running(future)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int | None = None) -> Iterator[Any]:
        """Like concurrent.futures: every item is submitted now (the work runs
        even if the results are never taken), results come in order,
        ``timeout`` counts from this call. ``chunksize=None`` chooses one
        adaptively. (``Pool.imap`` is the lazy one, for endless iterables.)"""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if len(iterables) == 1:
            items = iterables[0]
            if not isinstance(items, (list, tuple, range)):
                items = list(items)
            return self._backend.map_eager(fn, items, chunksize=chunksize, timeout=timeout)
        return self._backend.map_eager(_Star(fn), list(zip(*iterables)), chunksize=chunksize,
                                       timeout=timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        self._backend.shutdown(wait=wait, cancel_futures=cancel_futures)

    def terminate(self) -> None:
        """Stops now: pending and running tasks fail, workers are killed."""
        self._shutdown = True
        self._backend.terminate()

    def __repr__(self) -> str:
        return f"<shoal.Executor workers={self._workers} backend={self._backend.name!r}>"
