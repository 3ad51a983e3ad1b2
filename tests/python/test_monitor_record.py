"""The monitor's recording side: real pools, real worker processes and shared
memory, the file read back into a Run (shoal/monitor/_run.py).

Timing checks have bounds that a wrong recording cannot meet by accident
(a 50 ms sleep measured as 45-1000 ms: a start or end taken from the
driver's side, or a clock in the wrong unit, lands far outside)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import shoal
import shoal.monitor
from shoal.monitor import MonitorFileError, MonitorWarning
from shoal.monitor._run import CANCELLED, LOST, OK, RAISED, RETRIED, TIMED_OUT

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import monitor_helpers as mh  # noqa: E402

BACKENDS = ["processes", "threads"]
pytestmark = pytest.mark.timeout(120)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SHOAL_MONITOR", None)
    return env


@pytest.mark.parametrize("backend", BACKENDS)
def test_sleep_schedule_is_recorded_task_by_task(tmp_path, backend):
    path = tmp_path / "run.shoal"
    with shoal.monitor(path) as mon:
        with shoal.Pool(2, backend=backend) as pool:
            assert pool.map(mh.nap, range(40), chunksize=1) == list(range(40))
    assert mon.stats()["tasks"] == 40  # (the reports read what was recorded)
    run = shoal.monitor.load(path)
    assert run.truncated == "" and run.dropped == 0
    assert backend in run.meta["backends"]
    t = run.tasks
    assert len(t) == 40 and len(np.unique(t["task"])) == 40
    assert (t["outcome"] == OK).all() and (t["attempt"] == 0).all()
    assert (t["submit"] >= 0).all() and (t["start"] >= t["submit"]).all()
    took = t["end"] - t["start"]
    assert (took >= 45_000_000).all() and (took < 1_000_000_000).all(), took
    assert run.functions[t["fn"][0]].endswith("nap")
    # Two workers, each with its share of the tasks' time.
    assert len(run.workers) == 2
    assert set(t["worker"]) == {0, 1}
    busy = np.array([took[t["worker"] == w].sum() for w in (0, 1)], float)
    share = busy / busy.sum()
    assert (abs(share - 0.5) < 0.2).all(), share
    # The always-on counters agree with the records.
    c = run.counters
    assert c["tasks"].sum() == 40
    assert abs(int(c["busy_ns"].sum()) - int(took.sum())) < 1_000_000
    assert c["hist"].sum() == 40 and c["hist"][:, 25:27].sum() == 40  # 2^25 ns = 34 ms
    if backend == "processes":
        assert (run.workers["pid"] > 0).all()
        assert (t["bytes_in"] > 0).all() and (t["bytes_out"] > 0).all()
    else:
        assert (run.workers["tid"] > 0).all()
    # The sampler ran: samples for the workers, the system and the job's cores.
    assert len(run.system_samples) >= 2
    assert run.core_busy.shape[1] == len(run.core_ids) == len(os.sched_getaffinity(0))
    assert set(run.worker_samples["worker"]) >= {0, 1}
    assert run.meta["cpu_ids"] == sorted(os.sched_getaffinity(0))
    assert run.meta["end_ns"] > 40 * 50_000_000 / 2
    assert run.meta["gpu_note"]


def test_outcomes_of_the_processes_backend(tmp_path):
    path = tmp_path / "run.shoal"
    marker = str(tmp_path / "died")
    with shoal.monitor(path):
        with shoal.Executor(2, retries=0) as ex:
            raised = ex.submit(mh.fail, 1)
            lost = ex.submit(mh.die, 2)
            timed = ex.submit_with(mh.nap, (3, 30.0), timeout=0.5)
            for f in (raised, lost, timed):
                f.exception(60)
        with shoal.Executor(1, retries=1) as ex:
            assert ex.submit(mh.die_once, 4, marker).result(60) == 4
        with shoal.Executor(1) as ex:
            ex.submit(mh.nap, 0, 1.0)
            queued = [ex.submit(mh.nap, i, 1.0) for i in range(20)]
            ex.shutdown(wait=True, cancel_futures=True)
            assert any(f.cancelled() for f in queued)
    run = shoal.monitor.load(path)
    assert run.truncated == ""
    t = run.tasks
    outcomes = set(t["outcome"])
    assert {OK, RAISED, LOST, TIMED_OUT, CANCELLED, RETRIED} <= outcomes, outcomes
    fn = np.array(run.functions)[t["fn"]]
    raised = t[(t["outcome"] == RAISED)]
    assert len(raised) == 1 and fn[t["outcome"] == RAISED][0].endswith("fail")
    assert 0 <= raised["submit"][0] <= raised["start"][0] <= raised["end"][0]
    assert raised["bytes_out"][0] > 100  # the pickled exception and its traceback
    lost = t[t["outcome"] == LOST][0]
    assert lost["start"] >= 0 and lost["end"] >= lost["start"] and lost["worker"] != 0xFFFFFFFF
    timed = t[t["outcome"] == TIMED_OUT][0]
    assert 400_000_000 <= timed["end"] - timed["start"] < 30_000_000_000
    # the retried task: a RETRIED attempt 0, then its ok attempt 1 on the replacement
    rid = t[t["outcome"] == RETRIED][0]["task"]
    rows = t[t["task"] == rid]
    assert list(rows["attempt"]) == [0, 1] and list(rows["outcome"]) == [RETRIED, OK]
    assert rows["worker"][0] != rows["worker"][1]
    assert (t["outcome"] == CANCELLED).sum() >= 1
    # the replaced workers end, their replacements start
    assert len(run.workers) >= 2 + 2 + 1 + 1
    # each worker's counters are its own, not its slot's since the start
    c = run.counters
    assert (c["tasks"] < 1000).all() and (c["hist"].sum(axis=1) == c["tasks"]).all()
    ran = t[np.isin(t["outcome"], [OK, RAISED])]
    assert c["tasks"].sum() == len(ran)
    for row in c:
        assert row["tasks"] == (ran["worker"] == row["worker"]).sum()


def test_outcomes_of_the_threads_backend(tmp_path):
    path = tmp_path / "run.shoal"
    with shoal.monitor(path):
        with shoal.Executor(1, backend="threads") as ex:
            assert isinstance(ex.submit(mh.fail, 1).exception(30), ValueError)
            queued = [ex.submit(mh.nap, i, 0.5) for i in range(6)]
            ex.shutdown(wait=True, cancel_futures=True)
    run = shoal.monitor.load(path)
    t = run.tasks
    assert (t["outcome"] == RAISED).sum() == 1
    assert (t["outcome"] == CANCELLED).sum() == sum(f.cancelled() for f in queued) >= 1
    assert (t["outcome"] == OK).sum() == sum(not f.cancelled() for f in queued)
    assert len(t) == 7


def test_native_loops_record_each_threads_busy_time(tmp_path):
    numba = pytest.importorskip("numba")
    from numba import cfunc, types

    @cfunc(types.void(types.int64, types.int64, types.voidptr))
    def spin(b, e, ctx):
        x = 0.0
        for i in range(b * 20000, e * 20000):
            x += i * 1e-9
        if x < 0:
            print(x)

    path = tmp_path / "run.shoal"
    with shoal.monitor(path):
        shoal.parallel_for(64, spin, threads=2)
        shoal.parallel_for(64, spin, threads=2)
    run = shoal.monitor.load(path)
    n = run.native
    assert set(n["call"]) == {0, 1}
    for call in (0, 1):
        rows = n[n["call"] == call]
        assert (rows["end"] >= rows["start"]).all()
        span = rows["end"][0] - rows["start"][0]
        assert 0 < rows["busy_ns"].sum() <= 2 * span
        assert (rows["busy_ns"] <= span).all()


def test_env_variable_records_a_whole_script(tmp_path):
    path = tmp_path / "env.shoal"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import shoal, monitor_helpers as mh
        with shoal.Pool(2) as pool:
            assert pool.map(mh.ident, range(100), chunksize=10) == list(range(100))
    """))
    env = _env()
    env["SHOAL_MONITOR"] = str(path)
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    run = shoal.monitor.load(path)
    assert run.truncated == ""
    assert len(run.tasks) == 10 and (run.tasks["outcome"] == OK).all()
    assert run.meta["argv"] == [str(script)]


