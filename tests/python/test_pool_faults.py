"""Fault handling of the process backend, with real processes: workers that
die (SIGKILL, os._exit, segfault), retries, bad pickles, time limits,
cancellation, and drivers that end in every way (Ctrl-C, terminate, gc,
interpreter exit, SIGKILL) without leaving a worker or a segment behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import pytest

import shoal
from pool_helpers import (
    add,
    cmdline_of,
    announce_and_sleep,
    crash_once,
    exit_hard,
    get_state,
    getenv,
    initializer_fails,
    pid_after,
    pid_and_parent,
    pid_of_worker,
    raise_value_error,
    return_unpicklable,
    segfault,
    set_state,
    shm_segments_of,
    sleep_return,
    square,
    wait_for_pid,
    wait_gone,
)

pytestmark = pytest.mark.timeout(120)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def pool():
    p = shoal.Pool(2)
    yield p
    p.terminate()


def _pids(pool):
    return pool.backend.pids


def test_sigkill_mid_task_fails_that_task_fast_and_others_complete(pool, tmp_path):
    path = str(tmp_path / "pid")
    victim = pool.apply_async(announce_and_sleep, (path, 30))
    others = [pool.apply_async(square, (i,)) for i in range(50)]
    pid = wait_for_pid(path)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(shoal.WorkerLost) as info:
        victim.get(timeout=10)
    assert time.monotonic() - t0 < 1.0
    assert "SIGKILL" in str(info.value) and str(pid) in str(info.value)
    assert info.value.signal == signal.SIGKILL
    assert [r.get(timeout=30) for r in others] == [i * i for i in range(50)]
    # the pool replaced the worker and still runs tasks on 2 workers
    assert pid not in _pids(pool) and len(_pids(pool)) == 2
    assert pool.map(square, range(100)) == [i * i for i in range(100)]


def test_os_exit_reports_exit_code(pool):
    with pytest.raises(shoal.WorkerLost) as info:
        pool.apply(exit_hard, (3,))
    assert info.value.exitcode == 3 and "exited with code 3" in str(info.value)
    assert pool.apply(add, (1, 2)) == 3


def test_segfault_in_c_code(pool):
    with pytest.raises(shoal.WorkerLost) as info:
        pool.apply(segfault)
    assert info.value.signal == signal.SIGSEGV and "SIGSEGV" in str(info.value)
    assert pool.map(square, [1, 2, 3]) == [1, 4, 9]


def test_worker_death_inside_map_fails_only_that_item():
    with shoal.Pool(2) as pool:
        it = pool.imap(square, range(1000), chunksize=1)
        assert [next(it) for _ in range(10)] == [i * i for i in range(10)]
        assert list(it) == [i * i for i in range(10, 1000)]
        with pytest.raises(shoal.WorkerLost):
            pool.map(exit_hard, [5], chunksize=1)


def test_retries_rerun_a_task_whose_worker_died(tmp_path):
    marker = str(tmp_path / "crashed")
    with shoal.Pool(2, retries=1) as pool:
        assert pool.apply(crash_once, (marker,)) == "second try"
    with shoal.Pool(2, retries=2) as pool:
        with pytest.raises(shoal.WorkerLost):
            pool.apply(exit_hard, (9,))  # dies every time: 1 + 2 attempts, then fails


def test_unpicklable_argument_names_the_object_and_pool_keeps_working(pool):
    lock = threading.Lock()
    with pytest.raises(shoal.SerializationError) as info:
        pool.apply(square, (lock,))
    assert "lock" in str(info.value).lower()
    with pytest.raises(shoal.SerializationError):
        pool.map(square, [1, lock, 3], chunksize=1)
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_result_is_a_clear_error_and_pool_keeps_working(pool):
    with pytest.raises(shoal.SerializationError) as info:
        pool.apply(return_unpicklable)
    assert "Unpicklable" in str(info.value) or "refuses" in str(info.value)
    assert pool.apply(add, (2, 3)) == 5


def test_task_timeout_kills_and_replaces_worker(pool):
    before = set(_pids(pool))
    t0 = time.monotonic()
    r = pool.apply_async(sleep_return, (30,), timeout=0.5)
    with pytest.raises(shoal.TaskTimeout):
        r.get(timeout=20)
    assert time.monotonic() - t0 < 10
    assert isinstance(shoal.TaskTimeout("x"), TimeoutError)
    assert pool.apply(add, (1, 1)) == 2
    after = set(_pids(pool))
    assert len(after) == 2 and len(before - after) == 1  # exactly one was replaced
    # a task that finishes in time is unaffected
    assert pool.apply(sleep_return, (0.01, "ok"), timeout=20) == "ok"


def test_executor_timeout_leaves_kwargs_to_the_function():
    with shoal.Executor(2) as ex:
        fut = ex.submit_with(sleep_return, (30,), timeout=0.3)
        with pytest.raises(shoal.TaskTimeout):
            fut.result(timeout=20)
        assert ex.submit(sleep_return, 0, value=5).result() == 5


def test_cancel_running_task(tmp_path):
    path = str(tmp_path / "pid")
    with shoal.Executor(2) as ex:
        fut = ex.submit(announce_and_sleep, path, 30)
        pid = wait_for_pid(path)
        assert fut.running()
        assert ex.cancel_running(fut)
        with pytest.raises(CancelledError):
            fut.result(timeout=10)
        assert wait_gone([pid]) == []
        assert ex.submit(add, 1, 2).result() == 3


def test_remote_exception_type_and_traceback(pool):
    with pytest.raises(ValueError, match="boom") as info:
        pool.apply(raise_value_error, ("boom",))
    assert isinstance(info.value.__cause__, shoal.RemoteTraceback)
    assert "raise_value_error" in str(info.value.__cause__)


def test_initializer_and_max_tasks_per_worker():
    with shoal.Pool(1, initializer=set_state, initargs=("k", 42)) as pool:
        assert pool.apply(get_state, ("k",)) == 42
    with shoal.Pool(1, max_tasks_per_worker=2) as pool:
        pids = [pool.apply(pid_of_worker) for _ in range(6)]
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
        assert len(set(pids)) == 3
        assert pool.map(square, range(20), chunksize=1) == [i * i for i in range(20)]
    with pytest.raises(shoal.BrokenPool, match="initializer"):
        with shoal.Pool(1, initializer=initializer_fails) as pool:
            pool.apply(add, (1, 2))


def test_workers_ignore_sigint_and_cap_native_threads(pool):
    # cpus // workers of the allocation (what default_workers() counts); a
    # count set in this environment is kept (test_thread_caps.py)
    cap = str(max(1, shoal.allocation().cpus // 2))
    assert pool.apply(getenv, ("OMP_NUM_THREADS",)) == os.environ.get("OMP_NUM_THREADS", cap)
    assert pool.apply(getenv, ("SHOAL_NUM_THREADS",)) == os.environ.get("SHOAL_NUM_THREADS", cap)
    for pid in _pids(pool):
        os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert pool.map(square, range(4), chunksize=1) == [0, 1, 4, 9]


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError):
        shoal.Pool(0)
    with pytest.raises(ValueError):
        shoal.Pool(2, retries=-1)
    with pytest.raises(ValueError, match="unknown backend"):
        shoal.Pool(2, backend="nope")
    with shoal.Pool(1) as pool:
        with pytest.raises(TypeError):
            pool.apply(42)
        with pytest.raises(ValueError):
            pool.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="not running"):
        pool.apply(add, (1, 2))


# ---------------------------------------------------------------- drivers

DRIVER = textwrap.dedent("""
    import os, sys, time, gc
    sys.path.insert(0, {here!r})
    import shoal
    from pool_helpers import exit_hard, sleep_return
    mode = {mode!r}
    if {numpy!r}:  # a numpy driver: OpenBLAS threads up, workers forked all the same
        import numpy as np
        a = np.ones((256, 256))
        a @ a
    # (workers recycled after 1000 tasks: the pool has a fork server)
    pool = shoal.Pool(2, max_tasks_per_worker=1000)
    pool.map(abs, range(10))
    try:  # one worker dies: its replacement comes from the fork server
        pool.apply(exit_hard, (3,))
    except shoal.WorkerLost:
        pass
    big = b"x" * (4 << 20)   # travels through a shared-memory segment
    results = [pool.apply_async(sleep_return, (60, big)) for _ in range(2)]
    time.sleep(0.5)
    print("PIDS", os.getpid(), *pool.backend.pids, *pool.backend.helper_pids, flush=True)
    if mode == "sigint":
        results[0].get()          # Ctrl-C arrives while we wait
    elif mode == "terminate":
        pool.terminate()
        print("TERMINATED", flush=True)
        time.sleep(60)            # the test checks while we still live
    elif mode == "gc":
        del pool, results
        gc.collect()
        print("COLLECTED", flush=True)
        time.sleep(60)
    elif mode == "exit":
        sys.exit(0)               # no close(), no terminate()
    elif mode == "sigkill":
        time.sleep(60)
