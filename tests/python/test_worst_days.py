"""A user's worst days, with real processes: /dev/shm full, Ctrl-C in the
middle of a map, workers killed again and again, tasks that fork, close
their standard fds, chdir, sys.exit, install signal handlers, run out of
memory, and pools dropped in the middle of thousands of tasks.

Every scenario that could hang runs in a subprocess driver with a timeout,
and checks that no worker process and no /dev/shm/shoal.* segment outlives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import shoal
import conformance_helpers as h
from pool_helpers import shm_segments_of as _segments_of, wait_gone

pytestmark = pytest.mark.timeout(180)
HERE = os.path.dirname(os.path.abspath(__file__))


def _alive(pids, timeout=15.0):
    """Pids still running (zombies count as gone) after waiting up to timeout."""
    return wait_gone(pids, timeout)


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("import sys\nsys.path.insert(0, %r)\n" % HERE + textwrap.dedent(body))
    return str(path)


def _run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ /dev/shm full
# The driver runs in its own mount namespace with a 16 MiB tmpfs on /dev/shm
# (a real full /dev/shm: posix_fallocate/ftruncate fail with ENOSPC), so
# whatever it leaves there is visible to it alone ("LEFT").
SHM_FULL = """
    import os
    import numpy as np
    import shoal
    import conformance_helpers as h

    def report(tag, fn):
        try:
            r = fn()
            print(tag, "OK", type(r).__name__, flush=True)
        except BaseException as e:
            print(tag, "ERR", type(e).__name__, str(e)[:200].replace("\\n", " "), flush=True)

    st = os.statvfs("/dev/shm")
    print("SHM", st.f_blocks * st.f_frsize, flush=True)
    mode = {mode!r}
    pool = shoal.Pool(2)
    big = bytes(np.ones(64 << 20, dtype=np.uint8))         # 64 MiB > the 16 MiB /dev/shm
    if mode in ("arg", "arg_close"):
        report("TRY", lambda: pool.apply(h.length_and_sum, (big,)))
        report("TRY2", lambda: pool.apply(h.length_and_sum, (big,)))
    elif mode == "result":
        report("TRY", lambda: pool.apply(h.big_bytes, (64 << 20,)))
    elif mode == "shared":
        report("TRY", lambda: shoal.shared.zeros((64 << 20,), dtype=np.uint8))
        small = shoal.shared.zeros((1000,))
        print("SMALL", pool.apply(h.length_and_sum, (small,))[0], flush=True)
        del small
    print("AFTER", pool.map(h.square, range(10)), flush=True)
    if mode == "arg":
        pool.terminate()
    else:
        pool.close()
    pool.join()
    print("CLOSED", flush=True)
    print("LEFT", sorted(os.listdir("/dev/shm")), flush=True)