def test_shoal_run_records_any_script_and_keeps_its_exit_status(tmp_path):
    path = tmp_path / "cli.shoal"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import sys, shoal, monitor_helpers as mh
        def sq(x):
            return x * x
        if __name__ == "__main__":
            with shoal.Pool(2) as pool:
                print(sum(pool.map(sq, range(int(sys.argv[1])), chunksize=1)))
            sys.exit(7)
    """))
    r = subprocess.run([sys.executable, "-m", "shoal", "run", "--monitor", str(path), str(script),
                        "30"], env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr
    assert r.stdout.strip() == str(sum(x * x for x in range(30)))
    assert "Verdict" in r.stderr  # the summary, on stderr
    run = shoal.monitor.load(path)
    assert len(run.tasks) == 30 and run.truncated == ""
    assert run.meta["argv"] == [str(script), "30"]
    assert run.functions[run.tasks["fn"][0]].endswith("sq")


VERDICT_JOB = """
import sys, time, shoal

def spin(x):
    t = time.process_time()
    while time.process_time() - t < 0.008:   # 8 ms of CPU, whatever the machine's load
        pass
    return x

if __name__ == "__main__":
    with shoal.Pool(int(sys.argv[1])) as pool:
        pool.map(spin, range(int(sys.argv[2])), chunksize=1)
