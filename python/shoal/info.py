"""``shoal info``: what this job was really given, each number with its source,
and warnings where a user is about to waste or oversubscribe it.

    allocation (libshoal) ──┐
    topology (hwloc) ───────┼──► report() dict ──► text (main) | JSON (main --json)
    threadpoolctl ──────────┤                  └─► shoal.info() (a callable module)
    os.cpu_count() ─────────┘
        └──► advice(): cpu_count vs allocation, BLAS threads x workers vs CPUs

Input-level warnings (malformed SLURM variables, OMP_NUM_THREADS above the
allocation, MPI ranks x threads above the node) come from libshoal, so C++
users get them too; the ones that need Python (threadpoolctl, os.cpu_count)
are added here.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

from ._callable import make_callable
from .allocation import Allocation, allocation
from .topology import Topology, topology

__all__ = ["report", "thread_libraries", "advice", "main"]

# Variables that set thread counts inside libraries; shown when set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def thread_libraries(load_numpy: bool = True) -> list[dict[str, Any]]:
    """The BLAS/OpenMP thread pools loaded in this process (threadpoolctl).
    numpy is imported first so that its BLAS is among them, as it will be in
    any numerical program."""
    if load_numpy:
        try:
            import numpy  # noqa: F401  (loads the BLAS)
        except ImportError:
            pass
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "filepath")
    return [{k: lib.get(k) for k in keep if k in lib} for lib in threadpool_info()]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _thread_variable(lib: dict[str, Any]) -> str:
    """The environment variable that sets this library's thread count."""
    if lib.get("user_api") == "openmp":
        return "OMP_NUM_THREADS"
    return {"openblas": "OPENBLAS_NUM_THREADS", "mkl": "MKL_NUM_THREADS", "blis": "BLIS_NUM_THREADS",
            "flexiblas": "FLEXIBLAS_NUM_THREADS"}.get(lib.get("internal_api") or "", "OMP_NUM_THREADS")


def advice(alloc: Allocation, libs: list[dict[str, Any]], cpu_count: int | None) -> list[str]:
    """Warnings that need Python's view of the process."""
    out = []
    cpus = alloc.cpus
    if cpu_count and cpu_count > cpus:
        out.append(
            f"os.cpu_count() says {cpu_count} but this job may use {cpus} ({alloc.cpus_source}): "
            f"anything sized with os.cpu_count() (multiprocessing.Pool(), ProcessPoolExecutor() "
            f"before Python 3.13, numba/OpenMP defaults) would run {cpu_count / cpus:.3g}x "
            f"oversubscribed; use shoal.default_workers() = {max(1, cpus)}")
    workers = max(1, cpus)
    for lib in libs:
        threads = lib.get("num_threads") or 1
        name = lib.get("internal_api") or lib.get("user_api") or "a library"
        if threads > cpus:
            out.append(
                f"{name} ({lib.get('user_api')}) will run {_plural(threads, 'thread')} but this "
                f"process may use {_plural(cpus, 'CPU')}: set its thread count "
                f"(e.g. {_thread_variable(lib)}={cpus}) or use threadpoolctl.threadpool_limits({cpus})")
        elif workers > 1 and threads > 1 and workers * threads > cpus:
            out.append(
                f"{name} ({lib.get('user_api')}) runs {threads} threads per process: {workers} "
                f"workers each calling it would run {workers * threads} threads on "
                f"{_plural(cpus, 'CPU')}. shoal caps library threads inside its own workers; "
                f"other pools need threadpool_limits(1) or {_thread_variable(lib)}=1 per worker")
    return out


