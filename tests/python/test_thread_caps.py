"""Library thread caps and oversubscription warnings as a user meets them: a
driver script in a subprocess whose environment simulates the job (SLURM
variables, the user's own OPENBLAS_NUM_THREADS), real worker processes and
threads reporting what they see (their environment, threadpoolctl)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_info import clean_env

pytest.importorskip("numpy")
pytest.importorskip("threadpoolctl")

# Printed by the driver: one JSON line with what each worker saw, and every
# warning raised while the pools started.
DRIVER_HEAD = '''
import json, os, sys, warnings
warnings.simplefilter("always")
import numpy  # the driver's BLAS, inherited by forked workers
import shoal

def seen(_=None):
    import os
    from threadpoolctl import threadpool_info
    return {"env": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                    "MKL_NUM_THREADS", "SHOAL_NUM_THREADS")},
            "blas": [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]}

out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
'''


def drive(body, **env):
    code = DRIVER_HEAD + textwrap.indent(textwrap.dedent(body), "    ") + '''
out["warnings"] = [(w.category.__name__, str(w.message), os.path.basename(w.filename))
                   for w in caught]
print(json.dumps(out))
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=clean_env(**env))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def driver_blas_threads():
    out = drive("out['driver'] = seen()")
    return max(out["driver"]["blas"] or [1])


def test_process_workers_cap_blas_at_the_slurm_allocation():
    # SLURM_CPUS_PER_TASK=1: one worker, and one BLAS thread in it, whatever
    # the affinity mask holds (it used to be len(sched_getaffinity) // workers).
    out = drive('''
        with shoal.Pool() as pool:
            out["workers"] = pool.workers
            out["seen"] = pool.map(seen, range(pool.workers))
    ''', SLURM_CPUS_PER_TASK="1")
    assert out["workers"] == 1
    for w in out["seen"]:
        assert w["env"] == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                            "MKL_NUM_THREADS": "1", "SHOAL_NUM_THREADS": "1"}
        assert w["blas"] and set(w["blas"]) == {1}
    assert out["warnings"] == []


def test_process_workers_cap_without_numpy_in_the_driver():
    # The worker loads numpy itself: the environment shoal set sizes its BLAS.
    code = '''
import json, shoal
def seen(_):
    import os, numpy
    from threadpoolctl import threadpool_info
    return os.environ["OPENBLAS_NUM_THREADS"], [l["num_threads"] for l in threadpool_info()
                                                if l["user_api"] == "blas"]
with shoal.Pool() as pool:
    print(json.dumps(pool.map(seen, range(pool.workers))))
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=clean_env(SLURM_CPUS_PER_TASK="1"))
    assert r.returncode == 0, r.stderr
    ((var, blas),) = json.loads(r.stdout)
    assert var == "1" and set(blas) == {1}


def test_users_own_thread_count_is_kept_and_warned_about_once():
    out = drive('''
        with shoal.Pool(1) as pool:
            out["seen"] = pool.map(seen, [0])
    ''', SLURM_CPUS_PER_TASK="1", OPENBLAS_NUM_THREADS="2")
    (w,) = out["seen"]
    assert w["env"]["OPENBLAS_NUM_THREADS"] == "2"  # the user's, not overridden
    assert w["env"]["OMP_NUM_THREADS"] == "1"       # the ones left alone are capped
    assert set(w["blas"]) == {2}
    assert len(out["warnings"]) == 1, out["warnings"]
    category, message, filename = out["warnings"][0]
    assert category == "OversubscriptionWarning"
    assert "OPENBLAS_NUM_THREADS=2 set in the environment: 1 worker x those threads is more than " \
           "the 1 CPU of this job (SLURM_CPUS_PER_TASK=1)" in message
    assert filename == "<string>"  # points at the user's line, not into shoal


def test_omp_num_threads_set_by_the_user_sizes_the_blas_too():
    # OpenBLAS and MKL read OMP_NUM_THREADS when their own variable is unset:
    # shoal does not set theirs over the user's choice.
    out = drive('''
        with shoal.Pool(1) as pool:
            out["seen"] = pool.map(seen, [0])
    ''', SLURM_CPUS_PER_TASK="1", OMP_NUM_THREADS="1")
    (w,) = out["seen"]
    assert w["env"] == {"OPENBLAS_NUM_THREADS": None, "OMP_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": None, "SHOAL_NUM_THREADS": "1"}
    assert out["warnings"] == []


def test_threads_backend_caps_blas_while_the_pool_lives():
    if driver_blas_threads() < 2:
        pytest.skip("numpy's BLAS runs a single thread here")
    out = drive('''
        out["before"] = seen()["blas"]
        with shoal.Pool(2, backend="threads") as pool:
            out["seen"] = pool.map(seen, range(4))
        out["after"] = seen()["blas"]
    ''', SLURM_CPUS_PER_TASK="1")
    for w in out["seen"]:
        assert set(w["blas"]) == {1}      # 2 threads x 1 BLAS thread on 1 CPU
        assert w["env"]["OPENBLAS_NUM_THREADS"] is None  # the process's env is not touched
    assert out["after"] == out["before"]  # back once the pool is gone
    assert out["warnings"] == []          # threads may outnumber CPUs (I/O)


def test_threads_backend_keeps_the_users_count():
    out = drive('''
        with shoal.Pool(2, backend="threads") as pool:
            out["seen"] = pool.map(seen, range(2))
    ''', SLURM_CPUS_PER_TASK="1", OPENBLAS_NUM_THREADS="2")
    for w in out["seen"]:
        assert set(w["blas"]) == {2}
    assert [w[0] for w in out["warnings"]] == ["OversubscriptionWarning"]
    assert "2 workers x those threads" in out["warnings"][0][1]


def test_more_process_workers_than_cpus_warns_once_per_pool():
    out = drive('''
        with shoal.Pool(2) as pool:
            pool.map(abs, [1])
        with shoal.Executor(2) as ex:
            ex.submit(abs, 1).result()
        with shoal.Pool() as pool, shoal.Pool(2, backend="threads") as threads:
            pass
    ''', SLURM_CPUS_PER_TASK="1")
    assert [w[0] for w in out["warnings"]] == ["OversubscriptionWarning"] * 2, out["warnings"]
    for _, message, filename in out["warnings"]:
        assert message.startswith("2 workers share 1 CPU (SLURM_CPUS_PER_TASK=1)")
        assert "shoal.default_workers() = 1" in message
        assert filename == "<string>"
    assert issubclass(__import__("shoal").OversubscriptionWarning, RuntimeWarning)


def test_unknown_backend_lists_every_backend():
    # A fresh process: no backend module is imported yet.
    code = '''
import shoal
try:
    shoal.Pool(backend="nope")
except ValueError as e:
    print(e)
'''
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "unknown backend 'nope'; the backends are: 'mpi', 'processes', 'threads'"
