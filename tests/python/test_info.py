"""``shoal info`` as a user runs it: a subprocess, real affinity, made-up SLURM/MPI environments."""

import json
import os
import shutil
import subprocess
import sys

import pytest

# Variables that would change the answer; tests start from an environment without them.
_ALLOCATION_VARS = ("SLURM_", "OMPI_", "PMI_", "MPI_LOCAL", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "MKL_NUM_THREADS")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ALLOCATION_VARS)}
    env.update(extra)
    return env


def shoal_cli(*args, env=None, prefix=()):
    """Run ``shoal <args>`` through the installed console script (or ``python -m shoal``)."""
    exe = shutil.which("shoal", path=os.path.dirname(sys.executable))
    cmd = [*prefix, *([exe] if exe else [sys.executable, "-m", "shoal"]), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=clean_env() if env is None else env)


def info_json(env=None, prefix=()):
    out = shoal_cli("info", "--json", env=env, prefix=prefix)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def warnings_text(report):
    return "\n".join(report["warnings"])


def test_json_has_every_section():
    r = info_json()
    for key in ("cpus", "cpus_source", "default_workers", "os_cpu_count", "allocation", "topology",
                "thread_libraries", "warnings"):
        assert key in r
    assert r["cpus"] >= 1
    assert r["cpus"] <= len(os.sched_getaffinity(0))
    assert r["default_workers"] == r["cpus"]
    t = r["topology"]
    assert t["pus"] >= t["cores"] >= t["packages"] >= 1
    assert t["total_memory_bytes"] > 0
    assert r["allocation"]["sources"], "every limit considered is listed"