def _physical_memory() -> int:
    """RAM the kernel manages (/proc/meminfo MemTotal, via sysconf)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def _memory(alloc: Allocation, topo: Topology) -> dict[str, Any]:
    """Every memory figure, and the one that limits this job: the smallest of
    the cgroup/SLURM limit (libshoal keeps the smaller of those two) and the
    physical RAM."""
    physical = _physical_memory()
    limit = alloc.memory_limit_bytes
    if limit and (not physical or limit < physical):
        usable, limited_by = limit, alloc.memory_limit_source
    else:
        usable, limited_by = physical, "physical RAM (sysconf)"
    return {
        "physical_bytes": physical,
        "numa_bytes": topo.total_memory_bytes,
        "limit_bytes": limit,
        "limit_source": alloc.memory_limit_source,
        "usable_bytes": usable,
        "limited_by": limited_by,
    }


def _memory_line(mem: dict[str, Any]) -> str:
    text = f"{_bytes(mem['usable_bytes'])}, limited by {mem['limited_by']}"
    if mem["limit_bytes"] and mem["limited_by"] != mem["limit_source"]:
        text += f"; {mem['limit_source']} ({_bytes(mem['limit_bytes'])}) is larger"
    elif mem["limit_bytes"]:
        text += f"; physical RAM {_bytes(mem['physical_bytes'])}"
    else:
        text += "; no cgroup (memory.max, memory.limit_in_bytes) or SLURM_MEM_* limit"
    return text


def _default_workers(alloc: Allocation) -> int:
    """shoal.default_workers(): SHOAL_WORKERS when set (and valid), else the CPUs."""
    from .allocation import default_workers

    try:
        return default_workers()
    except ValueError:
        return max(1, alloc.cpus)


def report() -> dict[str, Any]:
    """The full report as a JSON-ready dict (what ``shoal info --json`` prints)."""
    from . import __version__

    alloc = allocation()
    topo = topology()
    libs = thread_libraries()
    cpu_count = os.cpu_count()
    return {
        "shoal_version": __version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": alloc.cpus,
        "cpus_source": alloc.cpus_source,
        "default_workers": _default_workers(alloc),
        "os_cpu_count": cpu_count,
        "allocation": alloc.to_dict(),
        "topology": topo.to_dict(),
        "memory": _memory(alloc, topo),
        "thread_libraries": libs,
        "thread_variables": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "warnings": list(alloc.warnings) + advice(alloc, libs, cpu_count),
    }


# ---------------------------------------------------------------- text

def _bytes(n: int) -> str:
    if not n:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _hardware_line(t: Topology) -> str:
    return (f"{_plural(t.packages, 'package')}, {_plural(t.cores, 'core')}, "
            f"{_plural(t.pus, 'hardware thread')}, {_plural(len(t.numa_nodes), 'NUMA node')}")


def _caches(t: Topology) -> str:
    parts = [f"L1d {_bytes(t.l1d_bytes)}", f"L2 {_bytes(t.l2_bytes)}"]
    if t.l3_bytes:
        parts.append(f"L3 {_bytes(t.l3_bytes)}" + (f" (x{t.l3_count})" if t.l3_count > 1 else ""))
    else:
        parts.append("L3 none")
    return ", ".join(parts) + " (per cache)"


def _libs_lines(libs: list[dict[str, Any]]) -> list[str]:
    if not libs:
        return ["  none loaded"]
    return [f"  {lib.get('internal_api', '?'):<10} {lib.get('user_api', '?'):<7} "
            f"{str(lib.get('version') or ''):<10} {_plural(lib.get('num_threads') or 0, 'thread'):<11} "
            f"{lib.get('filepath', '')}" for lib in libs]


def _text(r: dict[str, Any]) -> str:
    a = r["allocation"]
    t = topology_from_dict(r["topology"])
    lines = [f"shoal {r['shoal_version']} (Python {r['python']}) on {r['host']}", ""]
    lines.append(f"CPUs this process may use: {r['cpus']}")
    lines.append(f"  decided by                {r['cpus_source']}")
    lines.append(f"  shoal.default_workers()   {r['default_workers']}"
                 + ("   (SHOAL_WORKERS)" if os.environ.get("SHOAL_WORKERS", "").strip() else ""))
    lines.append("  limits considered:")
    for s in a["sources"]:
        lines.append(f"    {s['cpus']:>4}  {s['name']:<24} {s['detail']}")
    lines.append(f"  host CPUs online          {a['host_cpus']}   (/sys/devices/system/cpu/online)")
    lines.append(f"  os.cpu_count()            {r['os_cpu_count']}")
    quota = a["cgroup_quota_cpus"]
    lines.append(f"  cgroup                    {a['cgroup_version']}"
                 + (f" {a['cgroup_path']}" if a["cgroup_path"] else "")
                 + (f", quota {quota:g} CPUs" if quota is not None else ", no CPU quota"))
    mem = r["memory"]
    lines.append(f"  memory this job may use   {_memory_line(mem)}")
    s = a["slurm"]
    if s["in_job"] or s["cpus_per_task"]:
        fields = [f"job {s['job_id']}" if s["job_id"] else "no SLURM_JOB_ID"]
        if s["in_job"]:
            fields.append("in an srun step" if s["in_step"] else "in the batch step (not under srun)")
        for key in ("cpus_per_task", "cpus_on_node", "ntasks", "job_num_nodes"):
            if s[key] is not None:
                fields.append(f"{key}={s[key]}")
        if s["job_cpus_per_node"]:
            fields.append(f"job_cpus_per_node={s['job_cpus_per_node']}")
        lines.append(f"  SLURM                     {', '.join(fields)}")
    else:
        lines.append("  SLURM                     not in a SLURM job")
    m = a["mpi"]
    if m["launcher"]:
        lines.append(f"  MPI launcher              {m['launcher']}: rank {m['rank']} of {m['size']}, "
                     f"local rank {m['local_rank']} of {m['local_size']}")
    else:
        lines.append("  MPI launcher              none")
    tv = r["thread_variables"]
    lines.append("  thread variables          "
                 + (", ".join(f"{k}={v!r}" for k, v in tv.items()) if tv else "none set"))
    lines += ["", f"Hardware ({t.source})", f"  {_hardware_line(t)}", f"  caches: {_caches(t)}",
              "  NUMA: " + ", ".join(f"node {n.os_index} {_bytes(n.memory_bytes)}" for n in t.numa_nodes),
              f"  memory: {_bytes(t.total_memory_bytes)} in NUMA nodes ({t.source.split()[0]}), "
              f"{_bytes(mem['physical_bytes'])} physical (sysconf)",
              "  GPUs: " + (", ".join(f"{g.name} ({g.info})" if g.info else g.name for g in t.gpus)
                            if t.gpus else "none detected")]
    lines += ["", "Thread pools inside libraries (threadpoolctl, after importing numpy)"]
    lines += _libs_lines(r["thread_libraries"])
    lines += [""] + _warning_lines(r["warnings"])
    return "\n".join(lines)


def _warning_lines(warnings: list[str]) -> list[str]:
    if not warnings:
        return ["No warnings: nothing here wastes or oversubscribes this allocation."]
    return [f"WARNINGS ({len(warnings)})"] + [f"  ! {w}" for w in warnings]


def _summary(r: dict[str, Any]) -> str:
    t = topology_from_dict(r["topology"])
    libs = ", ".join(f"{lib.get('internal_api')} {lib.get('num_threads')} thr"
                     for lib in r["thread_libraries"]) or "none"
    lines = [
        f"shoal {r['shoal_version']}: {_plural(r['cpus'], 'CPU')} for this process "
        f"(decided by {r['cpus_source']}); os.cpu_count() = {r['os_cpu_count']}",
        f"  hardware: {_hardware_line(t)}; {_caches(t)}; "
        f"GPUs: {len(t.gpus) or 'none detected'} [{t.source}]",
        f"  library thread pools: {libs}",
    ]
    lines += ["  " + w for w in _warning_lines(r["warnings"])]
    return "\n".join(lines)


def topology_from_dict(d: dict[str, Any]) -> Topology:
    from .topology import Gpu, NumaNode

    return Topology(**{**d, "numa_nodes": tuple(NumaNode(**n) for n in d["numa_nodes"]),
                       "gpus": tuple(Gpu(**g) for g in d["gpus"])})


def main(as_json: bool = False, summary: bool = False) -> int:
    """Print the report (text, short summary, or JSON); returns the exit status."""
    r = report()
    if as_json:
        print(json.dumps(r, indent=2))
    else:
        print(_summary(r) if summary else _text(r))
    sys.stdout.flush()
    return 0


make_callable(__name__, report)