"""


def _verdict_of(tmp_path, workers, tasks, **env):
    path = tmp_path / f"w{workers}.shoal"
    script = tmp_path / "verdict_job.py"
    script.write_text(VERDICT_JOB)
    r = subprocess.run([sys.executable, "-m", "shoal", "run", "--monitor", str(path), str(script),
                        str(workers), str(tasks)], env={**_env(), **env}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from shoal.monitor import _summary

    stats = _summary.stats(shoal.monitor.load(path))
    return stats, {f["code"] for f in stats["findings"]}, r.stderr


def test_a_serial_script_is_called_effectively_serial(tmp_path):
    # One worker on a machine of 2 or more CPUs, really recorded: about one
    # CPU busy of the job's, which the verdict names.
    if shoal.allocation().cpus < 2:
        pytest.skip("needs 2 CPUs")
    stats, codes, text = _verdict_of(tmp_path, 1, 200, SHOAL_WORKER_SPIN_US="0")
    assert "serial" in codes, text
    assert "effectively serial" in text


def test_an_oversubscribed_script_gets_the_oversubscription_verdict(tmp_path):
    # Four CPU-bound workers per CPU the job was given: more runnable
    # threads than CPUs in most samples.
    cpus = shoal.allocation().cpus
    stats, codes, text = _verdict_of(tmp_path, 4 * cpus, 150 * cpus)
    assert "oversubscribed" in codes, text


def _small_run(path):
    with shoal.monitor(path):
        with shoal.Pool(2) as pool:
            pool.map(mh.ident, range(50), chunksize=1)


def test_a_cut_tail_loads_with_truncated_set(tmp_path):
    path = tmp_path / "run.shoal"
    _small_run(path)
    data = path.read_bytes()
    whole = shoal.monitor.load(path)
    assert whole.truncated == ""
    cut = tmp_path / "cut.shoal"
    cut.write_bytes(data[:-5])  # inside the end chunk
    run = shoal.monitor.load(cut)
    assert "cut" in run.truncated
    assert len(run.tasks) == 50
    # Cut further back (into sample chunks): still loads, says so.
    cut.write_bytes(data[: len(data) * 2 // 3])
    run = shoal.monitor.load(cut)
    assert run.truncated


def test_garbage_and_foreign_files_give_a_clear_error(tmp_path):
    path = tmp_path / "run.shoal"
    _small_run(path)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.shoal"
    for blob in (b"", b"hello world, not a monitor file" * 10, b"\x89PNG\r\n\x1a\n" + bytes(100),
                 os.urandom(4096)):
        bad.write_bytes(blob)
        with pytest.raises(MonitorFileError, match="not a shoal monitor file"):
            shoal.monitor.load(bad)
    data[40] ^= 0xFF  # inside the first chunk (the meta)
    bad.write_bytes(bytes(data))
    with pytest.raises(MonitorFileError, match="damaged"):
        shoal.monitor.load(bad)
    assert issubclass(MonitorFileError, ValueError)


def test_an_unwritable_path_warns_once_and_the_job_goes_on(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with shoal.monitor(tmp_path / "no" / "such" / "dir" / "run.shoal") as mon:
            with shoal.Pool(2) as pool:
                assert pool.map(mh.ident, range(100), chunksize=1) == list(range(100))
    assert [w.category for w in caught].count(MonitorWarning) == 1
    assert not mon.active


def test_a_tiny_ring_drops_records_and_counts_them_while_counters_stay_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_MONITOR_RING", "4")
    path = tmp_path / "run.shoal"
    n = 20000
    with shoal.monitor(path):
        with shoal.Pool(2) as pool:
            assert pool.map(mh.ident, range(n), chunksize=1) == list(range(n))
    run = shoal.monitor.load(path)
    assert run.meta["ring_capacity"] == 4
    assert run.dropped > 0
    assert len(run.tasks) + run.dropped == n
    assert run.counters["tasks"].sum() == n
    assert run.counters["hist"].sum() == n


def test_a_million_tasks_round_trip_within_the_size_budget(tmp_path):
    """1 M task records written through the C++ writer (as the sampler writes
    them: chunks of a tick's records) and read back."""
    from shoal import _core
    from shoal.monitor import _file

    n = 1_000_000
    path = tmp_path / "big.shoal"
    s = _core.MonitorSampler(str(path), 10.0, [0], 1024)
    s.append_json(1, '{"start_ns": 0, "cpu_ids": [0]}')
    s.append_json(3, "[[0, 1, 0, 1000, 0, 0], [0, 1, 1, 1001, 0, 0]]")
    s.append_json(2, '[[1, 1, "f"]]')
    rng = np.random.default_rng(1)
    ids = np.arange(1, n + 1, dtype=np.uint64)
    start = np.cumsum(rng.integers(1000, 50_000, n)).astype(np.int64)
    per_tick = 50_000
    for lo in range(0, n, per_tick):
        sl = slice(lo, lo + per_tick)
        d = np.zeros(1, _file.DRIVER_EVENT)
        d["kind"], d["task"], d["aux"], d["a"], d["pool"], d["t"] = 2, ids[lo], per_tick, 1, 1, start[lo]
        s.append_records(5, d.tobytes(), d.itemsize)
        ev = np.zeros(per_tick, _file.TASK_EVENT)
        ev["task"] = ids[sl]
        ev["start"] = start[sl] + 500
        ev["end"] = start[sl] + 500 + rng.integers(100, 40_000, per_tick)
        ev["bytes_out"] = 26
        ev["pid"] = 1000 + (ids[sl] & 1).astype(np.uint32)
        ev["pool"] = 1
        ev["slot"] = (ids[sl] & 1).astype(np.uint16)
        s.append_records(4, ev.tobytes(), ev.itemsize)
    s.stop('{"end_ns": 1, "dropped": 0}')
    size = path.stat().st_size
    assert size <= 32 * 2**20, size
    run = shoal.monitor.load(path)
    assert len(run.tasks) == n
    assert (run.tasks["task"] == ids).all()
    assert (run.tasks["start"] == start + 500).all()
    assert (run.tasks["outcome"] == OK).all()
    assert set(np.unique(run.tasks["worker"])) == {0, 1}


def test_monitoring_off_leaves_pools_without_a_recorder():
    from shoal.monitor import _session

    assert _session.current is None
    with shoal.Executor(1) as ex:
        assert ex.backend._engine.mon is None
        assert ex.submit(mh.ident, 5).result(30) == 5
    with shoal.Executor(1, backend="threads") as ex:
        assert ex.backend._state.mon is None


def test_a_killed_job_leaves_a_file_that_loads(tmp_path):
    """The driver is SIGKILLed mid-run: everything up to the sampler's last
    tick is in the file; the reader says the run did not end."""
    path = tmp_path / "killed.shoal"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import os, signal, time, shoal, monitor_helpers as mh
        with shoal.Pool(2) as pool:
            futs = [pool.apply_async(mh.nap, (i, 0.02)) for i in range(200)]
            futs[30].get()
            time.sleep(0.3)  # at least two ticks of the sampler
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    env = _env()
    env["SHOAL_MONITOR"] = str(path)
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == -9, r.stderr
    run = shoal.monitor.load(path)
    assert "no end record" in run.truncated
    t = run.tasks
    assert len(t) == 200  # every submit was recorded before the kill
    assert (t["outcome"] == OK).sum() >= 31
    lost = t[t["outcome"] == LOST]
    assert len(lost) > 0 and (lost["end"] == -1).all()


def test_a_full_disk_warns_once_and_the_job_goes_on(tmp_path):
    """The file stops taking writes mid-run (RLIMIT_FSIZE stands in for a
    full disk: write(2) fails with EFBIG): one MonitorWarning, the job's
    results are right, and what was written still loads."""
    path = tmp_path / "full.shoal"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import resource, signal, warnings
        import shoal, monitor_helpers as mh
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with shoal.monitor({str(path)!r}):
                with shoal.Pool(2) as pool:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (30000, 30000))
                    assert pool.map(mh.ident, range(50000), chunksize=1) == list(range(50000))
        kinds = [w.category.__name__ for w in caught]
        print(kinds.count("MonitorWarning"), [str(w.message) for w in caught][:1])
    """))
    r = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("1 "), r.stdout
    assert "cannot write the monitor file" in r.stdout
    assert path.stat().st_size <= 30000
    run = shoal.monitor.load(path)
    assert run.truncated


@pytest.mark.skipif(not (shutil.which("mpirun") or shutil.which("mpiexec")), reason="no mpirun")
def test_the_mpi_backend_records_its_ledger_on_rank_0(tmp_path):
    """Under mpirun with SHOAL_MONITOR set on every rank, rank 0 (the driver)
    records; the serving ranks do not touch the file. The ledger's records
    of each result (the ranks' workers attach no rings) make the tasks."""
    path = tmp_path / "mpi.shoal"
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import shoal
        def sq(x):
            return x * x
        with shoal.Pool(backend="mpi") as pool:
            assert pool.map(sq, range(300), chunksize=1) == [x * x for x in range(300)]
    """))
    env = _env()
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", SHOAL_MONITOR=str(path))
    env.pop("PYTHONWARNINGS", None)
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
    r = subprocess.run([mpirun, "--oversubscribe", "-n", "3", "-x", "SHOAL_MONITOR", sys.executable,
                        "-m", "shoal.mpi", str(script)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    run = shoal.monitor.load(path)
    assert run.truncated == ""
    assert "mpi" in run.meta["backends"]
    t = run.tasks
    assert len(t) == 300 and (t["outcome"] == OK).all()
    assert (t["end"] >= t["submit"]).all() and (t["submit"] >= 0).all()


def test_a_result_sent_by_reference_records_its_own_size(tmp_path):
    """Results over half a ring travel in a shared segment (the frame holds
    its name): bytes_out is the result's size all the same."""
    path = tmp_path / "big.shoal"
    with shoal.monitor(path):
        with shoal.Executor(1) as ex:
            assert len(ex.submit(mh.big, 3 << 20).result(60)) == 3 << 20
            assert len(ex.submit(mh.big, 10).result(60)) == 10
    t = shoal.monitor.load(path).tasks
    assert t["bytes_out"][0] >= 3 << 20
    assert 10 < t["bytes_out"][1] < 100
