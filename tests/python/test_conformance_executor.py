"""The concurrent.futures.Executor contract, as code written for
ThreadPoolExecutor / ProcessPoolExecutor expects it, checked on shoal.Executor
for both backends. One test body per behaviour, parametrized over backends.

No timing thresholds: ordering is forced with file gates (a task waits until
the test creates a file), so every assertion is about behaviour."""

from __future__ import annotations

import concurrent.futures as cf
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shoal
import conformance_helpers as h
from conformance_helpers import BACKENDS, _open_gates_on_teardown, backend  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def ex(backend):
    e = shoal.Executor(2, backend=backend)
    yield e
    e.shutdown(wait=False, cancel_futures=True)
    e.terminate()


LAZY_MAP = ("shoal.Executor.map (python/shoal/pool.py) returns the backend's map generator, "
            "which submits nothing until the first next(); concurrent.futures submits every "
            "item when map() is called, so `with Executor() as ex: ex.map(f, items)` for side "
            "effects runs nothing")
QUEUED_IS_RUNNING = ("processes engine: _Engine.submit/_place mark a Future RUNNING as soon as "
                     "its frame is pushed onto a worker's ring, not when the worker starts it, "
                     "so every queued task is uncancellable: Future.cancel() returns False and "
                     "shutdown(cancel_futures=True) cancels nothing")


def xfail_for(request, backends, reason):
    """Marks this run of a backend-parametrized test as a known (strict) failure."""
    if request.getfixturevalue("backend") in backends:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def _started(path, timeout=30.0):
    h.wait_file(str(path) + ".started", timeout)


def _open(path):
    open(path, "w").close()


# ------------------------------------------------------------------ basics
def test_is_a_concurrent_futures_executor(ex):
    assert isinstance(ex, cf.Executor)
    fut = ex.submit(h.square, 7)
    assert isinstance(fut, cf.Future)


def test_submit_result_and_exception(ex):
    ok = ex.submit(h.add3, 1, 2, c=3)
    bad = ex.submit(h.raise_custom, 5)
    assert ok.result(timeout=60) == 6
    assert ok.exception() is None
    exc = bad.exception(timeout=60)
    assert isinstance(exc, h.CustomError) and exc.code == 5
    with pytest.raises(h.CustomError) as info:
        bad.result()
    assert info.value.code == 5 and info.value.detail == "from task"
    assert ok.done() and bad.done() and not ok.cancelled() and not ok.running()


def test_result_timeout_raises_timeout_error_and_future_stays_usable(ex, tmp_path):
    g = str(tmp_path / "g")
    fut = ex.submit(h.gate, g, "late")
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        fut.exception(timeout=0.05)
    _open(g)
    assert fut.result(timeout=60) == "late"


# ------------------------------------------------------------------ map
def test_map_returns_results_in_input_order(ex):
    assert list(ex.map(h.square, range(50))) == [i * i for i in range(50)]


def test_map_timeout_is_raised_lazily_on_iteration(ex, tmp_path):
    g = str(tmp_path / "g")
    it = ex.map(h.gate, [g, g], timeout=0.2)  # must not raise here
    with pytest.raises(TimeoutError):
        next(it)
    _open(g)


def test_map_timeout_not_hit_when_results_come_in_time(ex):
    assert list(ex.map(h.square, range(10), timeout=60)) == [i * i for i in range(10)]


def test_map_several_iterables_stops_at_the_shortest(ex):
    out = list(ex.map(h.add3, [1, 2, 3, 4], (10, 20, 30), iter([100, 200, 300, 400, 500])))
    assert out == [111, 222, 333]


@pytest.mark.parametrize("chunksize", [1, 3, 7, 1000])
def test_map_chunksize_does_not_change_results(ex, chunksize):
    assert list(ex.map(h.square, range(100), chunksize=chunksize)) == [i * i for i in range(100)]


def test_map_chunksize_below_one_is_a_value_error(ex):
    with pytest.raises(ValueError):
        list(ex.map(h.square, range(10), chunksize=0))


