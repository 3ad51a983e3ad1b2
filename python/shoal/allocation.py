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
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._callable import make_callable

__all__ = ["Allocation", "AllocationSource", "allocation", "default_workers"]


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


def default_workers() -> int:
    """How many workers shoal starts by default: the CPUs this job may use, at least 1."""
    return max(1, allocation().cpus)


# shoal.allocation() calls allocation(), also once the submodule replaced the package attribute.
make_callable(__name__, allocation)
