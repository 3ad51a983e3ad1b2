"""``backend="mpi"``: the task ledger (shoal/_engine.py) over MPI messages.

    rank 0 (the script)                        every node: its leader + workers
    -------------------                        --------------------------------
    Pool / Executor ── the ledger (Engine) ──> leader (shoal/_mpi_node.py): routes
      one slot per worker of every node,        frames between MPI and the node's
      submit, maps, backlog, retries, cancel    shared-memory rings; workers: the
      chan = RootChannel (_mpi_transport.py)    processes it spawned + the node's
        ── one message per node: per-slot ──>   other ranks, each running the
           frame batches, credit-based          processes backend's worker loop
        <── results + status per node ───────

The ledger is the processes backend's, unchanged: only the transport hooks
differ. A worker process that dies is WorkerLost (or retried) as on one
node, and its leader spawns a replacement. One pool at a time uses the
workers; they live as long as the job, so an initializer's state stays in
them after its pool closes (as with mpi4py.futures' workers).

A rank that dies ends an Open MPI job (the launcher kills the other ranks);
shoal's root then says which tasks each worker held before it goes.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import weakref
from typing import Any, Callable

from . import _serialize
from ._backend import register
from ._engine import Engine, EngineBackend

CONTROL = 6

_open: "weakref.WeakSet[_MPIEngine]" = weakref.WeakSet()
_epochs = itertools.count(1)
_open_lock = threading.Lock()


class _MPIEngine(Engine):
    """The ledger over a RootChannel; slot i is ``layout.slots[i]``."""

    _dumps = staticmethod(_serialize.dumps_in_band)

    def __init__(self, workers: int, initializer: Callable | None, initargs: tuple,
                 max_tasks_per_worker: int | None, retries: int) -> None:
        from . import mpi as _mpi_api
        from ._mpi_transport import MPIError, RootChannel

        comm, root = _mpi_api.current()
        layout = _mpi_api.layout()
        with _open_lock:
            if any(not e.stopped for e in _open):
                raise MPIError("another backend='mpi' pool is open: the workers of the MPI job "
                               "run one pool at a time; close it first")
            for old in list(_open):
                old.chan.shutdown()  # its engine thread gone: one thread calls MPI
            chan = RootChannel(comm, layout, workers)
            super().__init__(chan, chan.slots, initializer, initargs, max_tasks_per_worker,
                             retries)
            # Task and function ids unique to this pool: results of an
            # earlier pool's tasks that a node still sends match nothing here.
            self.ids = itertools.count(next(_epochs) << 40)
            _open.add(self)
        self.comm, self.root = comm, root
        for s in self.slots:
            self._start_worker(s, first=True)
        self._start_collector()

    # ---------------------------------------------------- transport hooks
    def run_pass(self, blocking: bool = True) -> int:
        err = self.chan.error
        if err is not None and self.broken is None:
            from ._errors import BrokenPool

            done: list = []
            with self.lock:
                self._break(BrokenPool(f"the mpi backend's engine thread failed: {err!r}"),
                            cause=err, done=done)
            if done:
                self._finish(done)
        return super().run_pass(blocking)

    def _take_exits(self) -> list:
        return self.chan.take_exits()

    def _start_worker(self, s, first: bool = False) -> None:
        """A slot's worker for this pool: the one there (first), or, after a
        death, a fresh process its leader spawns. The ledger's name for it
        (s.pid) is a token unique to the job; deaths come back with it."""
        self._reset_slot(s)
        node, j = self.chan.where[s.index]
        if not first and j >= node.spawned:
            from ._mpi_transport import MPIError

            raise MPIError(f"{self.chan.describe(s.index)} cannot be replaced")
        s.pid = next(_tokens)
        self.chan.command(s.index, {("adopt" if first else "spawn"): s.pid})
        msg = {"reset": True, "sys_path": list(sys.path), "init": self.init_data}
        self.chan.push_tasks(s.index, [(0, CONTROL, 0, self._dumps(msg).data)])

    def _worker_label(self, pid: int) -> str:
        return f"worker ({self.chan.notes.get(pid, 'a worker of the MPI job')})"

    def _write_cancel_mark(self, upto: int, exempt: dict) -> None:
        self.chan.cancel(upto, exempt)

    def _kill(self, pid: int) -> None:
        for s in self.slots:
            if s.pid == pid:
                self.chan.command(s.index, {"kill": True})

    def _stop_workers(self, grace: float) -> None:
        pass  # the workers serve on, for the next pool; the job's end says goodbye

    def _release_transport(self) -> None:
        self.chan.shutdown()


#: the ledger's names for workers (its slots' pids)
_tokens = itertools.count(1 << 32)


@register
class MPIBackend(EngineBackend):
    """Python callables on the workers of an MPI job's nodes (``python -m
    shoal.mpi``, or inside ``shoal.mpi.MPICommExecutor``). ``workers``: how
    many to use, at most all of them (spread over the nodes).
    ``max_tasks_per_worker`` is accepted and not used (the workers serve
    the whole job); ``retries``: a worker process that dies is replaced and
    its task runs again (a rank that dies ends the job)."""

    name = "mpi"
    workers_use_cpus = False  # ranks, wherever the launcher put them

    @staticmethod
    def default_workers() -> int:
        from . import mpi as _mpi_api

        _mpi_api.current()
        return len(_mpi_api.layout().slots)

    def __init__(self, workers: int, *, initializer: Callable | None = None,
                 initargs: tuple = (), max_tasks_per_worker: int | None = None,
                 retries: int = 0) -> None:
        from . import mpi as _mpi_api

        _mpi_api.current()
        workers = min(workers, len(_mpi_api.layout().slots))
        super().__init__(workers, initializer=initializer, initargs=initargs,
                         max_tasks_per_worker=max_tasks_per_worker, retries=retries)
        # max_tasks_per_worker is accepted for the common contract and not
        # used, as on the threads backend.
        self._engine = _MPIEngine(workers, initializer, initargs, None, retries)
        self._finalizer = weakref.finalize(self, _finalize, self._engine)

    def submit(self, fn: Callable, args: tuple = (), kwargs: dict | None = None, *,
               timeout: float | None = None) -> Any:
        if timeout is not None:
            raise ValueError("per-task time limits are not available on the mpi backend yet "
                             "(the root does not see when a node's worker starts a task)")
        return super().submit(fn, args, kwargs)


def _finalize(engine: _MPIEngine) -> None:
    engine.terminate()


def close_all() -> None:
    """The end of the root's script: every pool still open lets its work
    finish, then closes (before the serving ranks are told to leave)."""
    for engine in list(_open):
        try:
            engine.shutdown(True, False)
        except BaseException:  # noqa: BLE001 - the job ends anyway
            pass


def _on_sigterm(signum: int, frame: Any) -> None:
    """The launcher ends the job (a rank died, or mpirun got Ctrl-C): say
    what each serving rank still held, then go."""
    lines = []
    host = os.uname().nodename
    for engine in list(_open):
        for s in engine.slots:
            if s.tasks:
                ids = sorted(s.tasks)
                shown = ", ".join(map(str, ids[:8])) + (" ..." if len(ids) > 8 else "")
                lines.append(f"  {engine.chan.describe(s.index)}: {len(ids)} task(s) "
                             f"unfinished (ids {shown})")
    if lines:
        sys.stderr.write(f"shoal: the MPI job is being ended (signal {signum} on rank 0, "
                         f"{host}); the launcher names a rank that died. Tasks in flight:\n"
                         + "\n".join(lines) + "\n")
        sys.stderr.flush()
    os._exit(128 + signum)
