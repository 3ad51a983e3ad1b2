"""The machine's shape (``shoal.topology()``): packages, cores, hardware threads,
NUMA nodes, caches, memory and GPUs, from hwloc through libshoal (or from
/proc and /sys when libshoal was built without hwloc)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._callable import make_callable

__all__ = ["Topology", "NumaNode", "Gpu", "topology"]


@dataclass(frozen=True)
class NumaNode:
    os_index: int
    memory_bytes: int


@dataclass(frozen=True)
class Gpu:
    name: str
    info: str


@dataclass(frozen=True)
class Topology:
    packages: int
    cores: int
    pus: int
    numa_nodes: tuple[NumaNode, ...]
    l1d_bytes: int
    l2_bytes: int
    l3_bytes: int
    l3_count: int
    total_memory_bytes: int
    gpus: tuple[Gpu, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["numa_nodes"] = list(d["numa_nodes"])
        d["gpus"] = list(d["gpus"])
        return d


def _from_core(raw: Any) -> Topology:
    return Topology(
        packages=raw.packages,
        cores=raw.cores,
        pus=raw.pus,
        numa_nodes=tuple(NumaNode(n.os_index, n.memory_bytes) for n in raw.numa_nodes),
        l1d_bytes=raw.l1d_bytes,
        l2_bytes=raw.l2_bytes,
        l3_bytes=raw.l3_bytes,
        l3_count=raw.l3_count,
        total_memory_bytes=raw.total_memory_bytes,
        gpus=tuple(Gpu(g.name, g.info) for g in raw.gpus),
        source=raw.source,
    )


def topology(*, use_hwloc: bool = True) -> Topology:
    """Detect the machine's topology. ``use_hwloc=False`` forces the /proc+/sys reader."""
    from . import _core

    raw = _core.detect_topology() if use_hwloc else _core.detect_topology_from_sysfs("/")
    return _from_core(raw)


# shoal.topology() calls topology(), also once the submodule replaced the package attribute.
make_callable(__name__, topology)
