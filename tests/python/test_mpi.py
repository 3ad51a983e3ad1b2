"""The mpi backend from the outside: real ``mpirun`` jobs (Open MPI, with
--oversubscribe on this small machine) running a user's script. The
Pool/Executor contract itself runs on the mpi backend from the same test
bodies as the other backends (tests/python/test_conformance_*.py under
``python -m shoal.mpi -m pytest``, see the Makefile's mpi-test target);
this file covers what only a launcher shows: how scripts start, the
mpi4py.futures drop-ins, bad launches and dying ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.timeout(240)

MPIRUN = shutil.which("mpirun") or shutil.which("mpiexec")


def mpi_env() -> dict:
    env = dict(os.environ)
    # As root, Open MPI refuses to start without these (a container here).
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def mpirun(n: int, *args: str, timeout: float = 180, env: dict | None = None):
    assert MPIRUN, "mpirun is missing: scripts/ensure-system-deps.sh installs openmpi-bin"
    cmd = [MPIRUN, "--oversubscribe", "-n", str(n), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or mpi_env())


def script(tmp_path, body: str, name: str = "job.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def last_json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def shm_orphans() -> list[str]:
    """shoal's segments whose creator (shoal.<pid>.*) is gone."""
    out = []
    for f in os.listdir("/dev/shm"):
        parts = f.split(".")
        if parts[0] == "shoal" and len(parts) > 2 and parts[1].isdigit():
            if not os.path.exists(f"/proc/{parts[1]}"):
                out.append(f)
    return out


POOL_SCRIPT = """
import json, math, sys
import shoal

def square(x):
    return x * x

def where(_):
    import os, time
    time.sleep(0.005)  # long enough that no worker can take every item alone
    return os.getpid()

with shoal.Pool(backend="mpi") as pool:
    out = pool.map(square, range(1000))
    ranks = sorted(set(pool.map(where, range(200), chunksize=1)))
    lam = pool.map(lambda x: x + 1, range(5))
with shoal.Executor(backend="mpi") as ex:
    futs = [ex.submit(pow, 2, i) for i in range(10)]
    pw = [f.result() for f in futs]
import os
from shoal.mpi import layout
nodes = [[n.ranks, n.spawned] for n in layout().nodes]
print(json.dumps({"ok": out == [i * i for i in range(1000)], "pids": ranks, "lam": lam,
                  "pw": pw, "workers": pool.workers, "nodes": nodes, "root": os.getpid()}))
"""


@pytest.mark.parametrize("n,node_size,nodes", [(2, 0, 1), (3, 0, 1), (5, 0, 1), (5, 2, 2),
                                               (4, 1, 3)])
def test_python_m_shoal_mpi_runs_the_script_on_rank_0_and_every_worker_serves(
        tmp_path, n, node_size, nodes):
    env = {**mpi_env(), "SHOAL_MPI_NODE_SIZE": str(node_size)}
    r = mpirun(n, "-x", "SHOAL_MPI_NODE_SIZE", sys.executable, "-m", "shoal.mpi",
               script(tmp_path, POOL_SCRIPT), env=env)
    out = last_json(r)
    assert out["ok"] and out["lam"] == [1, 2, 3, 4, 5]
    assert out["pw"] == [2 ** i for i in range(10)]
    # the serving ranks 1..n-1 in `nodes` (virtual) nodes, each led by its first
    assert [ranks for ranks, _ in out["nodes"]] == \
        [list(range(1, n))[i:i + (node_size or n)] for i in range(0, n - 1, node_size or n)]
    assert len(out["nodes"]) == nodes
    # every worker: a leader's worker processes, the other ranks
    assert out["workers"] == sum(spawned + len(ranks) - 1 for ranks, spawned in out["nodes"])
    assert all(spawned >= 1 for _, spawned in out["nodes"])
    assert len(out["pids"]) == out["workers"]  # every worker took tasks
    assert out["root"] not in out["pids"]


def test_one_rank_is_a_clear_error(tmp_path):
    r = mpirun(1, sys.executable, "-m", "shoal.mpi", script(tmp_path, POOL_SCRIPT))
    assert r.returncode != 0
    assert "at least 2 ranks" in r.stderr and "mpirun -n 3 python -m shoal.mpi" in r.stderr