""")


def _start_driver(mode, tmp_path, numpy=False):
    script = tmp_path / f"driver_{mode}.py"
    script.write_text(DRIVER.format(here=HERE, mode=mode, numpy=numpy))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line + proc.stderr.read()
    pids = [int(x) for x in line.split()[1:]]
    # the workers, and the fork server where the driver could fork one
    driver, workers = pids[0], pids[1:]
    assert len(workers) in (2, 3)
    assert shm_segments_of([driver]), "the test needs a segment in flight"
    return proc, driver, workers


def _assert_clean(driver, workers):
    assert wait_gone(workers) == [], "worker processes survived their pool"
    deadline = time.monotonic() + 10
    while shm_segments_of([driver] + workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shm_segments_of([driver] + workers) == []


@pytest.mark.parametrize("mode,numpy", [("sigint", False), ("exit", False), ("sigkill", False),
                                        ("sigint", True), ("sigkill", True)])
def test_driver_end_leaves_no_worker_and_no_segment(mode, numpy, tmp_path):
    proc, driver, workers = _start_driver(mode, tmp_path, numpy)
    if mode == "sigint":
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode != 0 and "KeyboardInterrupt" in err
    elif mode == "exit":
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    else:
        proc.kill()
        proc.communicate(timeout=30)
    _assert_clean(driver, workers)


@pytest.mark.parametrize("mode", ["terminate", "gc"])
def test_terminate_and_gc_release_everything_while_driver_lives(mode, tmp_path):
    proc, driver, workers = _start_driver(mode, tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.strip() in ("TERMINATED", "COLLECTED"), line + proc.stderr.read()
        assert proc.poll() is None
        _assert_clean(driver, workers)
    finally:
        proc.kill()
        proc.communicate()


def test_full_rings_spill_to_a_backlog_that_keeps_order_and_can_be_cancelled():
    from shoal import _backend

    b = _backend.create("processes", 1, ring_bytes=4096)  # a few frames fill it
    try:
        blocker = b.submit(sleep_return, (0.5, "first"))
        futs = [b.submit(sleep_return, (0, i)) for i in range(300)]
        assert not all(f.running() for f in futs)  # some are queued in the driver
        victim = futs[-1]
        assert victim.cancel() and victim.cancelled()
        assert blocker.result(timeout=30) == "first"
        assert [f.result(timeout=30) for f in futs[:-1]] == list(range(299))
        # results larger than the ring travel through a segment
        big = b.submit(sleep_return, (0, b"y" * 100_000)).result(timeout=30)
        assert big == b"y" * 100_000
        assert list(b.map(square, range(2000), chunksize=1)) == [i * i for i in range(2000)]
    finally:
        b.terminate()


def test_many_distinct_functions_and_bound_methods(pool):
    fns = [lambda x, k=k: x + k for k in range(300)]  # more than the function cache holds
    assert [pool.apply(f, (1,)) for f in fns] == [1 + k for k in range(300)]

    class Acc:
        def __init__(self):
            self.base = 5

        def plus(self, x):
            return self.base + x

    acc = Acc()
    assert [pool.apply(acc.plus, (i,)) for i in range(50)] == [5 + i for i in range(50)]
    assert len(pool.backend._engine.fns) <= 256


@pytest.mark.parametrize("start", ["spawn", "auto"])
def test_both_start_methods_run_tasks_and_survive_deaths(start, monkeypatch):
    from shoal._backend_processes import _can_fork

    monkeypatch.setenv("SHOAL_START", start)
    forked = start == "auto" and _can_fork()
    with shoal.Pool(2) as pool:
        for pid in _pids(pool):
            assert (b"shoal._worker" in cmdline_of(pid)) != forked
        assert pool.map(square, range(100), chunksize=1) == [i * i for i in range(100)]
        with pytest.raises(shoal.WorkerLost):
            pool.apply(exit_hard, (4,))
        assert pool.map(square, range(10)) == [i * i for i in range(10)]  # replacement spawned


def _items_then_error(n):
    yield from range(n)
    raise ValueError("the input iterable broke")


def test_abandoned_maps_leave_no_phantom_load():
    """Maps given up half-way (an input iterable that raises, an imap dropped
    after one result, an Executor.map whose input breaks) must not leave their
    in-flight tasks counted against the workers once those tasks finish.
    Regression: each slot kept the count of such tasks, and after a few dozen
    abandoned maps a long-lived pool looked full and never ran another task."""
    with shoal.Pool(2) as p:
        for _ in range(30):
            with pytest.raises(ValueError, match="input iterable broke"):
                p.map(square, _items_then_error(5))
            it = p.imap(square, range(200))
            assert next(it) == 0
            del it
        engine = p.backend._engine
        # Everything abandoned has finished on the workers by now or soon.
        assert engine.wait_until(lambda: all(not s.tasks for s in engine.slots), 30.0), \
            [len(s.tasks) for s in engine.slots]
        assert p.apply_async(add, (2, 3)).get(timeout=30) == 5
        assert p.map(square, range(50)) == [x * x for x in range(50)]
    with shoal.Executor(2) as ex:
        for _ in range(30):
            with pytest.raises(ValueError, match="input iterable broke"):
                list(ex.map(square, _items_then_error(20)))
        assert ex.submit(add, 1, 1).result(timeout=30) == 2


def test_a_numpy_driver_forks_its_workers_and_blas_works_in_them(tmp_path):
    """OpenBLAS's pthreads stop themselves around fork (its own pthread_atfork
    handler), so a driver whose only other threads are those still forks its
    workers; the workers' BLAS restarts its threads and gives right answers.
    Any other thread (a Python one here) means spawn."""
    script = tmp_path / "numpy_driver.py"
    script.write_text(textwrap.dedent("""
        import os, threading
        import numpy as np
        from threadpoolctl import threadpool_info
        import shoal
        from shoal._backend_processes import _can_fork

        def matmul_sum(seed):
            r = np.random.default_rng(seed)
            a = r.random((300, 300))
            return float((a @ a).sum())

        def threads_after_blas(_):
            b = np.ones((200, 200))
            b @ b
            return len(os.listdir("/proc/self/task"))

        a = np.random.default_rng(0).random((300, 300))
        a @ a  # OpenBLAS's threads are up now
        blas = [i for i in threadpool_info() if i["internal_api"] == "openblas"]
        threaded = any(i["threading_layer"] == "pthreads" and i["num_threads"] > 1 for i in blas)
        extra = len(os.listdir("/proc/self/task")) - 1
        print("extra-threads", extra, "openblas-pthreads", threaded)
        assert _can_fork() == (extra == 0 or threaded), (extra, blas)
        forked = _can_fork()
        with shoal.Pool(2) as pool:
            for pid in pool.backend.pids:
                cmd = b""
                while not cmd:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read()
                assert (b"shoal._worker" in cmd) != forked, (cmd, forked)
            got = pool.map(matmul_sum, range(6))
            # (the workers' BLAS runs capped to one thread: another summation order)
            assert np.allclose(got, [matmul_sum(s) for s in range(6)], rtol=1e-12)
            from shoal import _openblas
            libs = _openblas._libs()
            if forked and libs and all(lib.shutdown is not None for lib in libs[0]):
                # capped to one thread each: no BLAS server thread left
                # spinning in a worker (it used to burn ~0.1 s of CPU each)
                assert pool.map(threads_after_blas, range(4), chunksize=1) == [1] * 4
        float((a @ a).sum())  # and the driver's BLAS still works
        if threaded:
            # threadpool_limits(1) lowers the count a call uses and leaves the
            # server's threads running: still OpenBLAS's, still forkable
            from threadpoolctl import threadpool_limits
            with threadpool_limits(1):
                assert _can_fork()
        ev = threading.Event()
        t = threading.Thread(target=ev.wait)
        t.start()
        assert not _can_fork()
        ev.set()
        t.join()
        print("forked" if forked else "spawned")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env={k: v for k, v in os.environ.items()
                                           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                        "SHOAL_START")})
    assert out.returncode == 0, out.stdout + out.stderr
    if os.cpu_count() and len(os.sched_getaffinity(0)) > 1:
        assert "openblas-pthreads True" in out.stdout and out.stdout.strip().endswith("forked"), \
            out.stdout


