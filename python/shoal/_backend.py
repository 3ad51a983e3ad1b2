"""The contract between shoal's front ends (``Pool``, ``Executor``) and the
engines that run Python callables (``processes``, ``threads``, later ``mpi``).

A backend runs ``fn(*args, **kwargs)`` somewhere and completes a
``concurrent.futures.Future``. The front ends only ever call the methods
below, so changing ``backend=`` is the only change a user makes.

Backends register themselves by name with :func:`register`; the front end
looks them up with :func:`create`.
"""

from __future__ import annotations

import abc
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator


class Backend(abc.ABC):
    """One running engine. Created by :func:`create`, owned by one front end."""

    #: registered name, e.g. "processes"
    name: str = ""
    #: whether each worker keeps a CPU busy (processes, MPI ranks): then more
    #: workers than CPUs is oversubscription, and create() warns about it.
    workers_use_cpus: bool = True

    def __init__(self, workers: int, *, initializer: Callable | None = None,
                 initargs: tuple = (), max_tasks_per_worker: int | None = None,
                 retries: int = 0) -> None:
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks_per_worker = max_tasks_per_worker
        self.retries = retries

    @abc.abstractmethod
    def submit(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, *,
               timeout: float | None = None) -> Future:
        """Schedule ``fn(*args, **kwargs)``; the Future gets its result or its
        exception (remote traceback attached as ``__cause__``). Past ``timeout``
        seconds of running, the Future raises ``shoal.TaskTimeout``. Raises
        ``shoal.BrokenPool`` (or RuntimeError after shutdown) if it cannot
        accept work."""

    def submitter(self) -> Callable[[Callable, tuple, "dict | None", "float | None"], Future]:
        """``submit`` as a plain function of (fn, args tuple, kwargs or None,
        timeout), for front ends that already hold those (Executor.submit):
        a backend may return its engine's entry point and skip a layer."""
        submit = self.submit

        def call(fn: Callable, args: tuple, kwargs: dict | None,
                 timeout: float | None) -> Future:
            return submit(fn, args, kwargs, timeout=timeout)

        return call

    def map(self, fn: Callable, iterable: Iterable, *, chunksize: int | None = None,
            ordered: bool = True, timeout: float | None = None) -> Iterator[Any]:
        """Yield ``fn(x)`` for each x (in order if ``ordered``). ``chunksize``
        None means the backend chooses. The default sends chunks through
        :meth:`submit`; backends override this for speed."""
        from ._mapping import map_via_submit

        return map_via_submit(self, fn, iterable, chunksize=chunksize, ordered=ordered,
                              timeout=timeout)

    def map_eager(self, fn: Callable, items: list, *, chunksize: int | None = None,
                  timeout: float | None = None) -> Iterator[Any]:
        """Submit every item before returning (``concurrent.futures``'
        ``Executor.map`` contract: work runs even if nobody iterates) and
        return an iterator over the results in order; ``timeout`` counts from
        this call. The default sends chunks through :meth:`submit`."""
        from ._mapping import map_via_submit

        return map_via_submit(self, fn, items, chunksize=chunksize, ordered=True,
                              timeout=timeout, eager=True)

    def cancel_running(self, future: Future) -> bool:
        """Stop a task that is already running (for processes: kill and replace
        its worker). Returns True if it was stopped. Default: cannot."""
        return False

    @abc.abstractmethod
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or cancel) queued tasks; release every
        process, thread and shared-memory segment. Idempotent."""

    def terminate(self) -> None:
        """Stop now: pending and running tasks fail, resources are released."""
        self.shutdown(wait=False, cancel_futures=True)


_REGISTRY: dict[str, type[Backend]] = {}


def register(cls: type[Backend]) -> type[Backend]:
    _REGISTRY[cls.name] = cls
    return cls


# Built-in backends, imported on first use: the threads backend must not pay
# for the process engine.
_BUILTIN = {"processes": "._backend_processes", "threads": "._backend_threads",
            "mpi": "._backend_mpi"}


def available() -> list[str]:
    """Every backend name create() accepts: the built-in ones (loaded or not)
    and those registered since."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def default_workers(name: str) -> int:
    """What ``workers=None`` means for backend ``name``: the CPUs this job
    may use, or (mpi) the serving ranks."""
    _load_builtin(name)
    cls = _REGISTRY.get(name)
    if cls is not None and hasattr(cls, "default_workers"):
        return cls.default_workers()
    from .allocation import default_workers as cpus

    return cpus()


def create(name: str, workers: int, **options: Any) -> Backend:
    """A running backend ``name`` with ``workers`` workers. Both front ends
    (Pool, Executor) come through here, so the checks they share live here."""
    _load_builtin(name)
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; the backends are: {', '.join(map(repr, available()))}"
        ) from None
    if cls.workers_use_cpus and isinstance(workers, int) and not isinstance(workers, bool):
        from .allocation import warn_if_oversubscribed

        warn_if_oversubscribed(workers)
    return cls(workers, **options)


def _load_builtin(name: str) -> None:
    import importlib

    module = _BUILTIN.get(name)
    if module is not None and name not in _REGISTRY:
        importlib.import_module(module, __package__)
