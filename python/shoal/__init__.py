"""shoal: parallel computing for Python on laptops and HPC clusters.

One small API over a C++ engine::

    import shoal
    with shoal.Pool() as pool:                    # every core this job was given
        results = pool.map(f, range(1_000_000))
    shoal.parallel_reduce(n, kernel, op="sum")     # native kernel on all threads
    shoal.allocation()                             # what the job was really given

Names are imported on first use, so ``import shoal`` stays cheap.
"""

from __future__ import annotations

import importlib

from ._errors import RemoteTraceback, SerializationError, ShoalError, TaskTimeout

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "BrokenPool": "._errors",
    "WorkerLost": "._errors",
    "Allocation": ".allocation",
    "default_workers": ".allocation",
    "OversubscriptionWarning": ".allocation",
    "Pool": ".pool",
    "Executor": ".pool",
    "parallel_for": ".parallel",
    "parallel_reduce": ".parallel",
}
# allocation, topology and info are callable modules (see _callable.py):
# shoal.allocation(), shoal.topology(), shoal.info() call their main function.
# monitor too: shoal.monitor(path) starts a recording, shoal.monitor.load(path) reads one.
_SUBMODULES = {"shared", "allocation", "topology", "info", "monitor"}

__all__ = [
    "__version__",
    "BrokenPool",
    "RemoteTraceback",
    "SerializationError",
    "ShoalError",
    "TaskTimeout",
    "WorkerLost",
    *_LAZY,
    *_SUBMODULES,
]


def __getattr__(name: str) -> object:
    if name in _SUBMODULES:
        return importlib.import_module("." + name, __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# SHOAL_MONITOR=run.shoal: this whole process is recorded (shoal/monitor/_session.py).
if __import__("os").environ.get("SHOAL_MONITOR"):
    from .monitor import _session as _monitor_session

    _monitor_session.start_from_env()