def test_map_items_go_to_the_worker_that_frees_up_first():
    """A map does not deal its items out in fixed shares: a worker held up by
    one long item keeps at most the few frames queued behind it, and the
    other worker takes the rest (multiprocessing's shared queue does the
    same; fixed shares made a slowed-down worker the whole map's tail)."""
    import functools

    fn = functools.partial(pid_after, {0: 2.0, "default": 0.02})
    with shoal.Pool(2) as p:
        p.map(square, range(4))  # both workers up
        out = p.map(fn, range(12), chunksize=1)
    assert [x for x, _ in out] == list(range(12))
    slow = out[0][1]
    on_slow = [x for x, pid in out if pid == slow]
    # item 0 plus what was queued behind it before its pace was known
    # (MAP_FRAMES_HOT at most)
    assert len(on_slow) <= 4, on_slow


def test_long_tasks_after_short_ones_spread_over_the_workers():
    """After a stream of short tasks, submit() may queue a task behind an
    awake worker instead of waking an idle one (AWAKE_TASK_NS), but never
    behind a task that has run past twice the worker's average: two long
    tasks submitted together run side by side, on two workers."""
    import functools

    slow = functools.partial(pid_after, {"default": 0.5})
    with shoal.Executor(2) as ex:
        for _ in range(3):
            [f.result() for f in [ex.submit(square, i) for i in range(2000)]]
        futs = [ex.submit(slow, i) for i in range(2)]
        pids = {f.result()[1] for f in futs}
    assert len(pids) == 2, pids