"""


def _shm_full_driver(tmp_path, mode):
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/unshare"):
        pytest.skip("needs root and unshare to give the driver a 16 MiB /dev/shm")
    drv = _script(tmp_path, f"shm_full_{mode}.py", SHM_FULL.format(mode=mode))
    cmd = ["unshare", "-m", "sh", "-c",
           f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} {drv}"]
    try:
        r = _run(cmd, timeout=60)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"the driver hung; its output so far:\n{out}")
    lines = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    assert lines.get("SHM", "").strip() == str(16 << 20), r.stdout + r.stderr
    return r, lines


def _clear_error(line):
    # An ordinary exception the user can act on; not a lost worker (SIGBUS, exit).
    return line.startswith("ERR") and line.split()[1] in (
        "OSError", "MemoryError", "SerializationError", "BrokenPool", "ShoalError")


def test_dev_shm_full_big_argument_is_a_clear_error_and_the_pool_goes_on(tmp_path):
    r, lines = _shm_full_driver(tmp_path, "arg")
    assert _clear_error(lines["TRY"]) and _clear_error(lines["TRY2"]), r.stdout
    assert lines["AFTER"].strip() == str([i * i for i in range(10)]), r.stdout + r.stderr
    assert "CLOSED" in r.stdout and lines["LEFT"].strip() == "[]", r.stdout


def test_dev_shm_full_big_argument_then_close_and_join_does_not_hang(tmp_path):
    r, lines = _shm_full_driver(tmp_path, "arg_close")
    assert _clear_error(lines["TRY"]), r.stdout
    assert "CLOSED" in r.stdout and lines["LEFT"].strip() == "[]", r.stdout


def test_dev_shm_full_big_result_is_a_clear_error_not_a_lost_worker(tmp_path):
    r, lines = _shm_full_driver(tmp_path, "result")
    assert _clear_error(lines["TRY"]), r.stdout
    assert lines["AFTER"].strip() == str([i * i for i in range(10)]), r.stdout + r.stderr
    assert "CLOSED" in r.stdout and lines["LEFT"].strip() == "[]", r.stdout


def test_dev_shm_full_shared_array_is_a_clear_error(tmp_path):
    r, lines = _shm_full_driver(tmp_path, "shared")
    assert _clear_error(lines["TRY"]), r.stdout
    assert lines["SMALL"].strip() == "1000", r.stdout + r.stderr
    assert lines["AFTER"].strip() == str([i * i for i in range(10)]), r.stdout + r.stderr
    assert "CLOSED" in r.stdout and lines["LEFT"].strip() == "[]", r.stdout


# ------------------------------------------------------------------ Ctrl-C
_WITH_POOL = """
        import os, shoal
        import conformance_helpers as h
        with shoal.Pool(2) as pool:
            print("PIDS", os.getpid(), *pool.backend.pids, *pool.backend.helper_pids, flush=True)
            pool.map(h.sleep_return, [60] * 8, chunksize=1)
            print("MAP RETURNED", flush=True)
    """
SIGINT_DRIVERS = {
    "pool": """
        import os, shoal
        import conformance_helpers as h
        pool = shoal.Pool(2)
        print("PIDS", os.getpid(), *pool.backend.pids, *pool.backend.helper_pids, flush=True)
        pool.map(h.sleep_return, [60] * 8, chunksize=1)
        print("MAP RETURNED", flush=True)
    """,
    "with": _WITH_POOL,
    # A numpy driver: OpenBLAS's threads are up, and the workers are forked
    # all the same (OpenBLAS stops them around fork).
    "numpy": """
        import numpy as np
        a = np.ones((256, 256))
        a @ a
    """ + _WITH_POOL,
    "executor": """
        import os, shoal
        import conformance_helpers as h
        with shoal.Executor(2) as ex:
            print("PIDS", os.getpid(), *ex.backend.pids, *ex.backend.helper_pids, flush=True)
            list(ex.map(h.sleep_return, [60] * 8, chunksize=1))
            print("MAP RETURNED", flush=True)
    """,
}


@pytest.mark.parametrize("style", sorted(SIGINT_DRIVERS))
def test_sigint_during_map_interrupts_and_leaves_nothing(tmp_path, style):
    drv = _script(tmp_path, "sigint.py", SIGINT_DRIVERS[style])
    proc = subprocess.Popen([sys.executable, drv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PIDS"), line + proc.stderr.read()
        pids = [int(x) for x in line.split()[1:]]
        driver, workers = pids[0], pids[1:]
        time.sleep(1.0)  # let the map get going (the outcome must not depend on it)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (out, err)
    assert "MAP RETURNED" not in out
    assert _alive(workers) == [], "workers outlived the interrupted driver"
    deadline = time.monotonic() + 10
    while _segments_of(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _segments_of(pids) == []


def test_sigint_in_map_keeps_the_pool_usable_when_caught(tmp_path):
    drv = _script(tmp_path, "sigint_caught.py", """
        import os, signal, threading, shoal
        import conformance_helpers as h
        with shoal.Pool(2) as pool:
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                pool.map(h.sleep_return, [30] * 4, chunksize=1)
            except KeyboardInterrupt:
                print("CAUGHT", flush=True)
            print("AFTER", pool.map(h.square, range(5)), flush=True)
            pool.terminate()
        print("END", flush=True)
    """)
    r = _run([sys.executable, drv], timeout=120)
    assert "CAUGHT" in r.stdout and "AFTER [0, 1, 4, 9, 16]" in r.stdout, r.stdout + r.stderr
    assert "END" in r.stdout and r.returncode == 0


# ------------------------------------------------------------------ killed workers
def test_workers_killed_repeatedly_during_a_long_map_with_retries(tmp_path):
    markers = tmp_path / "m"
    markers.mkdir()
    items = list(range(120))
    with shoal.Pool(2, retries=2) as pool:
        out = pool.starmap(h.maybe_kill_self, [(x, str(markers)) for x in items], chunksize=1)
        assert out == [2 * x for x in items]
        assert len(os.listdir(markers)) == len([x for x in items if x % 7 == 0])
        # and external kills of every worker, twice, in the middle of another map
        import threading

        def killer():
            for _ in range(2):
                time.sleep(0.3)
                for pid in pool.backend.pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer)
        t.start()
        out2 = pool.map(h.sleep_return, [0.02] * 150, chunksize=1)
        t.join()
        assert out2 == [None] * 150
        assert pool.map(h.square, range(6)) == [0, 1, 4, 9, 16, 25]


def test_retries_exhausted_gives_worker_lost(tmp_path):
    with shoal.Pool(1, retries=2) as pool:
        with pytest.raises(shoal.WorkerLost):
            pool.apply(os.abort)
        assert pool.apply(h.square, (3,)) == 9


# ------------------------------------------------------------------ hostile tasks
def test_task_that_forks_a_child_then_dies(tmp_path):
    path = str(tmp_path / "child")
    child = None
    try:
        with shoal.Pool(2) as pool:
            with pytest.raises(shoal.WorkerLost) as info:
                pool.apply(h.fork_child_then_die, (path,))
            assert info.value.exitcode == 9
            child = int(open(path).read())
            assert pool.map(h.square, range(8), chunksize=1) == [i * i for i in range(8)]
            workers = pool.backend.pids
        assert _alive(workers) == []
    finally:
        if child:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_task_that_closes_fds_0_1_2(tmp_path):
    with shoal.Pool(1) as pool:
        assert pool.apply(h.close_std_fds) == "closed"
        assert pool.map(h.square, range(30), chunksize=1) == [i * i for i in range(30)]
        # printing in that worker now fails with a normal exception, not a dead pool
        try:
            pool.apply(h.print_something, (1,))
        except OSError:
            pass
        assert pool.apply(h.square, (7,)) == 49
        assert pool.apply(h.length_and_sum, (b"\x01" * (8 << 20),)) == (8 << 20, 128)


def test_task_that_changes_cwd(tmp_path):
    here = os.getcwd()
    with shoal.Pool(1) as pool:
        assert pool.apply(h.chdir_to, (str(tmp_path),)) == str(tmp_path)
        assert pool.map(h.square, range(10)) == [i * i for i in range(10)]
        big = b"\x02" * (4 << 20)
        assert pool.apply(h.length_and_sum, (big,))[0] == len(big)
    assert os.getcwd() == here


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_task_that_calls_sys_exit(backend):
    with shoal.Pool(2, backend=backend) as pool:
        with pytest.raises(SystemExit) as info:
            pool.apply(h.raise_base, ("exit",))
        assert info.value.code == 3
        with pytest.raises(SystemExit):
            pool.map(h.raise_base, ["exit"] * 3, chunksize=1)
        assert pool.map(h.square, range(10)) == [i * i for i in range(10)]


def test_task_that_ignores_sigterm_and_sigint_does_not_block_shutdown():
    pool = shoal.Pool(2)
    pids = [pool.apply(h.set_sigterm_ignored) for _ in range(4)]
    workers = pool.backend.pids
    assert set(pids) <= set(workers)
    pool.close()
    pool.join()
    assert _alive(workers) == []
    pool2 = shoal.Pool(2)
    [pool2.apply(h.set_sigterm_ignored) for _ in range(4)]
    workers2 = pool2.backend.pids
    pool2.terminate()
    pool2.join()
    assert _alive(workers2) == []


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_task_leaving_a_non_daemon_thread_does_not_block_join(how):
    # Python waits for non-daemon threads at exit: the worker would never end by
    # itself; join() must still return and the worker must be gone.
    pool = shoal.Pool(1)
    pid = pool.apply(h.start_lingering_thread, (600,))
    getattr(pool, how)()
    pool.join()
    assert _alive([pid]) == []


def test_task_with_its_own_signal_handler_gets_its_signal():
    with shoal.Pool(1) as pool:
        assert pool.apply(h.set_sigalrm_and_wait, (0.05,)) == [signal.SIGALRM]
        assert pool.apply(h.square, (5,)) == 25


def _limit_as_above_current(extra_mib):
    import resource

    with open("/proc/self/statm") as f:
        vm_pages = int(f.read().split()[0])
    limit = vm_pages * os.sysconf("SC_PAGE_SIZE") + (extra_mib << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


def test_memory_blowup_under_rlimit_as_is_a_memory_error():
    with shoal.Pool(1, initializer=_limit_as_above_current, initargs=(512,)) as pool:
        with pytest.raises(MemoryError):
            pool.apply(h.allocate, (4096,))
        assert pool.apply(h.allocate, (16,)) == 16 << 20
        assert pool.map(h.square, range(5)) == [0, 1, 4, 9, 16]


# ------------------------------------------------------------------ dropped pools
DROP_DRIVER = """
    import gc, os, time, shoal
    import concurrent.futures as cf
    import conformance_helpers as h
    mode = {mode!r}
    if mode == "imap":
        pool = shoal.Pool(2)
        pids = pool.backend.pids + pool.backend.helper_pids
        it = pool.imap(h.square, range(200_000), chunksize=1)
        got = [next(it) for _ in range(2000)]
        assert got == [i * i for i in range(2000)]
        del pool, it
    elif mode == "submit":
        ex = shoal.Executor(2)
        pids = ex.backend.pids + ex.backend.helper_pids
        futs = [ex.submit(h.square, i) for i in range(5000)]
        futs[100].result(timeout=60)
        del ex
    gc.collect()
    if mode == "submit":
        done, not_done = cf.wait(futs, timeout=60)
        print("NOTDONE", len(not_done), flush=True)
        ok = sum(1 for f in done if not f.cancelled() and f.exception() is None)
        print("OKCOUNT", ok, flush=True)
    print("PIDS", *pids, flush=True)
    print("COLLECTED", flush=True)
