"""The threads backend through the Backend API: real C++ pool threads running
Python callables."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError

import pytest

import shoal
from shoal import _backend

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def backend():
    b = _backend.create("threads", 4)
    yield b
    b.shutdown(wait=True)


def square(x):
    return x * x


def test_results_and_map(backend):
    assert backend.submit(square, (7,)).result() == 49
    assert backend.submit(divmod, (17, 5), {}).result() == (3, 2)
    assert backend.submit(sorted, ([3, 1, 2],), {"reverse": True}).result() == [3, 2, 1]
    assert list(backend.map(square, range(100))) == [x * x for x in range(100)]
    assert sorted(backend.map(square, range(50), chunksize=7, ordered=False)) == \
        [x * x for x in range(50)]
    assert list(backend.map(square, [])) == []


def test_four_sleeps_run_at_the_same_time(backend):
    # The course's example, without a timing threshold: every task waits at a
    # barrier that only opens once all four run concurrently.
    barrier = threading.Barrier(4, timeout=30)

    def sleeper():
        barrier.wait()
        time.sleep(0.05)
        return threading.get_ident()

    idents = [f.result() for f in [backend.submit(sleeper) for _ in range(4)]]
    assert len(set(idents)) == 4
    assert threading.get_ident() not in idents


def fails(msg):
    raise ValueError(msg)


def test_exception_keeps_type_and_traceback(backend):
    fut = backend.submit(fails, ("boom",))
    with pytest.raises(ValueError, match="boom") as info:
        fut.result()
    cause = info.value.__cause__
    assert isinstance(cause, shoal.RemoteTraceback)
    assert "fails" in str(cause) and "ValueError: boom" in str(cause)
    assert info.value.__traceback__ is not None


def test_base_exceptions_go_to_the_future(backend):
    fut = backend.submit(sys.exit, (3,))
    with pytest.raises(SystemExit):
        fut.result()
    assert backend.submit(square, (3,)).result() == 9  # the worker survived


def test_initializer_runs_once_per_thread_and_thread_local_survives():
    seen = []
    lock = threading.Lock()
    local = threading.local()

    def init(tag):
        local.tag = tag
        with lock:
            seen.append(threading.get_ident())

    b = _backend.create("threads", 3, initializer=init, initargs=("ready",))
    try:
        barrier = threading.Barrier(3, timeout=30)

        def task():
            barrier.wait()
            return getattr(local, "tag", None), threading.get_ident()

        out = [f.result() for f in [b.submit(task) for _ in range(3)]]
        out += [f.result() for f in [b.submit(lambda: (getattr(local, "tag", None),
                                                        threading.get_ident()))
                                     for _ in range(20)]]
    finally:
        b.shutdown()
    assert len(seen) == 3 and len(set(seen)) == 3
    assert all(tag == "ready" for tag, _ in out)
    assert {ident for _, ident in out} <= set(seen)


def test_failing_initializer_breaks_the_pool():
    def bad_init():
        raise RuntimeError("no database")

    b = _backend.create("threads", 2, initializer=bad_init)
    try:
        fut = None
        try:
            fut = b.submit(square, (2,))
        except shoal.BrokenPool:
            pass  # the pool broke before submit: also correct
        if fut is not None:
            with pytest.raises(shoal.BrokenPool, match="initializer"):
                fut.result(timeout=30)
        with pytest.raises(shoal.BrokenPool, match="no database"):
            b.submit(square, (2,))
    finally:
        b.shutdown()


def test_timeout_fails_the_future_and_the_pool_goes_on(backend):
    release = threading.Event()

    def stuck():
        release.wait(30)
        return "late"

    slow = backend.submit(stuck, timeout=0.2)
    with pytest.raises(shoal.TaskTimeout):
        slow.result(timeout=30)
    assert isinstance(slow.exception(), TimeoutError)
    assert backend.submit(square, (5,), timeout=30).result() == 25
    release.set()
    with pytest.raises(ValueError, match="timeout"):
        backend.submit(square, (1,), timeout=0)


def test_shutdown_waits_and_refuses_new_work():
    b = _backend.create("threads", 2)
    done = []
    futs = [b.submit(lambda i=i: (time.sleep(0.05), done.append(i))) for i in range(6)]
    b.shutdown(wait=True)
    assert sorted(done) == list(range(6))
    assert all(f.done() for f in futs)
    with pytest.raises(RuntimeError, match="after shutdown"):
        b.submit(square, (1,))
    b.shutdown()  # idempotent
    b.shutdown(wait=False, cancel_futures=True)


def test_shutdown_cancel_futures_cancels_only_pending():
    b = _backend.create("threads", 1)
    gate = threading.Event()
    started = threading.Event()

    def blocker():
        started.set()
        gate.wait(30)
        return "ran"

    running = b.submit(blocker)
    assert started.wait(30)
    pending = [b.submit(square, (i,)) for i in range(5)]
    b.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    gate.set()
    assert running.result(timeout=30) == "ran"
    b.shutdown(wait=True)
    for f in pending:
        with pytest.raises(CancelledError):
            f.result()


def test_terminate_fails_running_futures():
    b = _backend.create("threads", 1)
    gate = threading.Event()
    started = threading.Event()
    running = b.submit(lambda: (started.set(), gate.wait(30)))
    assert started.wait(30)
    queued = b.submit(square, (2,))
    b.terminate()
    with pytest.raises(shoal.BrokenPool):
        running.result(timeout=30)
    assert queued.cancelled()
    gate.set()
    b.shutdown(wait=True)


def test_shutdown_wait_from_own_thread_is_an_error(backend):
    fut = backend.submit(lambda: backend.shutdown(wait=True))
    with pytest.raises(RuntimeError, match="itself"):
        fut.result(timeout=30)


def test_bad_arguments():
    with pytest.raises(ValueError, match="workers"):
        _backend.create("threads", 0)
    with pytest.raises(TypeError, match="initializer"):
        _backend.create("threads", 1, initializer=42)
    b = _backend.create("threads", 1)
    try:
        with pytest.raises(TypeError, match="callable"):
            b.submit(42)
    finally:
        b.shutdown()


def test_native_loop_from_a_thread_task(backend):
    numba = pytest.importorskip("numba")
    from numba import cfunc, types

    @cfunc(types.int64(types.int64, types.int64, types.voidptr))
    def count(b, e, ctx):
        return e - b

    futs = [backend.submit(shoal.parallel_reduce, (100_000 + i, count), {"dtype": "int64"})
            for i in range(8)]
    assert [f.result(timeout=60) for f in futs] == [100_000 + i for i in range(8)]


def test_stress_many_submitters_behind_a_barrier(backend):
    n_threads, each = 8, 300
    barrier = threading.Barrier(n_threads)
    results: list = [None] * n_threads

    def submitter(k):
        barrier.wait()
        futs = [backend.submit(square, (k * each + i,)) for i in range(each)]
        results[k] = [f.result(timeout=60) for f in futs]

    ts = [threading.Thread(target=submitter, args=(k,)) for k in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [x for part in results for x in part]
    assert flat == [x * x for x in range(n_threads * each)]


EXIT_SCRIPT = textwrap.dedent("""
    import sys, time, threading
    from shoal import _backend
    b = _backend.create("threads", 3)
    done = []
    def busy(k):                       # holds the GIL most of the time
        t = time.perf_counter()
        while time.perf_counter() - t < 0.3:
            sum(range(1000))
        done.append(k)
    futs = [b.submit(busy, (k,)) for k in range(6)]
    b2 = _backend.create("threads", 2)
    b2.submit(time.sleep, (0.2,))
    b2.shutdown(wait=False)
    del b2
    import atexit
    atexit.register(lambda: print("done", sorted(done), flush=True))
    print("exiting", flush=True)
""")


def test_interpreter_exit_with_running_tasks_is_clean(tmp_path):
    script = tmp_path / "exit_while_busy.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert "done [0, 1, 2, 3, 4, 5]" in proc.stdout
    assert "leaked" not in proc.stderr and "Fatal" not in proc.stderr, proc.stderr