def test_short_tasks_keep_one_worker_busy_and_every_task_runs():
    """A stream of short tasks prefers the first awake worker (the others
    may sleep), and still every task runs exactly once, in any order of
    completion, with both workers alive to take over."""
    with shoal.Executor(2) as ex:
        futs = [ex.submit(square, i) for i in range(20000)]
        assert [f.result() for f in futs] == [i * i for i in range(20000)]
        pids = ex.backend.pids
        futs = [ex.submit(os.getpid) for _ in range(200)]
        assert {f.result() for f in futs} <= set(pids)


def test_long_tasks_stay_cancellable_after_short_ones():
    """How many tasks wait on a worker's ring (RUNNING, no longer
    cancellable) follows the worker's task time: for tasks of 10 ms one
    behind the running one, as in concurrent.futures, even right after a
    stream of short tasks (seen: all 200 queued on the rings, none
    cancellable, when short tasks had made the workers "hot")."""
    import functools

    slow = functools.partial(pid_after, {"default": 0.01})
    with shoal.Executor(2) as ex:
        [f.result() for f in [ex.submit(square, i) for i in range(2000)]]
        futs = [ex.submit(slow, i) for i in range(200)]
        time.sleep(0.1)
        cancelled = sum(f.cancel() for f in futs)
        # at most ~20 done in 0.1 s, and per worker the running task plus
        # its queue (8 at most while its average still says "short")
        assert cancelled >= 150, cancelled
        left = [f for f in futs if not f.cancelled()]
        assert all(f.result()[0] == futs.index(f) for f in left)


