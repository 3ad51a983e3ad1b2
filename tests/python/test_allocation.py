"""shoal.allocation(), default_workers(), topology(): the Python API over libshoal."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import shoal
from shoal.allocation import Allocation

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "cpp" / "fixtures"


def test_allocation_matches_affinity():
    a = shoal.allocation()
    assert isinstance(a, Allocation)
    assert 1 <= a.cpus <= len(os.sched_getaffinity(0))
    assert list(a.affinity) == sorted(os.sched_getaffinity(0))
    assert a.cpus_source
    assert shoal.default_workers() == a.cpus
    json.dumps(a.to_dict())


def test_callable_even_after_submodule_import():
    import shoal.allocation as mod
    import shoal.topology  # noqa: F401

    assert shoal.allocation().cpus == mod.allocation().cpus
    assert shoal.topology().pus >= 1


def test_detect_from_fixture_tree_and_env():
    a = Allocation.detect(env={"SLURM_CPUS_PER_TASK": "3"}, sys_root=str(FIXTURES / "v2_quota"))
    assert a.cgroup_version == "v2"
    assert a.cgroup_quota_cpus == 1.5
    assert a.cpus == 2  # quota 1.5 rounds up to 2, below SLURM's 3
    assert "cpu.max = 150000 100000" in a.cpus_source
    assert any("SLURM granted 3" in w for w in a.warnings)


@pytest.mark.parametrize("tree", sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()))
def test_every_fixture_tree_gives_a_positive_count(tree):
    a = Allocation.detect(env={}, sys_root=str(FIXTURES / tree))
    assert a.cpus >= 1
    assert a.host_cpus == 8


def test_garbage_environment_never_crashes():
    env = {k: v for k in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_NTASKS", "SLURM_JOB_CPUS_PER_NODE",
                          "SLURM_TASKS_PER_NODE", "OMP_NUM_THREADS", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS",
                          "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NODEID")
           for v in ["9" * 40]}
    env["SLURM_JOB_ID"] = "\x7f"
    a = Allocation.detect(env=env, sys_root=str(FIXTURES / "no_cgroup"))
    assert a.cpus == 8
    assert len(a.warnings) >= 9  # one per variable read (PMI_* are not read under Open MPI)


def test_default_workers_under_taskset():
    code = "import shoal; print(shoal.default_workers())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0 and "taskset" in out.stderr:
        pytest.skip("taskset unavailable")
    assert out.stdout.strip() == "1", out.stderr


def test_topology_fallback_agrees_with_hwloc():
    t = shoal.topology()
    f = shoal.topology(use_hwloc=False)
    assert f.source == "/proc and /sys"
    assert (f.packages, f.cores, f.pus) == (t.packages, t.cores, t.pus)
    assert len(f.gpus) == len(t.gpus)
    assert t.pus == os.cpu_count()
