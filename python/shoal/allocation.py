"""What this process was really given: CPUs, and where that number came from.

The detection lives in libshoal (``shoal::Allocation::detect``): CPU affinity,
cgroup v1/v2 quota and cpuset, SLURM, ``OMP_NUM_THREADS`` and the MPI
launcher's variables; the smallest limit wins. This module turns the C++
record into plain Python::

    >>> import shoal
    >>> a = shoal.allocation()
    >>> a.cpus, a.cpus_source
    (2, '/sys/fs/cgroup/cpuset/cpuset.effective_cpus = 0-1')
    >>> [(s.name, s.cpus) for s in a.sources]      # every limit that was considered
    [('CPU affinity', 2), ('cgroup v1 cpuset', 2)]
    >>> shoal.default_workers()
    2

The same count sizes everything else shoal decides from the allocation: the
library thread caps inside workers (:func:`thread_caps`) and the warning when
a pool is asked for more workers than there are CPUs
(:func:`warn_if_oversubscribed`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._callable import make_callable

__all__ = ["Allocation", "AllocationSource", "OversubscriptionWarning", "ThreadCaps", "allocation",
           "default_workers", "thread_caps", "warn_if_oversubscribed"]


class OversubscriptionWarning(RuntimeWarning):
    """More threads or processes were asked for than this job has CPUs.

    A RuntimeWarning (shown by default, unlike ResourceWarning, which Python
    hides outside of -X dev and test runners: a user who never sees it gains
    nothing), and a class of its own so that it can be filtered by itself."""


@dataclass(frozen=True)
class AllocationSource:
    """One limit that was considered: its name, where it was read, the CPUs it allows."""

    name: str
    detail: str
    cpus: int


@dataclass(frozen=True)
class Allocation:
    """The CPUs this process may really use (``cpus``) and every input behind it."""

    cpus: int
    cpus_source: str
    sources: tuple[AllocationSource, ...] = ()
    affinity: tuple[int, ...] = ()
    host_cpus: int = 0
    cgroup_version: str = "none"
    cgroup_path: str = ""
    cgroup_quota_cpus: float | None = None
    cgroup_cpuset: tuple[int, ...] = ()
    memory_limit_bytes: int | None = None
    memory_limit_source: str = ""
    slurm: dict[str, Any] = field(default_factory=dict)
    omp_num_threads: int | None = None
    mpi: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @classmethod
    def detect(cls, env: Mapping[str, str] | None = None, sys_root: str | None = None) -> "Allocation":
        """Detect from this process; or, for tests and tools, from ``env`` (a
        mapping standing in for ``os.environ``) and a /proc + /sys tree under
        ``sys_root``."""
        from . import _core

        if env is None and sys_root is None:
            raw = _core.detect_allocation()
        else:
            env = dict(os.environ if env is None else env)
            raw = _core.detect_allocation({str(k): str(v) for k, v in env.items()}, sys_root or "/")
        return cls._from_core(raw)

    @classmethod
    def _from_core(cls, raw: Any) -> "Allocation":
        slurm_fields = ("in_job", "in_step", "job_id", "cpus_per_task", "cpus_on_node",
                        "job_cpus_per_node", "ntasks", "job_num_nodes", "node_id", "tasks_per_node")
        mpi_fields = ("launcher", "rank", "size", "local_rank", "local_size")
        return cls(
            cpus=raw.cpus,
            cpus_source=raw.cpus_source,
            sources=tuple(AllocationSource(s.name, s.detail, s.cpus) for s in raw.sources),
            affinity=tuple(raw.affinity),
            host_cpus=raw.host_cpus,
            cgroup_version=raw.cgroup_version,
            cgroup_path=raw.cgroup_path,
            cgroup_quota_cpus=raw.cgroup_quota_cpus,
            cgroup_cpuset=tuple(raw.cgroup_cpuset),
            memory_limit_bytes=raw.memory_limit_bytes,
            memory_limit_source=raw.memory_limit_source,
            slurm={k: getattr(raw.slurm, k) for k in slurm_fields},
            omp_num_threads=raw.omp_num_threads,
            mpi={k: getattr(raw.mpi, k) for k in mpi_fields},
            warnings=tuple(raw.warnings),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples become lists, sources become dicts."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def allocation() -> Allocation:
    """The allocation of this process, detected now (cheap: a few small file reads)."""
    return Allocation.detect()


#: Overrides the default worker count (``shoal scale`` sets it for each run).
WORKERS_VARIABLE = "SHOAL_WORKERS"


def default_workers() -> int:
    """How many workers shoal starts by default: ``SHOAL_WORKERS`` if it is
    set (a positive integer; ``shoal scale`` sets it), else the CPUs this job
    may use, at least 1."""
    value = os.environ.get(WORKERS_VARIABLE, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{WORKERS_VARIABLE}={value!r}: expected a positive integer, the "
                             f"default worker count (unset it to use the CPUs of this job)")
        return n
    return max(1, allocation().cpus)


def _outside_shoal() -> int:
    """The stacklevel of the first caller outside the shoal package, so that
    a warning points at the user's line (and Python shows it once per line)."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else max(1, level - 1)


def warn_if_oversubscribed(workers: int, what: str = "workers") -> None:
    """One OversubscriptionWarning if ``workers`` processes would share fewer
    CPUs than that (``shoal.Pool(4)`` on 2 CPUs). Called by ``_backend.create``
    for every backend whose workers each run on a CPU of their own, so Pool and
    Executor, whatever the backend, warn in one place."""
    alloc = allocation()
    if workers > max(1, alloc.cpus):
        warnings.warn(
            f"{workers} {what} share {alloc.cpus} CPU{'' if alloc.cpus == 1 else 's'} "
            f"({alloc.cpus_source}): they take turns on the CPUs, which is slower than "
            f"{alloc.cpus} workers for CPU-bound tasks; workers=None uses shoal.default_workers() "
            f"= {max(1, alloc.cpus)}", OversubscriptionWarning, stacklevel=_outside_shoal())