def test_a_worker_killed_during_a_stream_of_short_submits_loses_one_task_at_most():
    """Short tasks queue on the awake worker's ring (pick_slot, call depth
    up to 64): when that worker is SIGKILLed mid-stream, its queued tasks go
    to the others, only the running one fails (WorkerLost), nothing hangs,
    and a replacement takes over."""
    from concurrent.futures import wait

    with shoal.Executor(2) as ex:
        [f.result() for f in [ex.submit(square, i) for i in range(2000)]]
        before = list(ex.backend.pids)
        killer = threading.Timer(0.02, os.kill, (before[0], signal.SIGKILL))
        killer.start()
        futs = [ex.submit(square, i) for i in range(50_000)]
        done, not_done = wait(futs, timeout=120)
        killer.join()
        assert not not_done
        lost = [f.exception() for f in futs if f.exception() is not None]
        assert len(lost) <= 1 and all(isinstance(e, shoal.WorkerLost) for e in lost), lost
        assert all(f.result() == i * i for i, f in enumerate(futs) if f.exception() is None)
        deadline = time.monotonic() + 30  # the death is seen by the next pass at the latest
        while before[0] in ex.backend.pids and time.monotonic() < deadline:
            assert ex.submit(square, 7).result() == 49
            time.sleep(0.01)
        assert before[0] not in ex.backend.pids
        assert sorted(f.result() for f in [ex.submit(square, i) for i in range(100)]) == \
            sorted(i * i for i in range(100))