def test_module_entry_point_matches_console_script():
    via_module = subprocess.run([sys.executable, "-m", "shoal", "info", "--json"], capture_output=True,
                                text=True, timeout=120, env=clean_env())
    assert via_module.returncode == 0, via_module.stderr
    assert json.loads(via_module.stdout)["cpus"] == info_json()["cpus"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_taskset_one_cpu_reports_one():
    r = info_json(prefix=("taskset", "-c", "0"))
    assert r["cpus"] == 1
    assert r["allocation"]["affinity"] == [0]
    assert "sched_getaffinity = 0" in r["cpus_source"]
    if (os.cpu_count() or 1) > 1:
        assert "os.cpu_count() says" in warnings_text(r)


def test_slurm_cpus_per_task_one():
    r = info_json(clean_env(SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK="1"))
    assert r["cpus"] == 1
    assert r["cpus_source"] == "SLURM_CPUS_PER_TASK=1"
    assert r["allocation"]["slurm"]["job_id"] == "42"


@pytest.mark.parametrize("bad", ["abc", "0", "-3", ""])
def test_bad_slurm_cpus_per_task_warns_and_falls_back(bad):
    r = info_json(clean_env(SLURM_JOB_ID="42", SLURM_CPUS_PER_TASK=bad))
    assert r["cpus"] == len(os.sched_getaffinity(0)) or r["cpus"] >= 1
    assert "SLURM" not in r["cpus_source"]
    assert f"SLURM_CPUS_PER_TASK='{bad}' is not a positive integer; ignored, using" in warnings_text(r)


@pytest.mark.parametrize("bad", ["2(x", "x3", ""])
def test_bad_job_cpus_per_node_warns(bad):
    r = info_json(clean_env(SLURM_JOB_ID="42", SLURM_JOB_CPUS_PER_NODE=bad))
    assert f"SLURM_JOB_CPUS_PER_NODE='{bad}'" in warnings_text(r)
    assert r["allocation"]["slurm"]["job_cpus_per_node"] == []


def test_empty_omp_num_threads_warns():
    r = info_json(clean_env(OMP_NUM_THREADS=""))
    assert "OMP_NUM_THREADS is set but empty; ignored" in warnings_text(r)


def test_omp_threads_above_slurm_cpus_warns_in_text_report():
    out = shoal_cli("info", env=clean_env(SLURM_JOB_ID="1", SLURM_CPUS_PER_TASK="1", OMP_NUM_THREADS="16"))
    assert out.returncode == 0, out.stderr
    assert "WARNINGS" in out.stdout
    assert "OMP_NUM_THREADS=16 but this process may use 1 CPU (SLURM_CPUS_PER_TASK=1)" in out.stdout
    assert "decided by                SLURM_CPUS_PER_TASK=1" in out.stdout


def test_cpu_count_above_allocation_warns():
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs a host with at least 2 CPUs")
    r = info_json(clean_env(SLURM_CPUS_PER_TASK="1"))
    assert f"os.cpu_count() says {os.cpu_count()} but this job may use 1" in warnings_text(r)


def test_mpi_ranks_times_threads_warns():
    host = info_json()["allocation"]["host_cpus"]
    env = clean_env(OMPI_COMM_WORLD_RANK="0", OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_LOCAL_RANK="0",
                    OMPI_COMM_WORLD_LOCAL_SIZE="2", OMP_NUM_THREADS=str(host))
    r = info_json(env)
    assert r["allocation"]["mpi"]["launcher"] == "Open MPI"
    assert f"2 MPI ranks on this node x {host} threads each (OMP_NUM_THREADS) = {2 * host}" in warnings_text(r)


def test_slurm_task_mismatch_and_idle_tasks_warn():
    r = info_json(clean_env(SLURM_JOB_ID="5", SLURM_NTASKS="4", SLURM_CPUS_PER_TASK="1",
                            SLURM_JOB_CPUS_PER_NODE="2"))
    text = warnings_text(r)
    assert "SLURM_NTASKS=4 x SLURM_CPUS_PER_TASK=1 = 4 CPUs, but SLURM_JOB_CPUS_PER_NODE gives the job only 2" in text
    assert "not started by srun" in text


def test_blas_threads_above_allocation_warns():
    # numpy's BLAS sizes its pool from the affinity; SLURM gives this process 1 CPU only.
    r = info_json(clean_env(SLURM_CPUS_PER_TASK="1"))
    blas = [lib for lib in r["thread_libraries"] if lib.get("user_api") == "blas"]
    if not blas or (blas[0].get("num_threads") or 1) <= 1:
        pytest.skip("numpy's BLAS runs a single thread here")
    threads = blas[0]["num_threads"]
    assert f"will run {threads} threads but this process may use 1 CPU" in warnings_text(r)


def test_blas_threads_times_workers_warns():
    r = info_json()
    blas = [lib for lib in r["thread_libraries"] if lib.get("user_api") == "blas"]
    threads = (blas[0].get("num_threads") or 1) if blas else 1
    workers = r["default_workers"]
    expected = f"{workers} workers each calling it would run {workers * threads} threads"
    if workers > 1 and threads > 1 and workers * threads > r["cpus"] and threads <= r["cpus"]:
        assert expected in warnings_text(r)
    else:
        assert expected not in warnings_text(r)


def test_summary_for_the_demo():
    code = "from shoal import info; raise SystemExit(info.main(as_json=False, summary=True))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=clean_env(SLURM_CPUS_PER_TASK="1"))
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("shoal ") and "1 CPU for this process (decided by SLURM_CPUS_PER_TASK=1)" in first
    assert "hardware:" in out.stdout


def test_shoal_info_is_callable_and_json_ready():
    import shoal
    import shoal.info  # replaces the package attribute with the module: still callable

    r = shoal.info()
    json.dumps(r)
    assert r["cpus"] == shoal.default_workers()
    assert callable(shoal.info.main)


def test_slurm_memory_limit_reported():
    r = info_json(clean_env(SLURM_JOB_ID="3", SLURM_MEM_PER_NODE="1024"))
    assert r["memory"]["limit_bytes"] == 1024 << 20
    assert r["memory"]["limit_source"] == "SLURM_MEM_PER_NODE=1024 (MB)"
    assert r["memory"]["physical_bytes"] > 0
    out = shoal_cli("info", env=clean_env(SLURM_JOB_ID="3", SLURM_MEM_PER_NODE="1024"))
    assert ("memory this job may use   1 GiB, limited by SLURM_MEM_PER_NODE=1024 (MB); physical RAM"
            in out.stdout)


def test_advice_names_each_librarys_variable():
    import pathlib

    from shoal.allocation import Allocation
    from shoal.info import advice

    root = pathlib.Path(__file__).resolve().parents[1] / "cpp" / "fixtures" / "no_cgroup"
    a = Allocation.detect(env={"SLURM_CPUS_PER_TASK": "2"}, sys_root=str(root))
    libs = [{"user_api": "openmp", "internal_api": "openmp", "num_threads": 4},
            {"user_api": "blas", "internal_api": "mkl", "num_threads": 2}]
    text = "\n".join(advice(a, libs, cpu_count=8))
    assert "os.cpu_count() says 8 but this job may use 2 (SLURM_CPUS_PER_TASK=2)" in text
    assert "openmp (openmp) will run 4 threads but this process may use 2 CPUs" in text
    assert "OMP_NUM_THREADS=2" in text
    assert "2 workers each calling it would run 4 threads" in text and "MKL_NUM_THREADS=1" in text


def test_batch_step_follows_cpus_on_node_and_says_so():
    # sbatch --ntasks=N --cpus-per-task=1: the batch script is no srun task; it
    # may use the job's CPUs on this node (SLURM_CPUS_ON_NODE), its cgroup and
    # its affinity, not SLURM_CPUS_PER_TASK=1.
    cpus = min(2, len(os.sched_getaffinity(0)))
    slurm = dict(SLURM_JOB_ID="5", SLURM_NTASKS="4", SLURM_CPUS_PER_TASK="1",
                 SLURM_CPUS_ON_NODE=str(cpus))
    r = info_json(clean_env(**slurm))
    assert r["cpus"] == r["default_workers"] == cpus
    assert r["cpus_source"] == (f"SLURM_CPUS_ON_NODE={cpus} (the batch step, not an srun task: "
                                "SLURM_CPUS_PER_TASK=1 sizes srun's tasks)")
    text = shoal_cli("info", env=clean_env(**slurm)).stdout
    assert "in the batch step (not under srun)" in text
    # The same job's srun step: one CPU per task.
    r = info_json(clean_env(**slurm, SLURM_STEP_ID="0"))
    assert r["cpus"] == 1 and r["cpus_source"] == "SLURM_CPUS_PER_TASK=1"


def test_ntasks_warning_gives_a_pool_user_the_fix():
    r = info_json(clean_env(SLURM_JOB_ID="5", SLURM_NTASKS="4", SLURM_CPUS_PER_TASK="2",
                            SLURM_CPUS_ON_NODE="1"))
    assert ("for one shoal.Pool, submit with --ntasks=1 --cpus-per-task=N instead (N=8 asks for "
            "as many CPUs, on one node)") in warnings_text(r)


@pytest.mark.parametrize("slurm, limited_by", [
    ({"SLURM_MEM_PER_NODE": "1024"}, "SLURM_MEM_PER_NODE=1024 (MB)"),
    ({"SLURM_MEM_PER_CPU": "512", "SLURM_CPUS_ON_NODE": "1"},
     "SLURM_MEM_PER_CPU=512 (MB) x SLURM_CPUS_ON_NODE=1"),
    ({"SLURM_MEM_PER_NODE": str(1 << 40)}, "physical RAM (sysconf)"),  # 1 EiB: RAM is smaller
])
def test_memory_line_names_the_figure_that_limits(slurm, limited_by):
    env = clean_env(SLURM_JOB_ID="3", **slurm)
    mem = info_json(env)["memory"]
    if mem["limit_source"].startswith("/sys/fs/cgroup") and limited_by.startswith("SLURM"):
        pytest.skip("a cgroup memory limit here is smaller than the simulated SLURM one")
    assert mem["limited_by"] == limited_by
    assert mem["usable_bytes"] == min(b for b in (mem["limit_bytes"], mem["physical_bytes"]) if b)
    out = shoal_cli("info", env=env).stdout
    assert f"memory this job may use   " in out and f"limited by {limited_by}" in out