# ---------------------------------------------------------------- thread caps
#
# A library reads the first of its variables that is set; OMP_NUM_THREADS is
# the common fallback of the BLAS libraries (OpenBLAS, MKL, BLIS) and numexpr.
_READ_ORDER = {
    "SHOAL_NUM_THREADS": ("SHOAL_NUM_THREADS",),
    "OMP_NUM_THREADS": ("OMP_NUM_THREADS",),
    "OPENBLAS_NUM_THREADS": ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"),
    "MKL_NUM_THREADS": ("MKL_NUM_THREADS", "OMP_NUM_THREADS"),
    "BLIS_NUM_THREADS": ("BLIS_NUM_THREADS", "OMP_NUM_THREADS"),
    "FLEXIBLAS_NUM_THREADS": ("FLEXIBLAS_NUM_THREADS", "OMP_NUM_THREADS"),
    "NUMEXPR_NUM_THREADS": ("NUMEXPR_NUM_THREADS", "OMP_NUM_THREADS"),
    "VECLIB_MAXIMUM_THREADS": ("VECLIB_MAXIMUM_THREADS",),
    "NUMBA_NUM_THREADS": ("NUMBA_NUM_THREADS",),
}
#: Variables shoal sets in its workers (each one the user did not set).
CAP_VARIABLES = tuple(_READ_ORDER)
# threadpoolctl's internal_api -> the variable that sizes that library.
_LIBRARY_VARIABLE = {"openblas": "OPENBLAS_NUM_THREADS", "mkl": "MKL_NUM_THREADS",
                     "blis": "BLIS_NUM_THREADS", "flexiblas": "FLEXIBLAS_NUM_THREADS"}


def _count(value: str | None) -> int | None:
    """A thread count as the libraries read it ("8,2": the outer level), or None."""
    try:
        n = int((value or "").split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def library_variable(user_api: str | None, internal_api: str | None) -> str:
    """The variable that sizes one of threadpoolctl's libraries."""
    if user_api == "openmp":
        return "OMP_NUM_THREADS"
    return _LIBRARY_VARIABLE.get(internal_api or "", "OMP_NUM_THREADS")


def library_threads(variable: str, env: Mapping[str, str] | None = None) -> int | None:
    """The thread count the library sized by ``variable`` takes from ``env``
    (its own variable, else its fallbacks), None if none is set."""
    env = os.environ if env is None else env
    for name in _READ_ORDER.get(variable, (variable,)):
        n = _count(env.get(name))
        if n is not None:
            return n
    return None


@dataclass(frozen=True)
class ThreadCaps:
    """Library thread counts for ``workers`` workers on ``cpus`` CPUs: ``threads``
    (cpus // workers, at least 1) for every library whose count the user left
    alone (``env``: the variables shoal sets), the user's own for the rest
    (``kept``: set by the user, or read by that library from OMP_NUM_THREADS)."""

    workers: int
    cpus: int
    threads: int
    env: dict[str, str]
    kept: dict[str, str]
    warning: str | None = None

    def imposed(self, variable: str) -> int | None:
        """The count shoal imposes on the library sized by ``variable``; None
        where the user's own setting governs it."""
        return None if variable in self.kept else self.threads


def thread_caps(workers: int, env: Mapping[str, str] | None = None,
                alloc: Allocation | None = None) -> ThreadCaps:
    """The caps for ``workers`` workers of one pool: workers x threads <= the
    CPUs of the allocation (SLURM, cgroup quota, affinity: what sizes
    default_workers()), never the host's or the affinity mask's count alone.
    A count the user set is kept; if it oversubscribes (workers x threads >
    CPUs), ``warning`` says so (:func:`warn_thread_caps` issues it)."""
    env = os.environ if env is None else env
    alloc = allocation() if alloc is None else alloc
    cpus = max(1, alloc.cpus)
    threads = max(1, cpus // max(1, workers))
    caps: dict[str, str] = {}
    kept: dict[str, str] = {}
    for var in CAP_VARIABLES:
        if library_threads(var, env) is None:
            caps[var] = str(threads)
        else:
            kept[var] = next(f"{n}={env[n]}" for n in _READ_ORDER[var] if _count(env.get(n)))
    over = sorted({f"{v}" for v in kept.values()
                   if workers * (_count(v.split("=", 1)[1]) or 1) > cpus})
    warning = None
    if over:
        warning = (f"{', '.join(over)} set in the environment: {workers} "
                   f"worker{'' if workers == 1 else 's'} x those threads is more than the "
                   f"{cpus} CPU{'' if cpus == 1 else 's'} of this job ({alloc.cpus_source}). shoal "
                   f"keeps thread counts you set; unset them to let shoal cap each worker at "
                   f"{threads} thread{'' if threads == 1 else 's'}")
    return ThreadCaps(workers, cpus, threads, caps, kept, warning)


def warn_thread_caps(caps: ThreadCaps) -> None:
    """Issues ``caps.warning`` (if any) at the user's line."""
    if caps.warning:
        warnings.warn(caps.warning, OversubscriptionWarning, stacklevel=_outside_shoal())


# shoal.allocation() calls allocation(), also once the submodule replaced the package attribute.
make_callable(__name__, allocation)