def test_map_on_empty_iterables(ex):
    assert list(ex.map(h.square, [])) == []
    assert list(ex.map(h.square, iter(()))) == []
    assert list(ex.map(h.add3, [], [], [])) == []
    assert list(ex.map(h.add3, [1], [], [3])) == []


def test_map_accepts_a_generator_without_len(ex):
    assert list(ex.map(h.square, (i for i in range(20)))) == [i * i for i in range(20)]


def test_map_reraises_the_task_error_at_its_position(ex):
    it = ex.map(_id_or_raise, range(6), chunksize=1)
    got = []
    with pytest.raises(h.CustomError):
        for v in it:
            got.append(v)
    assert got == [0, 1, 2]


def _id_or_raise(x):
    if x == 3:
        raise h.CustomError(x)
    return x


def test_map_submits_eagerly_so_unconsumed_work_still_runs(backend, tmp_path, request):
    # concurrent.futures submits every item when map() is called: code that
    # calls ex.map(f, items) for side effects and never iterates relies on it.
    paths = [str(tmp_path / f"f{i}") for i in range(6)]
    with shoal.Executor(2, backend=backend) as e:
        e.map(h.touch, paths)
    assert all(os.path.exists(p) for p in paths)


# ------------------------------------------------------------------ shutdown
def test_shutdown_without_wait_lets_running_work_finish(backend, tmp_path):
    g = str(tmp_path / "g")
    e = shoal.Executor(1, backend=backend)
    try:
        fut = e.submit(h.gate, g, "done")
        _started(g)
        e.shutdown(wait=False)
        assert not fut.done()
        _open(g)
        assert fut.result(timeout=60) == "done"
    finally:
        e.terminate()


def test_shutdown_cancel_futures_cancels_pending_and_finishes_running(backend, tmp_path, request):
    g = str(tmp_path / "g")
    e = shoal.Executor(1, backend=backend)
    try:
        first = e.submit(h.gate, g, "first")
        _started(g)
        rest = [e.submit(h.square, i) for i in range(20)]
        e.shutdown(wait=False, cancel_futures=True)
        _open(g)
        assert first.result(timeout=60) == "first"
        done, not_done = cf.wait(rest, timeout=60)
        assert not not_done
        cancelled = [f for f in rest if f.cancelled()]
        assert cancelled, "no pending future was cancelled by shutdown(cancel_futures=True)"
        for i, f in enumerate(rest):
            assert f.cancelled() or f.result() == i * i
    finally:
        e.terminate()


@pytest.mark.parametrize("how", ["submit", "map"])
def test_shutdown_cancel_futures_leaves_at_most_one_queued_task_per_worker(backend, tmp_path,
                                                                          how):
    # concurrent.futures lets at most the call queue's few tasks run after
    # shutdown(cancel_futures=True). Here: one blocked task per worker, many
    # short ones queued behind them (on the workers' rings and in the
    # backlog); every one not started is cancelled, so at most one running
    # and one queued per worker ran.
    e = shoal.Executor(2, backend=backend)
    workers = e.workers  # (the mpi backend under mpirun -n 2: one)
    try:
        gates = [str(tmp_path / f"g{i}") for i in range(workers)]
        blockers = [e.submit(h.gate, g, i) for i, g in enumerate(gates)]
        for g in gates:
            _started(g)
        paths = [str(tmp_path / f"t{i}") for i in range(200)]
        if how == "submit":
            futs = [e.submit(h.touch, p) for p in paths]
            it = None
        else:
            futs = []
            it = e.map(h.touch, paths, chunksize=1)
        e.shutdown(wait=False, cancel_futures=True)
        for g in gates:
            _open(g)
        assert [b.result(timeout=60) for b in blockers] == list(range(workers))
        done, not_done = cf.wait(futs, timeout=60)
        assert not not_done
        if it is not None:
            with pytest.raises(cf.CancelledError):
                list(it)
        e.shutdown(wait=True)  # nothing still queued runs later either
        touched = [p for p in paths if os.path.exists(p)]
        assert workers + len(touched) <= 2 * workers, (
            f"{len(touched)} queued tasks ran after shutdown(cancel_futures=True)")
        for p, f in zip(paths, futs):
            if os.path.exists(p):
                assert f.result() == p
            else:
                assert f.cancelled(), "a task that did not run has a future not cancelled"
    finally:
        e.terminate()


