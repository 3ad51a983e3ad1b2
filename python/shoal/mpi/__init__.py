"""shoal on MPI: the same ``Pool`` and ``Executor`` on every rank of an
``mpirun``/``srun`` job, and drop-ins for mpi4py.futures' classes::

    mpirun -n 4 python -m shoal.mpi script.py      # also: srun python -m shoal.mpi script.py

    import shoal
    with shoal.Pool(backend="mpi") as pool:        # ranks 1..n-1 serve rank 0
        results = pool.map(simulate, params)

    from shoal.mpi import MPIPoolExecutor, MPICommExecutor   # one import line to change

``python -m shoal.mpi`` runs the script on rank 0 and makes every other rank
serve it. A script started without it (``mpirun -n 4 python script.py``)
uses ``with MPICommExecutor() as ex:``, which is an executor on the root and
``None`` on the other ranks, which serve inside the ``with``.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from typing import Any, Callable, Iterable, Iterator

from .. import _mpi_transport as _t
from .._mpi_transport import MPIError
from ..pool import Executor, _Star

__all__ = ["MPIPoolExecutor", "MPICommExecutor", "MPIError", "main", "world"]

# The communicator the mpi backend runs on, and its root; set by main() or
# MPICommExecutor on every rank (None: this process does not run under them).
_comm = None
_root = 0
_layout = None  # where the workers are (_mpi_transport.Layout), on every rank


def world(comm: Any = None):
    """shoal's duplicate of ``comm`` (default ``MPI.COMM_WORLD``), after
    checking what the mpi backend needs."""
    MPI = _t._mpi()
    _t.check_thread_level(MPI)
    base = MPI.COMM_WORLD if comm is None else comm
    return base.Dup()


def current() -> tuple[Any, int]:
    """(communicator, root) for a ``backend="mpi"`` pool on this rank, or an
    MPIError that says how to start the script."""
    if _comm is None:
        if not _t.launched_by_mpi():
            raise MPIError("backend='mpi' needs MPI ranks to run on, and this script was not "
                           "started by an MPI launcher:\n" + _t.LAUNCH_HINT)
        raise MPIError("backend='mpi' in a script started without 'python -m shoal.mpi': the "
                       "other ranks are running the script too instead of serving it. Use\n"
                       "    mpirun -n 3 python -m shoal.mpi script.py\n"
                       "or, in a script that every rank runs, "
                       "'with shoal.mpi.MPICommExecutor() as ex:' (None on the serving ranks)")
    if _comm.Get_size() < 2:
        raise MPIError("backend='mpi' needs at least 2 ranks (rank 0 runs the script, the others "
                       "serve it); this job has 1:\n" + _t.LAUNCH_HINT)
    if _comm.Get_rank() != _root:
        raise MPIError(f"a backend='mpi' pool is made on the root (rank {_root}); this is "
                       f"rank {_comm.Get_rank()}, which serves it")
    return _comm, _root


def layout():
    """Where the workers of this MPI job are (a _mpi_transport.Layout)."""
    current()
    return _layout


def _serve_or_lead(comm, root: int):
    """Collective: finds the nodes; on a serving rank, serves until the root
    says goodbye and returns 0; on the root, returns None."""
    global _layout
    from .. import _mpi_node

    lay, node_comm = _t.discover(comm, root)
    _layout = lay
    if comm.Get_rank() == root:
        return None
    try:
        return _mpi_node.serve(comm, lay, node_comm)
    finally:
        node_comm.Free()


def main(argv: list[str]) -> int:
    """``python -m shoal.mpi script.py [args]`` on every rank."""
    global _comm, _root
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\nusage: mpirun -n N python -m shoal.mpi script.py "
              "[args]  (also -m module, -c command)")
        return 0 if argv else 2
    try:
        comm = world()
    except MPIError as exc:
        print(f"shoal.mpi: {exc}", file=sys.stderr)
        return 2
    _comm, _root = comm, 0
    if comm.Get_size() > 1:
        served = _serve_or_lead(comm, 0)
        if served is not None:
            return served
    import signal

    from .. import _backend_mpi

    # The launcher ends the job with SIGTERM (a rank died, Ctrl-C of mpirun):
    # say what each rank still held.
    signal.signal(signal.SIGTERM, _backend_mpi._on_sigterm)
    code = 0
    try:
        _run_as_main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the script's own error: shown, then a clean end
        traceback.print_exc()
        code = 1
    finally:
        _finish_root(comm)
    return code


def _run_as_main(argv: list[str]) -> None:
    if argv[0] == "-m" and len(argv) > 1:
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv[0] == "-c" and len(argv) > 1:
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


def _finish_root(comm) -> None:
    """Ends every mpi pool still open, then tells the serving ranks to leave."""
    from .. import _backend_mpi

    _backend_mpi.close_all()
    if _layout is not None:
        _t.say_bye(comm, _layout)


class MPIPoolExecutor(Executor):
    """``mpi4py.futures.MPIPoolExecutor`` on shoal's mpi backend: change the
    import line, keep the program.

    ``max_workers``: serving ranks to use (default: all). mpi4py.futures'
    process-spawning keywords (``python_exe``, ``path``, ``wdir``, ``env``,
    ``main``, ``use_pkl5``, ``backoff``...) are accepted and not used: the
    ranks are the ones the launcher started."""

    def __init__(self, max_workers: int | None = None, initializer: Callable | None = None,
                 initargs: tuple = (), **kwargs: Any) -> None:
        comm, _ = current()
        available = len(layout().slots)
        if max_workers is not None and (isinstance(max_workers, bool) or
                                        not isinstance(max_workers, int) or max_workers < 1):
            raise ValueError("max_workers must be greater than 0")
        workers = available if max_workers is None else min(max_workers, available)
        super().__init__(workers, backend="mpi", initializer=initializer, initargs=initargs)

    @property
    def num_workers(self) -> int:
        return self.workers

    def bootup(self, wait: bool = True) -> "MPIPoolExecutor":
        """The ranks are up already (the launcher started them)."""
        if self._shutdown:
            raise RuntimeError("cannot bootup after shutdown")
        return self

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1, buffersize: int | None = None,
            unordered: bool = False) -> Iterator[Any]:
        """mpi4py.futures' map: ``chunksize`` items per task, results in order
        (or as they finish with ``unordered=True``)."""
        if unordered:
            items = list(zip(*iterables)) if len(iterables) > 1 else iterables[0]
            fn2 = fn if len(iterables) == 1 else _Star(fn)
            return self._backend.map(fn2, items, chunksize=chunksize, ordered=False,
                                     timeout=timeout)
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def starmap(self, fn: Callable, iterable: Iterable, timeout: float | None = None,
                chunksize: int = 1, buffersize: int | None = None,
                unordered: bool = False) -> Iterator[Any]:
        return self.map(_Star(fn), iterable, timeout=timeout, chunksize=chunksize,
                        unordered=unordered)


class MPICommExecutor:
    """``mpi4py.futures.MPICommExecutor``: in a script that every rank runs
    (``mpirun -n 4 python script.py``)::

        with MPICommExecutor() as ex:     # an executor on the root, None elsewhere
            if ex is not None:
                results = list(ex.map(f, items))

    The other ranks serve inside the ``with`` until the root leaves it."""

    def __init__(self, comm: Any = None, root: int = 0, **kwargs: Any) -> None:
        self._base = comm
        self._root = root
        self._kwargs = kwargs
        self._executor: MPIPoolExecutor | None = None
        self._comm = None

    def __enter__(self) -> MPIPoolExecutor | None:
        global _comm, _root
        comm = world(self._base)
        if not 0 <= self._root < comm.Get_size():
            raise ValueError(f"root {self._root} is not a rank of this communicator "
                             f"(size {comm.Get_size()})")
        self._comm = comm
        if comm.Get_size() > 1 and _serve_or_lead(comm, self._root) is not None:
            return None
        _comm, _root = comm, self._root
        self._executor = MPIPoolExecutor(**self._kwargs)
        return self._executor

    def __exit__(self, *exc: Any) -> None:
        global _comm
        if self._executor is not None:
            self._executor.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)
            if _layout is not None:
                _t.say_bye(self._comm, _layout)
            _comm = None
        if self._comm is not None:
            self._comm.Free()
            self._comm = None