def test_backend_mpi_without_a_launcher_is_a_clear_error(tmp_path):
    env = {k: v for k, v in mpi_env().items() if not k.startswith(("OMPI_COMM", "PMI", "PMIX"))}
    r = subprocess.run([sys.executable, script(tmp_path, POOL_SCRIPT)], capture_output=True,
                       text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert "not started by an MPI launcher" in r.stderr
    assert "mpirun -n 3 python -m shoal.mpi script.py" in r.stderr


def test_backend_mpi_in_a_script_every_rank_runs_is_a_clear_error(tmp_path):
    r = mpirun(2, sys.executable, script(tmp_path, POOL_SCRIPT))
    assert r.returncode != 0
    assert "without 'python -m shoal.mpi'" in r.stderr


MPI4PY_PROGRAM = """
import json, sys
from {module} import MPIPoolExecutor

def cube(x):
    return x ** 3

def add(a, b):
    return a + b

if __name__ == "__main__":
    with MPIPoolExecutor() as ex:
        a = list(ex.map(cube, range(50), chunksize=4))
        b = list(ex.starmap(add, [(i, i) for i in range(10)]))
        c = sorted(ex.map(cube, range(20), unordered=True))
        d = ex.submit(cube, 3).result()
        n = ex.num_workers
        try:
            ex.submit(divmod, 1, 0).result()
        except ZeroDivisionError as exc:
            e = type(exc).__name__
    print(json.dumps([a, b, c, d, e, n]))
"""


def test_an_mpi4py_futures_program_runs_unchanged_after_its_import_line_changes(tmp_path):
    expected = [[i ** 3 for i in range(50)], [2 * i for i in range(10)],
                sorted(i ** 3 for i in range(20)), 27, "ZeroDivisionError", 2]
    ref = mpirun(3, sys.executable, "-m", "mpi4py.futures",
                 script(tmp_path, MPI4PY_PROGRAM.format(module="mpi4py.futures"), "ref.py"))
    assert last_json(ref) == expected  # what mpi4py.futures itself gives
    ours = mpirun(3, sys.executable, "-m", "shoal.mpi",
                  script(tmp_path, MPI4PY_PROGRAM.format(module="shoal.mpi"), "ours.py"))
    assert last_json(ours) == expected


COMM_EXECUTOR = """
import json
from mpi4py import MPI                      # the user's own mpi4py first
from shoal.mpi import MPICommExecutor

def rank_of(_):
    return MPI.COMM_WORLD.Get_rank()

with MPICommExecutor(MPI.COMM_WORLD, root=0) as ex:
    if ex is not None:
        got = sorted(set(ex.map(rank_of, range(100))))
        print(json.dumps(got))
MPI.COMM_WORLD.Barrier()                    # every rank gets here: the serving ones too
"""


def test_mpi_comm_executor_in_a_script_every_rank_runs(tmp_path):
    # SHOAL_MPI_LEADER_WORKERS=0: the node's leader (rank 1) only routes, and
    # the tasks run on the other ranks, in the job's MPI.
    env = {**mpi_env(), "SHOAL_MPI_LEADER_WORKERS": "0"}
    r = mpirun(4, "-x", "SHOAL_MPI_LEADER_WORKERS", sys.executable,
               script(tmp_path, COMM_EXECUTOR), env=env)
    assert last_json(r) == [2, 3]


def test_a_task_in_a_leaders_worker_process_gets_an_mpi_of_its_own(tmp_path):
    # The worker processes a leader spawns are not ranks of the job: a task
    # there that uses mpi4py gets a singleton MPI (rank 0 of 1), not an
    # error; the node's other rank (2) answers with its rank in the job.
    r = mpirun(3, sys.executable, script(tmp_path, COMM_EXECUTOR))
    assert last_json(r) == [0, 2]


REMOTE_ERROR = """
import sys, shoal

class Bad(Exception):
    pass

def fail(x):
    raise Bad(f"task {x} failed")   # the line the traceback shows

with shoal.Pool(backend="mpi") as pool:
    try:
        pool.map(fail, [4])
    except Bad as exc:
        print("caught", type(exc).__name__, exc)
        print(exc.__cause__)
    try:
        pool.apply(lambda: __import__("threading").Lock())
    except TypeError as exc:
        print("unpicklable", isinstance(exc, shoal.SerializationError))
    print("alive", pool.map(abs, [-1, -2]))
"""


def test_a_task_that_raises_shows_its_remote_traceback_and_the_pool_lives_on(tmp_path):
    path = script(tmp_path, REMOTE_ERROR)
    r = mpirun(3, sys.executable, "-m", "shoal.mpi", path)
    assert r.returncode == 0, r.stderr
    assert "caught Bad task 4 failed" in r.stdout
    assert f'File "{path}", line 8, in fail' in r.stdout
    assert "unpicklable True" in r.stdout
    assert "alive [1, 2]" in r.stdout


SCRIPT_RAISES = """
import shoal
with shoal.Pool(backend="mpi") as pool:
    pool.map(abs, [1])
raise SystemExit(7)
"""


def test_the_scripts_exit_code_is_the_jobs(tmp_path):
    r = mpirun(3, sys.executable, "-m", "shoal.mpi", script(tmp_path, SCRIPT_RAISES))
    assert r.returncode == 7


RANK_DIES = """
import os, signal, sys, time
import shoal

DONE = 0

def work(x):
    global DONE
    DONE += 1
    if DONE == 5 and os.environ.get("OMPI_COMM_WORLD_RANK") == "2":
        os.kill(os.getpid(), signal.SIGKILL)   # rank 2, mid-job, on its fifth task
    time.sleep(0.01)
    return x

with shoal.Pool(backend="mpi") as pool:
    print(sum(pool.map(work, range(200), chunksize=1)))
"""


def test_a_rank_killed_mid_job_ends_the_job_promptly_and_leaves_nothing(tmp_path):
    before = set(shm_orphans())
    t0 = time.monotonic()
    r = mpirun(3, sys.executable, "-m", "shoal.mpi", script(tmp_path, RANK_DIES), timeout=120)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 100  # never a hang (the pytest timeout is the backstop)
    text = r.stdout + r.stderr
    assert "rank 2" in text or "rank=2" in text, text
    # Open MPI names the rank that died and its node; shoal's root adds what
    # the job's workers still held, and where, when the launcher's SIGTERM
    # reaches it before its SIGKILL (not always: a race of the launcher's)
    assert "on node" in text, text
    if "shoal: the MPI job is being ended" in text:
        assert "task(s) unfinished" in text and " on " in text, text
    time.sleep(1)
    assert set(shm_orphans()) <= before
    ps = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert ps.stdout.strip() == "", ps.stdout


WORKER_DIES = """
import json, os, signal, sys, time
import shoal

def spawned():
    # a worker process of a leader (not a rank: no launcher variables)
    return "OMPI_COMM_WORLD_RANK" not in os.environ

def die_on(x):
    if x == 3 and spawned():
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.01)
    return x

def die_once(path):
    if spawned() and not os.path.exists(path):
        open(path, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "ran again"

def pid(_):
    time.sleep(0.01)
    return os.getpid() if spawned() else 0

out = {}
with shoal.Pool(backend="mpi") as pool:
    pids = set(pool.map(pid, range(40), chunksize=1)) - {0}
    try:
        pool.map(die_on, range(8), chunksize=1)
        out["lost"] = None
    except shoal.WorkerLost as exc:
        out["lost"] = str(exc)
    out["after"] = pool.map(abs, [-1, -2, -3])
    pids |= set(pool.map(pid, range(40), chunksize=1)) - {0}
with shoal.Pool(backend="mpi", retries=1) as pool:
    out["retried"] = pool.apply(die_once, (sys.argv[1],))
    pids |= set(pool.map(pid, range(40), chunksize=1)) - {0}
out["pids"] = sorted(pids)
print(json.dumps(out))
"""


@pytest.mark.parametrize("n", [2, 3])
def test_a_worker_process_under_a_rank_dies_fails_or_retries_its_task(tmp_path, n):
    before = set(shm_orphans())
    env = {**mpi_env(), "SHOAL_MPI_LEADER_WORKERS": "2"}
    r = mpirun(n, "-x", "SHOAL_MPI_LEADER_WORKERS", sys.executable, "-m", "shoal.mpi",
               script(tmp_path, WORKER_DIES), str(tmp_path / "marker"), env=env)
    out = last_json(r)
    # the task it ran fails with WorkerLost naming the worker, its rank and host
    assert out["lost"] is not None and "killed by SIGKILL" in out["lost"], out
    assert "worker process" in out["lost"] and "of rank 1 on" in out["lost"], out
    assert "task" in out["lost"] and "die_on" in out["lost"], out
    assert out["after"] == [1, 2, 3]          # the pool lives on, with a replacement
    assert out["retried"] == "ran again"      # retries=1: it ran again elsewhere
    assert len(out["pids"]) >= 3              # 2 workers, then at least one replacement
    time.sleep(0.5)
    assert not [p for p in out["pids"] if os.path.exists(f"/proc/{p}")]  # all gone
    assert set(shm_orphans()) <= before


def test_ctrl_c_of_mpirun_leaves_no_process(tmp_path):
    path = script(tmp_path, """
        import time, shoal
        with shoal.Pool(backend="mpi") as pool:
            print("started", flush=True)
            pool.map(time.sleep, [30] * 4, chunksize=1)
    """)
    p = subprocess.Popen([MPIRUN, "--oversubscribe", "-n", "3", sys.executable, "-m",
                          "shoal.mpi", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=mpi_env())
    try:
        assert p.stdout.readline().strip() == "started"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ps = subprocess.run(["pgrep", "-f", path], capture_output=True, text=True)
        if not ps.stdout.strip():
            break
        time.sleep(0.2)
    assert ps.stdout.strip() == "", ps.stdout


def test_the_mpi_benchmark_runs_beside_mpi4py_futures():
    here = os.path.dirname(os.path.abspath(__file__))
    bench = os.path.join(here, "..", "..", "benchmarks", "mpi", "bench_mpi.py")
    r = mpirun(3, sys.executable, bench, "--quick", "--repeats", "1", timeout=200)
    assert r.returncode == 0, r.stdout + r.stderr
    for goal in ("1    map", "2    ", "3    submit", "4    map", "5    eight", "6    the course",
                 "7    root", "8    idle"):
        assert goal in r.stdout, r.stdout


FUNNELED = """
import mpi4py
mpi4py.rc.thread_level = "funneled"          # below what shoal's engine thread needs
from mpi4py import MPI
from shoal.mpi import MPICommExecutor
try:
    with MPICommExecutor() as ex:
        pass
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_an_mpi_library_below_the_needed_thread_level_is_a_clear_error(tmp_path):
    r = mpirun(2, sys.executable, script(tmp_path, FUNNELED))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("MPIError") == 2, r.stdout  # every rank says so, none hangs
    assert "MPI_THREAD_SERIALIZED" in r.stdout and "MPI_THREAD_FUNNELED" in r.stdout