def test_shutdown_wait_blocks_until_everything_ran(backend):
    e = shoal.Executor(2, backend=backend)
    futs = [e.submit(h.sleep_return, 0.02, i) for i in range(10)]
    e.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == list(range(10))


def test_after_shutdown_the_error_is_concurrent_futures_own(ex):
    ex.shutdown()
    calls = [lambda: ex.submit(h.square, 1), lambda: ex.map(h.square, [1]),
             lambda: ex.submit_with(h.square, (1,)), lambda: ex._backend.submit(h.square, (1,))]
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        assert str(info.value) == "cannot schedule new futures after shutdown"


ATEXIT_DRIVER = textwrap.dedent("""
    import atexit, sys
    sys.path.insert(0, {here!r})
    import shoal, conformance_helpers as h

    def late():
        for name, make in [("kept", lambda: ex), ("new", lambda: shoal.Executor(1, backend={backend!r}))]:
            try:
                e = make()
                e.submit(h.square, 3).result(timeout=30)
                print(name, "ACCEPTED", flush=True)
            except RuntimeError as exc:
                print(name, "REFUSED", exc, flush=True)

    atexit.register(late)
    ex = shoal.Executor(1, backend={backend!r})
    assert ex.submit(h.square, 2).result(timeout=30) == 4
    print("LEAVING", flush=True)
""")


def test_submit_in_an_atexit_callback_is_refused_as_in_concurrent_futures(backend, tmp_path):
    h.skip_on_mpi(backend, "driver")
    # concurrent.futures: RuntimeError('cannot schedule new futures after
    # interpreter shutdown') once interpreter shutdown has begun.
    script = tmp_path / "atexit_driver.py"
    script.write_text(ATEXIT_DRIVER.format(here=HERE, backend=backend))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and "LEAVING" in r.stdout, r.stdout + r.stderr
    for name in ("kept", "new"):
        assert f"{name} REFUSED cannot schedule new futures after interpreter shutdown\n" \
            in r.stdout, r.stdout + r.stderr


def test_submit_and_map_after_shutdown_raise_runtime_error(ex):
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(h.square, 1)
    with pytest.raises(RuntimeError):
        ex.map(h.square, [1])
    ex.shutdown()  # idempotent
    ex.shutdown(wait=False, cancel_futures=True)


def test_context_manager_returns_itself_and_waits(backend):
    with shoal.Executor(2, backend=backend) as e:
        assert isinstance(e, shoal.Executor)
        futs = [e.submit(h.sleep_return, 0.01, i) for i in range(8)]
    assert [f.result(timeout=0) for f in futs] == list(range(8))
    with pytest.raises(RuntimeError):
        e.submit(h.square, 2)


def test_context_manager_exit_on_exception_propagates_it(backend):
    with pytest.raises(KeyError):
        with shoal.Executor(2, backend=backend) as e:
            fut = e.submit(h.square, 3)
            raise KeyError("user code failed")
    assert fut.result(timeout=60) == 9


# ------------------------------------------------------------------ waiting
def test_as_completed_yields_each_future_once_in_completion_order(ex, tmp_path):
    h.need_workers(ex)
    g = str(tmp_path / "g")
    slow = ex.submit(h.gate, g, "slow")
    fast = ex.submit(h.square, 4)
    seen = []
    for f in cf.as_completed([slow, fast, fast]):
        seen.append(f)
        if f is fast:
            _open(g)
    assert seen == [fast, slow]


