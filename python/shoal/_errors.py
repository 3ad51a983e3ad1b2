"""The exceptions users catch. One hierarchy for every backend.

    ShoalError
    ├── BrokenPool            the pool can no longer run tasks (a concurrent.futures.BrokenExecutor)
    │   └── WorkerLost        a worker died while running a task (exit code/signal in message;
    │                         a concurrent.futures.process.BrokenProcessPool)
    ├── TaskTimeout           a task ran past its time limit (also a TimeoutError)
    └── SerializationError    an argument or result could not be pickled (names the object)
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base class of every shoal error."""


def _broken_classes() -> None:
    """BrokenPool and WorkerLost derive from concurrent.futures' classes, whose
    modules import multiprocessing and logging: 30 ms of every spawned
    worker's start, which never needs them. Built on first use instead."""
    from concurrent.futures import BrokenExecutor
    from concurrent.futures.process import BrokenProcessPool

    class BrokenPool(ShoalError, BrokenExecutor):
        """The pool cannot run tasks any more (shut down, or its engine failed).

        Also a ``concurrent.futures.BrokenExecutor`` (so a ``RuntimeError``):
        code written for the standard executors catches it unchanged."""

    class WorkerLost(BrokenPool, BrokenProcessPool):
        """The worker running a task died (killed, crashed, exited) before
        returning.

        Also a ``concurrent.futures.process.BrokenProcessPool``, what ported
        ``ProcessPoolExecutor`` code catches."""

        def __init__(self, message: str, *, exitcode: int | None = None,
                     signal: int | None = None):
            super().__init__(message)
            self.exitcode = exitcode
            self.signal = signal

    for cls in (BrokenPool, WorkerLost):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
        globals()[cls.__name__] = cls


def __getattr__(name: str) -> type:
    if name in ("BrokenPool", "WorkerLost"):
        _broken_classes()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class TaskTimeout(ShoalError, TimeoutError):
    """A task ran past the time limit it was given."""


class SerializationError(ShoalError, TypeError):
    """An argument or a result could not be serialized; the message names it.

    What shoal raises is also an instance of the pickling error's own type
    (``TypeError``, ``pickle.PicklingError``, ``AttributeError``,
    ``RuntimeError``...), the type multiprocessing raises for the same object:
    see :func:`serialization_error`."""


_SERIALIZATION_CLASSES: dict = {}


def _serialization_class(cause: type | None) -> type:
    if cause is None or not isinstance(cause, type) or not issubclass(cause, Exception) \
            or issubclass(cause, SerializationError) or cause is TypeError:
        return SerializationError
    cls = _SERIALIZATION_CLASSES.get(cause)
    if cls is None:
        try:
            cls = type(f"SerializationError[{cause.__name__}]", (SerializationError, cause),
                       {"__module__": __name__, "__reduce__": _reduce_serialization_error,
                        "__doc__": f"A SerializationError that is also a {cause.__name__}."})
        except TypeError:  # a base whose layout cannot be combined
            cls = SerializationError
        _SERIALIZATION_CLASSES[cause] = cls
    return cls


def _reduce_serialization_error(self):
    cause = next((b for b in type(self).__bases__ if b is not SerializationError), None)
    return serialization_error, (str(self), cause)


def serialization_error(message: str, cause: type | None = None) -> SerializationError:
    """A SerializationError that is also an instance of ``cause`` (the type of
    the error pickle raised), so that code catching what multiprocessing
    raises for the same object catches it too."""
    cls = _serialization_class(cause)
    try:
        return cls(message)
    except Exception:  # noqa: BLE001 - a base whose __init__ wants other arguments
        return SerializationError(message)


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from a worker: its
    message is the worker's formatted traceback."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + "".join(self.tb) if not isinstance(self.tb, str) else "\n\n" + self.tb