"""


@pytest.mark.parametrize("mode", ["imap", "submit"])
def test_thousands_of_tasks_and_the_pool_dropped_midway_does_not_hang(tmp_path, mode):
    drv = _script(tmp_path, f"drop_{mode}.py", DROP_DRIVER.format(mode=mode))
    r = _run([sys.executable, drv], timeout=150)
    assert r.returncode == 0 and "COLLECTED" in r.stdout, r.stdout + r.stderr
    if mode == "submit":
        assert "NOTDONE 0" in r.stdout, r.stdout
    pids = [int(x) for ln in r.stdout.splitlines() if ln.startswith("PIDS")
            for x in ln.split()[1:]]
    assert _alive(pids) == []
    assert _segments_of(pids) == []


FORKED_CHILD_DRIVER = """
    import os, sys, multiprocessing as mp
    import numpy as np
    import shoal
    import conformance_helpers as h

    def in_child_use_parent_pool(ex):
        try:
            ex.submit(abs, -1)
        except shoal.BrokenPool as e:
            print("CHILD REFUSED", type(e).__name__, flush=True)

    if __name__ == "__main__":
        ex = shoal.Executor(2)
        pool = shoal.Pool(2)
        big = np.arange(1 << 18, dtype=np.float64)   # a segment in flight
        assert ex.submit(h.identity, big).result().sum() == big.sum()
        print("BEFORE", ex.submit(abs, -2).result(), pool.apply(abs, (-3,)), flush=True)
        # a multiprocessing fork child, which runs threading's exit hooks
        p = mp.get_context("fork").Process(target=in_child_use_parent_pool, args=(ex,))
        p.start(); p.join(60)
        print("MP CHILD EXIT", p.exitcode, flush=True)
        # a plain fork whose child leaves through sys.exit: every finalizer runs
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("FORK CHILD EXIT", os.waitstatus_to_exitcode(status), flush=True)
        print("AFTER", ex.submit(abs, -4).result(timeout=30),
              pool.apply_async(abs, (-5,)).get(timeout=30),
              ex.submit(h.identity, big).result(timeout=30).sum() == big.sum(), flush=True)
        ex.shutdown(); pool.close(); pool.join()
"""


def test_children_forked_from_the_driver_leave_its_pools_alone(tmp_path):
    """A child forked from the driver (a multiprocessing fork Process, a plain
    os.fork() that exits normally) inherits the pool objects. Its exit hooks
    and finalizers used to stop the parent's workers, or hang joining threads
    that do not exist in the child. Now the child disowns them: using one
    there raises BrokenPool, its exit touches nothing, and the parent's pools
    and shared-memory segments go on working."""
    drv = _script(tmp_path, "forked_child.py", FORKED_CHILD_DRIVER)
    out = _run([sys.executable, drv], timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "BEFORE 2 3" in lines, out.stdout
    assert "CHILD REFUSED BrokenPool" in lines, out.stdout + out.stderr
    assert "MP CHILD EXIT 0" in lines and "FORK CHILD EXIT 0" in lines, out.stdout
    assert "AFTER 4 5 True" in lines, out.stdout + out.stderr
    assert "leaked" not in out.stderr, out.stderr