def test_as_completed_timeout(ex, tmp_path):
    g = str(tmp_path / "g")
    slow = ex.submit(h.gate, g)
    with pytest.raises(TimeoutError):
        for _ in cf.as_completed([slow], timeout=0.1):
            pass
    _open(g)


def test_wait_first_completed(ex, tmp_path):
    h.need_workers(ex)
    g = str(tmp_path / "g")
    slow = ex.submit(h.gate, g)
    fast = ex.submit(h.square, 2)
    done, not_done = cf.wait([slow, fast], timeout=60, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    _open(g)


def test_wait_first_exception(ex, tmp_path):
    h.need_workers(ex)
    g = str(tmp_path / "g")
    slow = ex.submit(h.gate, g)
    fine = ex.submit(h.square, 2)
    fine.result(timeout=60)
    bad = ex.submit(h.raise_custom, 1)
    done, not_done = cf.wait([slow, fine, bad], timeout=60, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and fine in done and not_done == {slow}
    _open(g)


def test_wait_first_exception_without_exception_waits_for_all(ex):
    futs = [ex.submit(h.sleep_return, 0.01, i) for i in range(4)]
    done, not_done = cf.wait(futs, timeout=60, return_when=cf.FIRST_EXCEPTION)
    assert done == set(futs) and not not_done


def test_wait_all_completed_and_timeout(ex, tmp_path):
    h.need_workers(ex)
    g = str(tmp_path / "g")
    slow = ex.submit(h.gate, g)
    fast = ex.submit(h.square, 3)
    assert fast.result(timeout=60) == 9
    done, not_done = cf.wait([slow, fast], timeout=0.2, return_when=cf.ALL_COMPLETED)
    assert done == {fast}
    assert not_done == {slow}
    _open(g)
    done, not_done = cf.wait([slow, fast], timeout=60)
    assert done == {slow, fast} and not not_done


# ------------------------------------------------------------------ callbacks
def test_add_done_callback_runs_once_with_the_future(ex):
    got = []
    ev = threading.Event()
    fut = ex.submit(h.square, 6)

    def cb(f):
        got.append((f, f.result()))
        ev.set()

    fut.add_done_callback(cb)
    assert ev.wait(60)
    time.sleep(0.05)
    assert got == [(fut, 36)]


def test_add_done_callback_on_a_finished_future_runs_at_once_in_caller(ex):
    fut = ex.submit(h.square, 5)
    fut.result(timeout=60)
    got = []
    fut.add_done_callback(lambda f: got.append((threading.get_ident(), f.result())))
    assert got == [(threading.get_ident(), 25)]


def test_add_done_callback_sees_exceptions_and_a_raising_callback_is_contained(ex):
    got = []
    fut = ex.submit(h.raise_custom, 9)
    fut.add_done_callback(lambda f: 1 / 0)   # must be logged, not break anything
    fut.add_done_callback(lambda f: got.append(type(f.exception())))
    cf.wait([fut], timeout=60)
    deadline = time.monotonic() + 30
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [h.CustomError]
    assert ex.submit(h.square, 2).result(timeout=60) == 4


# ------------------------------------------------------------------ cancel
def test_cancel_a_running_future_returns_false(ex, tmp_path):
    g = str(tmp_path / "g")
    fut = ex.submit(h.gate, g, "ran")
    _started(g)
    assert fut.cancel() is False
    assert not fut.cancelled()
    _open(g)
    assert fut.result(timeout=60) == "ran"


def test_cancel_a_pending_future_returns_true(backend, tmp_path, request):
    g = str(tmp_path / "g")
    e = shoal.Executor(1, backend=backend)
    try:
        blocker = e.submit(h.gate, g, "blocker")
        _started(g)
        queued = [e.submit(h.touch, str(tmp_path / f"q{i}")) for i in range(10)]
        last = queued[-1]
        assert last.cancel() is True
        assert last.cancelled() and last.done()
        with pytest.raises(cf.CancelledError):
            last.result()
        _open(g)
        assert blocker.result(timeout=60) == "blocker"
        cf.wait(queued, timeout=60)
        assert not os.path.exists(str(tmp_path / "q9")), "a cancelled task ran anyway"
    finally:
        e.terminate()


def test_cancel_a_finished_future_returns_false(ex):
    fut = ex.submit(h.square, 3)
    fut.result(timeout=60)
    assert fut.cancel() is False and fut.result() == 9


# ------------------------------------------------------------------ values and exceptions
def test_custom_exception_type_and_attributes_survive(ex):
    fut = ex.submit(h.raise_custom, 42)
    exc = fut.exception(timeout=60)
    assert type(exc) is h.CustomError
    assert exc.code == 42 and exc.args == (42, "from task")


def test_exception_defined_in_test_module_survives(ex):
    fut = ex.submit(_raise_local, "boom")
    exc = fut.exception(timeout=60)
    assert type(exc).__name__ == "LocalError" and exc.args == ("boom",)
    assert isinstance(exc, LocalError)


class LocalError(Exception):
    pass


def _raise_local(msg):
    raise LocalError(msg)


MAIN_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import shoal

    class MainError(Exception):
        def __init__(self, a, b):
            super().__init__(a, b)
            self.a, self.b = a, b

    def boom(x):
        raise MainError(x, "main")

    with shoal.Executor(2, backend={backend!r}) as ex:
        exc = ex.submit(boom, 7).exception(timeout=60)
        assert isinstance(exc, MainError), type(exc)
        assert (exc.a, exc.b) == (7, "main")
        try:
            list(ex.map(boom, [1, 2]))
        except MainError as e:
            assert e.a == 1
        else:
            raise AssertionError("no error")
        print("OK")
""")


def test_exception_defined_in_main_survives(backend, tmp_path):
    h.skip_on_mpi(backend, "driver")
    script = tmp_path / "main_exc.py"
    script.write_text(MAIN_DRIVER.format(here=HERE, backend=backend))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


@pytest.mark.parametrize("kind, etype", [("exit", SystemExit), ("custom", h.CustomBaseException),
                                         ("keyboard", KeyboardInterrupt)])
def test_base_exceptions_raised_in_a_task_go_to_the_future(ex, kind, etype):
    fut = ex.submit(h.raise_base, kind)
    exc = fut.exception(timeout=60)
    assert type(exc) is etype
    if kind == "exit":
        assert exc.code == 3
    with pytest.raises(etype):
        fut.result()
    # the executor survives it
    assert ex.submit(h.square, 8).result(timeout=60) == 64


def test_task_returning_none(ex):
    fut = ex.submit(h.return_none)
    assert fut.result(timeout=60) is None
    assert fut.exception() is None


def test_an_exception_instance_returned_is_a_result_not_an_error(ex):
    fut = ex.submit(h.return_exception_instance)
    res = fut.result(timeout=60)
    assert isinstance(res, ValueError) and res.args == ("returned, not raised",)
    assert fut.exception() is None


def test_huge_arguments_and_results(ex):
    n = 96 << 20
    fut = ex.submit(h.big_bytes, n)
    data = fut.result(timeout=120)
    assert len(data) == n and data[:3] == b"\xab\xab\xab" and data[-1] == 0xab
    back = ex.submit(h.length_and_sum, data).result(timeout=120)
    assert back == (n, 0xab * len(data[:: 1 << 16]))


def test_moderately_nested_objects_round_trip(ex):
    assert ex.submit(h.depth_of, h.nested(400)).result(timeout=60) == 400
    assert h.depth_of(ex.submit(h.nested, 400).result(timeout=60)) == 400


def test_objects_past_the_recursion_limit_give_a_clear_error_and_no_crash(ex):
    depth = sys.getrecursionlimit() * 20
    fut = ex.submit(h.nested, depth)
    try:
        res = fut.result(timeout=60)
    except Exception as exc:  # pickling it must fail cleanly: RecursionError or a shoal error
        assert isinstance(exc, (RecursionError, shoal.SerializationError, ValueError)), repr(exc)
    else:
        assert h.depth_of(res) == depth
    try:
        arg_fut = ex.submit(h.depth_of, h.nested(depth))
        res = arg_fut.result(timeout=60)
    except Exception as exc:
        assert isinstance(exc, (RecursionError, shoal.SerializationError, ValueError)), repr(exc)
    else:
        assert res == depth
    assert ex.submit(h.square, 11).result(timeout=60) == 121


@pytest.mark.parametrize("bad", [0, -1, -100])
def test_max_workers_zero_or_negative_is_a_value_error(backend, bad):
    with pytest.raises(ValueError):
        shoal.Executor(max_workers=bad, backend=backend)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_error_and_attribute_match_concurrent_futures(backend, bad):
    with pytest.raises(ValueError) as std:
        cf.ThreadPoolExecutor(max_workers=bad)
    with pytest.raises(ValueError) as ours:
        shoal.Executor(max_workers=bad, backend=backend)
    assert str(ours.value) == str(std.value) == "max_workers must be greater than 0"
    with shoal.Executor(3, backend=backend) as e:
        # dask (and others) read it; the mpi backend has at most its serving ranks
        assert e._max_workers == e.workers == (3 if backend != "mpi" else min(3, h.mpi_workers()))
    with shoal.Executor(backend=backend) as e:
        assert e._max_workers == (shoal.default_workers() if backend != "mpi" else
                                  h.mpi_workers())


def test_kwargs_named_fn_and_timeout_reach_the_function(ex):
    fut = ex.submit(h.echo_kwargs, 1, fn="f", timeout=2.5, chunksize=4, self="s")
    assert fut.result(timeout=60) == ((1,), {"fn": "f", "timeout": 2.5, "chunksize": 4,
                                             "self": "s"})


def test_usable_from_several_threads_at_once(ex):
    errors = []
    results = {}
    barrier = threading.Barrier(6)

    def user(k):
        try:
            barrier.wait(30)
            futs = [ex.submit(h.add3, k, i, 0) for i in range(30)]
            mapped = list(ex.map(h.square, range(k, k + 20)))
            results[k] = ([f.result(timeout=60) for f in futs], mapped)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors
    for k in range(6):
        subs, mapped = results[k]
        assert subs == [k + i for i in range(30)]
        assert mapped == [i * i for i in range(k, k + 20)]


def test_lambda_and_closure_tasks(ex):
    base = 10
    assert ex.submit(lambda x: x + base, 5).result(timeout=60) == 15
    assert list(ex.map(lambda a, b: a * b, [1, 2], [3, 4])) == [3, 8]


# ------------------------------------------------------------------ what cannot travel back
def test_exception_that_cannot_be_rebuilt_is_still_a_clear_error(ex):
    # TwoArgError pickles as TwoArgError("a") but needs two arguments: the driver
    # cannot rebuild it; the user must still learn which exception the task raised.
    fut = ex.submit(h.raise_two_arg_error)
    exc = fut.exception(timeout=60)
    assert isinstance(exc, Exception) and "TwoArgError" in f"{type(exc).__name__} {exc}"
    assert ex.submit(h.square, 3).result(timeout=60) == 9


def test_exception_that_cannot_be_pickled_is_still_a_clear_error(ex):
    exc = ex.submit(h.raise_locked_error).exception(timeout=60)
    assert isinstance(exc, Exception)
    assert "LockedError" in f"{type(exc).__name__} {exc}" and "holds a lock" in str(exc)
    assert ex.submit(h.square, 4).result(timeout=60) == 16


def test_result_the_driver_cannot_import_is_a_clear_error_or_the_object(ex):
    fut = ex.submit(h.return_worker_only_class)
    try:
        res = fut.result(timeout=60)
    except Exception as exc:  # processes: the class exists only in the worker
        assert isinstance(exc, shoal.SerializationError), repr(exc)
        assert "no_such_module_anywhere" in str(exc)
    else:
        assert type(res).__name__ == "Phantom"
    assert ex.submit(h.square, 5).result(timeout=60) == 25


def test_non_callable_is_a_type_error(ex):
    with pytest.raises(TypeError):
        ex.submit(5).result(timeout=60)
    with pytest.raises(TypeError):
        list(ex.map(5, [1]))


def test_initializer_and_initargs(backend):
    with shoal.Executor(2, backend=backend, initializer=_init_exec, initargs=(6,)) as e:
        assert set(e.map(_read_exec_init, range(12), chunksize=1)) == {7}


_EXEC_INIT = {}


def _init_exec(v):
    _EXEC_INIT["v"] = v + 1


def _read_exec_init(_):
    return _EXEC_INIT.get("v")


# ------------------------------------------------------------------ references, tracebacks, exit
class _Obj:
    pass


def test_arguments_are_not_kept_alive_after_completion(ex):
    import gc
    import weakref

    obj = _Obj()
    ref = weakref.ref(obj)
    fut = ex.submit(h.identity, [obj, 1])
    fut.result(timeout=60)
    del obj, fut
    gc.collect()
    assert ref() is None, "the executor keeps a finished task's argument alive"


@pytest.mark.parametrize("how", ["submit", "submit_error", "map", "map_error"])
def test_finished_tasks_keep_nothing_alive_without_the_cyclic_collector(ex, how):
    # After the caller drops a finished future (and the exception it caught),
    # the argument (processes: the driver's own object; threads: the object
    # itself), the function, the result, the exception and the future die at
    # once, by reference counting: nothing in the executor keeps them, and no
    # reference cycle (a traceback's frames leading back to the future) does.
    import functools
    import gc
    import weakref

    assert ex.submit(h.square, 2).result(timeout=60) == 4  # workers up
    gc.disable()  # a collection during the test would hide a cycle
    try:
        arg, other = _Obj(), _Obj()
        refs = {"argument": weakref.ref(arg)}
        if how == "submit":
            fn = functools.partial(h.identity)  # the caller's own function object
            refs["function"] = weakref.ref(fn)
            fut = ex.submit(fn, arg)
            refs["future"] = weakref.ref(fut)
            res = fut.result(timeout=60)
            refs["result"] = weakref.ref(res)
            del fut, res
        elif how == "submit_error":
            fn = functools.partial(h.raise_custom)
            refs["function"] = weakref.ref(fn)
            fut = ex.submit(fn, arg)
            refs["future"] = weakref.ref(fut)
            try:
                fut.result(timeout=60)
            except h.CustomError as exc:
                refs["exception"] = weakref.ref(exc)
            del fut
        elif how == "map":
            fn = functools.partial(h.identity)
            refs["function"] = weakref.ref(fn)
            out = list(ex.map(fn, [arg, other], timeout=60))
            refs["result"] = weakref.ref(out[0])
            del out
        else:
            fn = functools.partial(h.raise_custom)
            refs["function"] = weakref.ref(fn)
            try:  # one item: no other task of the map may still be running
                list(ex.map(fn, [arg], timeout=60))
            except h.CustomError as exc:
                refs["exception"] = weakref.ref(exc)
        assert "exception" in refs or "result" in refs
        del arg, other, fn
        alive = sorted(name for name, ref in refs.items() if ref() is not None)
        assert not alive, f"still alive after the caller dropped them: {alive}"
    finally:
        gc.enable()


def test_tasks_cancelled_by_shutdown_keep_nothing_alive(backend, tmp_path):
    # The arguments of tasks that shutdown(cancel_futures=True) cancelled die
    # at once, while the pool's worker is still busy (threads: the queue's
    # items used to keep them until a thread reached them).
    import gc
    import weakref

    g = str(tmp_path / "g")
    e = shoal.Executor(1, backend=backend)
    gc.disable()
    try:
        blocker = e.submit(h.gate, g, "b")
        _started(g)
        objs = [_Obj() for _ in range(30)]  # more than a worker's ring holds
        refs = [weakref.ref(o) for o in objs]
        futs = [e.submit(h.identity, o) for o in objs]
        e.shutdown(wait=False, cancel_futures=True)
        cancelled = [i for i, f in enumerate(futs) if f.cancelled()]
        assert cancelled
        del objs
        alive = [i for i in cancelled if refs[i]() is not None]
        assert not alive, f"the arguments of cancelled tasks {alive} are still alive"
        _open(g)
        assert blocker.result(timeout=60) == "b"
        cf.wait(futs, timeout=60)
        alive = [i for i, f in enumerate(futs) if f.cancelled() and refs[i]() is not None]
        assert not alive, f"the arguments of cancelled tasks {alive} are still alive"
    finally:
        gc.enable()
        e.terminate()


def test_many_throwaway_functions_queued_behind_a_blocked_worker(backend, tmp_path):
    # A new function object per task, dropped by the caller at once (the
    # executor may not keep it alive), more of them than any function cache
    # holds, all waiting behind a blocked worker: each task still runs its own.
    import functools

    g = str(tmp_path / "g")
    e = shoal.Executor(1, backend=backend)
    try:
        blocker = e.submit(h.gate, g, "b")
        _started(g)
        futs = [e.submit(functools.partial(h.add3, i, 0), 1) for i in range(300)]
        _open(g)
        assert blocker.result(timeout=60) == "b"
        assert [f.result(timeout=60) for f in futs] == [i + 1 for i in range(300)]
    finally:
        e.terminate()


def test_remote_traceback_is_attached_as_cause(ex):
    exc = ex.submit(h.raise_custom, 1).exception(timeout=60)
    assert isinstance(exc.__cause__, shoal.RemoteTraceback)
    assert "raise_custom" in str(exc.__cause__) and "CustomError" in str(exc.__cause__)


EXIT_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    import shoal, conformance_helpers as h
    ex = shoal.Executor(2, backend={backend!r})
    ex.submit(h.sleep_then_touch, 0.5, {path!r})
    print("LEAVING", flush=True)
""")


def test_interpreter_exit_without_shutdown_finishes_submitted_work(backend, tmp_path):
    h.skip_on_mpi(backend, "driver")
    path = str(tmp_path / "done")
    script = tmp_path / "exit_driver.py"
    script.write_text(EXIT_DRIVER.format(here=HERE, backend=backend, path=path))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and "LEAVING" in r.stdout, r.stderr
    assert os.path.exists(path), "a submitted task was dropped at interpreter exit"


def test_lost_worker_is_catchable_as_broken_process_pool():
    from concurrent.futures.process import BrokenProcessPool

    with shoal.Executor(1) as e:
        exc = e.submit(os._exit, 3).exception(timeout=60)
        assert isinstance(exc, shoal.WorkerLost)
        assert isinstance(exc, BrokenProcessPool)


def test_wait_and_as_completed_over_futures_of_different_executors(tmp_path):
    g = str(tmp_path / "g")
    with shoal.Executor(1, backend="processes") as pe, \
            shoal.Executor(1, backend="threads") as te, \
            cf.ThreadPoolExecutor(1) as std:
        slow = pe.submit(h.gate, g, "p")
        fut_t = te.submit(h.square, 3)
        fut_s = std.submit(h.square, 4)
        done, not_done = cf.wait([slow, fut_t, fut_s], timeout=60,
                                 return_when=cf.FIRST_COMPLETED)
        assert done and slow not in done
        cf.wait([fut_t, fut_s], timeout=60)
        order = []
        for f in cf.as_completed([slow, fut_t, fut_s], timeout=60):
            order.append(f)
            if len(order) == 2:
                _open(g)
        assert order[-1] is slow and set(order[:2]) == {fut_t, fut_s}
        assert [f.result() for f in (slow, fut_t, fut_s)] == ["p", 9, 16]