def test_forks_after_threads_backend_pools_and_native_loops(tmp_path):
    """A threads-backend pool is memory only in a forked child: its threads
    stayed in the parent. Regression: a forked worker's garbage collector
    freed such a pool (garbage in a reference cycle the parent had not
    collected yet) and its C++ destructor joined the parent's threads:
    SIGSEGV in pthread_join on the worker's first task. The child now drops
    the pool without joining, and a submit() there raises BrokenPool.
    While a threads-backend pool has live threads, process pools spawn (those
    threads run Python); once it is joined, and with only the idle threads of
    the native loops' pool around, they fork again."""
    script = tmp_path / "threads_then_fork.py"
    script.write_text(textwrap.dedent("""
        import gc, os
        import numpy as np
        from numba import cfunc, types, carray
        import shoal
        from shoal._backend_processes import _can_fork

        def square(x):
            return x * x

        def leave_garbage():
            ex = shoal.Executor(2, backend="threads")
            assert ex.submit(pow, 2, 5).result(timeout=30) == 32
            cycle = [ex]
            cycle.append(cycle)  # unreachable, and not collected: gc is off

        gc.disable()
        leave_garbage()
        live = shoal.Executor(2, backend="threads")
        assert live.submit(pow, 3, 2).result(timeout=30) == 9
        assert not _can_fork()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                live.submit(pow, 2, 3)
                code |= 2  # accepted: nothing would ever run it
            except shoal.BrokenPool as exc:
                if "forked" not in str(exc):
                    code |= 4
            gc.collect()  # frees the parent's garbage pool here
            with shoal.Executor(2, backend="threads") as mine:
                if mine.submit(pow, 2, 10).result(timeout=30) != 1024:
                    code |= 8
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status), f"child killed by signal {os.WTERMSIG(status)}"
        assert os.WEXITSTATUS(status) == 0, os.WEXITSTATUS(status)

        # Process pools whose workers were forked, and a worker that collects
        # the garbage pool it inherited, run their tasks.
        with shoal.Pool(2) as pool:
            assert pool.map(square, range(50)) == [x * x for x in range(50)]
        live.shutdown(wait=True)
        gc.enable()
        gc.collect()
        assert _can_fork()

        @cfunc(types.void(types.int64, types.int64, types.CPointer(types.int64)))
        def mark(begin, end, out):
            o = carray(out, (end,))
            for i in range(begin, end):
                o[i] = i

        a = np.zeros(10_000, dtype=np.int64)
        shoal.parallel_for(a.size, mark, a, grain=64)
        assert (a == np.arange(a.size)).all()
        assert _can_fork(), "idle native-loop threads must not prevent a fork"
        with shoal.Pool(2) as pool:
            for wpid in pool.backend.pids:
                cmd = b""
                while not cmd:
                    cmd = open(f"/proc/{wpid}/cmdline", "rb").read()
                assert b"shoal._worker" not in cmd, cmd  # forked, not spawned
            assert pool.map(square, range(50)) == [x * x for x in range(50)]
        print("OK")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=180, env={k: v for k, v in os.environ.items()
                                           if k != "SHOAL_START"})
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


FORK_SERVER_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {here!r})
    import pytest
    import shoal
    from shoal._backend_processes import _can_fork
    from pool_helpers import (cmdline_of, exit_hard, pid_and_parent, segfault, sleep_return,
                              square, wait_gone)

    def parent_of(pid):
        with open(f"/proc/{{pid}}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    def spawned(pid):
        return b"shoal._worker" in cmdline_of(pid)

    assert _can_fork()  # a fresh driver: it runs no other thread
    {body}
    print("OK")
""")


def _run_fork_server_driver(tmp_path, body):
    script = tmp_path / "fork_server_driver.py"
    script.write_text(FORK_SERVER_DRIVER.format(here=HERE, body=textwrap.dedent(body)))
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_START", "SHOAL_FORK_SERVER")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr


def test_replacement_workers_come_from_the_fork_server(tmp_path):
    """Recycled (max_tasks_per_worker) and dead workers are replaced by
    children of the pool's fork server, forked, not fresh interpreters; their
    exits reach the driver with the right code or signal, time limits kill
    them, and nothing is left once the pool closes."""
    _run_fork_server_driver(tmp_path, """
        with shoal.Pool(2, max_tasks_per_worker=1) as pool:
            server = pool.backend.helper_pids
            assert len(server) == 1 and parent_of(server[0]) == os.getpid()
            got = pool.map(pid_and_parent, range(40), chunksize=1)
            pids = [pid for pid, _ in got]
            assert len(set(pids)) == 40  # one task per worker
            parents = [parent for _, parent in got]
            # the first two, forked at the start, are the driver's children
            assert parents.count(os.getpid()) == 2 and parents.count(server[0]) == 38, parents
        assert wait_gone(server + pids) == []
        with shoal.Pool(2, max_tasks_per_worker=10_000) as pool:
            first = set(pool.backend.pids)
            with pytest.raises(shoal.WorkerLost) as info:
                pool.apply(exit_hard, (7,))
            assert info.value.exitcode == 7 and "exited with code 7" in str(info.value)
            with pytest.raises(shoal.WorkerLost) as info:
                pool.apply(segfault)
            assert info.value.signal == signal.SIGSEGV and "SIGSEGV" in str(info.value)
            victim = pool.apply_async(sleep_return, (60,), timeout=0.5)
            with pytest.raises(shoal.TaskTimeout):
                victim.get(timeout=30)
            server = pool.backend.helper_pids
            for pid in set(pool.backend.pids) - first:
                assert parent_of(pid) == server[0] and not spawned(pid)
            assert pool.map(square, range(100)) == [i * i for i in range(100)]
            pids = pool.backend.pids
        assert wait_gone(server + pids) == []
    """)


def test_a_killed_fork_server_leaves_a_working_pool(tmp_path):
    """SIGKILL to the fork server (the OOM killer's pick, say): its workers go
    with it; their tasks are retried (retries=1) on replacements, which are
    fresh interpreters now; nothing is left once the pool closes."""
    _run_fork_server_driver(tmp_path, """
        with shoal.Pool(2) as pool:
            assert pool.backend.helper_pids == []  # a pool that never recycles: none
        with shoal.Pool(2, retries=1, max_tasks_per_worker=10_000) as pool:
            first = pool.backend.pids
            for pid in first:  # both workers replaced by the server's children
                os.kill(pid, signal.SIGKILL)
            assert wait_gone(first) == []
            deadline = time.monotonic() + 30
            while set(pool.backend.pids) & set(first) and time.monotonic() < deadline:
                pool.map(square, range(10))
            server = pool.backend.helper_pids
            forked = pool.backend.pids
            assert all(parent_of(p) == server[0] for p in forked), (server, forked)
            running = [pool.apply_async(sleep_return, (1.0, i)) for i in range(6)]
            time.sleep(0.3)
            os.kill(server[0], signal.SIGKILL)
            assert [r.get(timeout=60) for r in running] == list(range(6))
            assert wait_gone(server + forked) == []
            assert pool.backend.helper_pids == []
            assert all(spawned(p) for p in pool.backend.pids)
            assert pool.map(square, range(100)) == [i * i for i in range(100)]
            pids = pool.backend.pids
        assert wait_gone(pids) == []
    """)
