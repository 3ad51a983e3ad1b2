"""shoal.monitor: record what a job did, to a file, as it runs.

::

    with shoal.monitor("run.shoal") as mon:      # or SHOAL_MONITOR=run.shoal python job.py
        with shoal.Pool() as pool:                # or: shoal run --monitor run.shoal job.py
            pool.map(simulate, params)
    print(mon.summary())
    run = shoal.monitor.load("run.shoal")        # -> shoal.monitor.Run

Data flow (recording side; the reports read only ``Run``)::

  worker process (slot i)            driver process
  ───────────────────────            ───────────────────────────────────────────────
  set_current(i, task)  (start)      Engine.submit / map / frames ─┐ DriverEvent
  push_result(...) ── note_result ─┐ Engine._fail/_on_death/cancel ┤ (mutex'd log)
                       (C++, no    │ threads backend _WorkItem.run ─┼─> RingWriter.record
                        Python)    │ parallel_for / parallel_reduce ┤ NativeRecord
                                   v                                │
        EventRings[i] in a SharedSegment  ──────────────┐           │
        (one SPSC ring per slot; full: dropped += 1;    │           │
         counters tasks/busy/histogram always exact)    v           v
                                      Sampler thread "shoal-monitor" (C++, 10 Hz)
                                        drain rings + logs, read /proc, /dev/shm, cgroup
                                        └─> MonitorWriter: one zlib'd chunk per kind per
                                            tick, appended with one write(2) each
                                                   │
                                             run.shoal  ──> load() (C++ parser, checks every
                                                            chunk's crc) ──> _file.build_run ──> Run

Off (the default), a pool holds ``mon = None`` and pays one ``is None`` check
per task on the driver side and one null-pointer check in C++ per result in
the worker; nothing else exists. The monitor never fails the job: a file that
cannot be written gives one MonitorWarning and the job goes on unrecorded.

This package imports nothing heavy: numpy and the reader load on ``load()``.
"""

from __future__ import annotations

import os
from typing import Any

from .._callable import make_callable

__all__ = ["Monitor", "MonitorFileError", "MonitorWarning", "load", "monitor", "Run"]


class MonitorWarning(RuntimeWarning):
    """The monitor could not record (unwritable path, full disk): the job goes on."""


class MonitorFileError(ValueError):
    """A file that is not a shoal monitor file, or one damaged before its tail."""


class Monitor:
    """One monitor session: a context manager; summary() and stats() afterwards.

    ``path``: the file; ``hz``: the sampler's rate; ``ring``: task records each
    worker's ring holds between two drains (default SHOAL_MONITOR_RING or 32768).
    """

    def __init__(self, path: str | os.PathLike, *, hz: float = 10.0, ring: int | None = None) -> None:
        self.path = os.fspath(path)
        self.hz = hz
        self.ring = ring
        self.session = None
        self._run = None

    def start(self) -> "Monitor":
        from . import _session

        self.session = _session.start(self.path, self.hz, self.ring)
        return self

    def stop(self) -> None:
        from . import _session

        if self.session is not None:
            _session.stop(self.session)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def active(self) -> bool:
        return self.session is not None and not self.session.stopped

    def run(self) -> "Run":
        """The file as a Run (read again after each stop)."""
        if self._run is None or self.active:
            self._run = load(self.path)
        return self._run

    def summary(self, color: bool | None = None) -> str:
        """The terminal report; ``color``: ANSI colours (default: when
        standard output is a terminal)."""
        from . import _summary  # the reports (another module of this package)

        return _summary.summary(self.run(), color=color)

    def stats(self) -> dict:
        from . import _summary

        return _summary.stats(self.run())


def monitor(path: str | os.PathLike, *, hz: float = 10.0, ring: int | None = None) -> Monitor:
    """Records the job to ``path`` while the returned Monitor is active
    (``with shoal.monitor(path) as mon:``)."""
    return Monitor(path, hz=hz, ring=ring)


def load(path: str | os.PathLike) -> "Run":
    """Reads a monitor file (also of a job still running, or killed) into a Run.
    Raises MonitorFileError for a foreign or damaged file; a cut tail is
    tolerated and said in ``run.truncated``."""
    from ._file import load as _load

    return _load(path)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from ._run import Run

        return Run
    raise AttributeError(f"module 'shoal.monitor' has no attribute {name!r}")


# shoal.monitor(path) calls monitor(), also once the package attribute is this module.
make_callable(__name__, monitor)
