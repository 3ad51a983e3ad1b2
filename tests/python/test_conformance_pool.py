"""The multiprocessing.Pool contract, as code written for multiprocessing
expects it, checked on shoal.Pool for both backends (one test body per
behaviour), plus the course's two Pool patterns (chunked DataFrame mean,
2D integration of sin(x+y) from partial sums)."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time

import pytest

import shoal
import conformance_helpers as h
from conformance_helpers import BACKENDS, _open_gates_on_teardown, backend  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pool(backend):
    p = shoal.Pool(2, backend=backend)
    yield p
    p.terminate()


def _open(path):
    open(path, "w").close()


def _gen(n):
    for i in range(n):
        yield i


# ------------------------------------------------------------------ maps
@pytest.mark.parametrize("chunksize", [None, 1, 4, 1000])
def test_map_is_a_list_in_order(pool, chunksize):
    out = pool.map(h.square, range(200), chunksize)
    assert type(out) is list and out == [i * i for i in range(200)]


def test_map_and_starmap_accept_generators_without_len(pool):
    assert pool.map(h.square, _gen(30)) == [i * i for i in range(30)]
    assert pool.starmap(h.add3, ((i, i, i) for i in range(10))) == [3 * i for i in range(10)]


def test_maps_on_empty_input(pool):
    assert pool.map(h.square, []) == []
    assert pool.map(h.square, _gen(0)) == []
    assert pool.starmap(h.add3, []) == []
    assert list(pool.imap(h.square, [])) == []
    assert list(pool.imap_unordered(h.square, iter([]))) == []


def test_starmap_unpacks_argument_tuples(pool):
    assert pool.starmap(h.add3, [(1, 2, 3), (4, 5, 6)], chunksize=1) == [6, 15]


@pytest.mark.parametrize("chunksize", [1, 5])
def test_imap_yields_in_order_lazily(pool, chunksize):
    it = pool.imap(h.square, _gen(40), chunksize)
    assert next(it) == 0
    assert list(it) == [i * i for i in range(1, 40)]


@pytest.mark.parametrize("chunksize", [1, 5])
def test_imap_unordered_yields_each_result_once(pool, chunksize):
    out = list(pool.imap_unordered(h.square, _gen(40), chunksize))
    assert sorted(out) == [i * i for i in range(40)]


def test_imap_unordered_yields_in_completion_order(backend, tmp_path):
    g = str(tmp_path / "g")
    with shoal.Pool(2, backend=backend) as p:
        h.need_workers(p)
        it = p.imap_unordered(_gate_or_square, [g, 3], chunksize=1)
        first = next(it)
        assert first == 9
        _open(g)
        assert next(it) == "gated"


def _gate_or_square(x):
    if isinstance(x, str):
        return h.gate(x, "gated")
    return x * x


def test_map_error_is_raised_with_its_type(pool):
    with pytest.raises(h.CustomError):
        pool.map(_fail_at_5, range(10), chunksize=1)
    assert pool.map(h.square, [3]) == [9]


def _fail_at_5(x):
    if x == 5:
        raise h.CustomError(x)
    return x


def test_imap_yields_results_before_the_failing_item(pool):
    got = []
    with pytest.raises(h.CustomError):
        for v in pool.imap(_fail_at_5, range(10), chunksize=1):
            got.append(v)
    assert got == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------ apply
def test_apply_and_apply_async(pool):
    assert pool.apply(h.add3, (1, 2), {"c": 3}) == 6
    r = pool.apply_async(h.square, (9,))
    assert r.get(timeout=60) == 81


def test_apply_async_callback_gets_the_result(pool):
    got, ev = [], threading.Event()
    r = pool.apply_async(h.square, (4,), callback=lambda v: (got.append(v), ev.set()))
    assert r.get(timeout=60) == 16
    assert ev.wait(30) and got == [16]


def test_apply_async_error_callback_gets_the_exception(pool):
    got, ev = [], threading.Event()
    called = []
    r = pool.apply_async(h.raise_custom, (3,), callback=called.append,
                         error_callback=lambda e: (got.append(e), ev.set()))
    with pytest.raises(h.CustomError):
        r.get(timeout=60)
    assert ev.wait(30)
    assert len(got) == 1 and isinstance(got[0], h.CustomError) and got[0].code == 3
    assert called == []


def test_get_timeout_is_catchable_as_multiprocessing_and_builtin_timeout(pool, tmp_path):
    g = str(tmp_path / "g")
    r = pool.apply_async(h.gate, (g, "v"))
    with pytest.raises(TimeoutError):
        r.get(timeout=0.05)
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.05)
    _open(g)
    assert r.get(timeout=60) == "v"


def test_get_timeout_is_a_builtin_timeout_error(pool, tmp_path):
    g = str(tmp_path / "g")
    r = pool.apply_async(h.gate, (g, "v"))
    with pytest.raises(TimeoutError):
        r.get(timeout=0.05)
    assert not r.ready()
    _open(g)
    assert r.get(timeout=60) == "v"


def test_wait_ready_successful(pool, tmp_path):
    g = str(tmp_path / "g")
    r = pool.apply_async(h.gate, (g, 1))
    assert r.ready() is False
    with pytest.raises(ValueError):
        r.successful()
    assert r.wait(0.05) is None and not r.ready()
    _open(g)
    r.wait(60)
    assert r.ready() and r.successful()
    bad = pool.apply_async(h.raise_custom, (1,))
    bad.wait(60)
    assert bad.ready() and bad.successful() is False


# ------------------------------------------------------------------ lifetime
def test_close_then_join_finishes_submitted_work(backend):
    p = shoal.Pool(2, backend=backend)
    rs = [p.apply_async(h.sleep_return, (0.02, i)) for i in range(8)]
    p.close()
    p.join()
    assert [r.get(timeout=0) for r in rs] == list(range(8))


def test_join_without_close_is_a_value_error(pool):
    with pytest.raises(ValueError):
        pool.join()


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_use_after_close_or_terminate_is_a_value_error(backend, how):
    p = shoal.Pool(2, backend=backend)
    getattr(p, how)()
    for call in (lambda: p.map(h.square, [1]), lambda: p.apply_async(h.square, (1,)),
                 lambda: p.apply(h.square, (1,)), lambda: p.starmap(h.add3, [(1, 2, 3)]),
                 lambda: list(p.imap(h.square, [1])),
                 lambda: list(p.imap_unordered(h.square, [1]))):
        with pytest.raises(ValueError):
            call()
    p.join()


def test_terminate_then_join_returns(backend, tmp_path):
    p = shoal.Pool(2, backend=backend)
    p.apply_async(h.gate, (str(tmp_path / "never"),))
    p.terminate()
    p.join()  # must not wait for the gated task on the processes backend
    _open(str(tmp_path / "never"))


def test_context_manager_returns_the_pool(backend):
    with shoal.Pool(2, backend=backend) as p:
        assert isinstance(p, shoal.Pool)
        assert p.map(h.square, [2]) == [4]


def test_initializer_runs_in_every_worker(backend):
    with shoal.Pool(2, backend=backend, initializer=_init, initargs=(41,)) as p:
        out = p.map(_read_init, range(20), chunksize=1)
    assert set(out) == {42}


_INIT = {}


def _init(v):
    _INIT["v"] = v + 1


def _read_init(_):
    return _INIT.get("v")


def test_max_tasks_per_worker_replaces_worker_processes():
    with shoal.Pool(1, max_tasks_per_worker=2) as p:
        pids = [p.apply(h.getpid) for _ in range(6)]
    assert len(set(pids)) == 3, pids


@pytest.mark.parametrize("bad", [0, -2])
def test_processes_zero_or_negative_is_a_value_error(backend, bad):
    with pytest.raises(ValueError):
        shoal.Pool(bad, backend=backend)


# ------------------------------------------------------------------ multiprocessing's names
MP_SURFACE = ("shoal.Pool (python/shoal/pool.py) lacks part of multiprocessing.Pool's surface: "
              "no map_async/starmap_async, and the constructor takes workers=/"
              "max_tasks_per_worker= but not multiprocessing's processes=/maxtasksperchild=")


def test_constructor_accepts_multiprocessing_keyword_names(backend):
    p = shoal.Pool(processes=2, initializer=_init, initargs=(1,), maxtasksperchild=5,
                   backend=backend)
    try:
        assert p.map(_read_init, range(4)) == [2] * 4
    finally:
        p.terminate()


def test_map_async_and_starmap_async(pool):
    got = []
    r = pool.map_async(h.square, range(5), callback=got.append)
    assert r.get(timeout=60) == [0, 1, 4, 9, 16]
    assert pool.starmap_async(h.add3, [(1, 2, 3)]).get(timeout=60) == [6]
    r.wait(30)
    assert got == [[0, 1, 4, 9, 16]]


# ------------------------------------------------------------------ course patterns
def _calculate_sum(values):
    return sum(values)


def test_course_dataframe_chunked_mean(pool):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"ID": range(1, 10001), "Value": range(3, 20002, 2)})
    chunk = 1000
    chunks = [df["Value"][i:i + chunk] for i in range(0, len(df["Value"]), chunk)]
    results = pool.map(_calculate_sum, chunks)
    assert len(results) == 10
    assert sum(results) / len(df) == pytest.approx(df["Value"].mean())


def _partial_integral(args):
    n, start, stop = args
    h_ = math.pi / n
    s = 0.0
    for i in range(start, stop):
        x = h_ * (i + 0.5)
        for j in range(n):
            s += math.sin(x + h_ * (j + 0.5))
    return s


def test_course_integration_with_partial_sums(pool):
    n, parts = 400, 4
    bounds = [(n, k * n // parts, (k + 1) * n // parts) for k in range(parts)]
    partial = pool.map(_partial_integral, bounds)
    integral = (math.pi / n) ** 2 * sum(partial)
    serial = (math.pi / n) ** 2 * _partial_integral((n, 0, n))
    assert abs(integral) < 1e-10
    assert integral == pytest.approx(serial, abs=1e-12)
    # the starmap / apply_async variants of the same thing
    star = pool.starmap(lambda n_, a, b: _partial_integral((n_, a, b)), bounds)
    assert sum(star) == pytest.approx(sum(partial), abs=1e-9)
    rs = [pool.apply_async(_partial_integral, (b,)) for b in bounds]
    assert sum(r.get(timeout=60) for r in rs) == pytest.approx(sum(partial), abs=1e-9)


def test_terminate_from_another_thread_ends_a_blocked_map(backend):
    p = shoal.Pool(2, backend=backend)
    out = {}
    started = threading.Event()

    def run():
        started.set()
        try:
            out["result"] = p.map(h.sleep_return, [20] * 6, chunksize=1)
        except BaseException as exc:  # noqa: BLE001 - checked below
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    started.wait(30)
    time.sleep(0.5)
    p.terminate()
    t.join(60)
    assert not t.is_alive(), "map() still blocked after terminate()"
    assert "result" not in out and isinstance(out["error"], shoal.BrokenPool), out
    p.join()


# ------------------------------------------------------------------ drop-in details
def test_initializer_and_initargs_are_positional_as_in_multiprocessing(backend):
    with shoal.Pool(2, _init, (10,), 5, None, backend=backend) as p:
        assert p.map(_read_init, range(4)) == [11] * 4


@pytest.mark.parametrize("how", ["close", "terminate"])
def test_with_on_a_closed_or_terminated_pool_is_a_value_error(backend, how):
    p = shoal.Pool(2, backend=backend)
    getattr(p, how)()
    p.join()
    with pytest.raises(ValueError, match="not running"):
        with p:
            pass  # pragma: no cover


class _SourceBroke(Exception):
    pass


def _breaks_after(k):
    for i in range(k):
        yield i
    raise _SourceBroke(f"after {k}")


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
@pytest.mark.parametrize("chunksize", [1, 2])
def test_imap_over_an_iterable_that_raises_yields_the_results_before_it(pool, method, chunksize):
    it = getattr(pool, method)(h.square, _breaks_after(5), chunksize)
    got = []
    with pytest.raises(_SourceBroke, match="after 5"):
        for x in it:
            got.append(x)
    assert sorted(got) == [0, 1, 4, 9, 16]


def test_map_over_an_iterable_that_raises_raises_its_error(pool):
    with pytest.raises(_SourceBroke):
        pool.map(h.square, _breaks_after(3))


@pytest.mark.parametrize("bad", ["12", 1.5, True, 0, -1])
def test_max_tasks_per_worker_of_a_wrong_type_or_value_is_a_value_error(backend, bad):
    with pytest.raises(ValueError, match="positive int"):
        shoal.Pool(2, maxtasksperchild=bad, backend=backend)
    with pytest.raises(ValueError, match="positive int"):
        shoal.Pool(2, max_tasks_per_worker=bad, backend=backend)
    with pytest.raises(ValueError, match="positive int"):
        shoal.Executor(2, max_tasks_per_worker=bad, backend=backend)
    if not isinstance(bad, bool):  # (multiprocessing takes True for 1)
        with pytest.raises(ValueError):  # multiprocessing says the same
            multiprocessing.Pool(2, maxtasksperchild=bad)


def test_a_running_pool_collected_without_close_warns(backend):
    import gc
    import warnings

    p = shoal.Pool(2, backend=backend)
    assert p.map(h.square, [3]) == [9]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del p
        gc.collect()
    assert [w.category for w in caught if "unclosed running" in str(w.message)] == \
        [ResourceWarning]
    # A closed one does not.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with shoal.Pool(2, backend=backend) as q:
            q.map(h.square, [1])
        del q
        gc.collect()
    assert not [w for w in caught if "unclosed" in str(w.message)]


def test_a_multiprocessing_context_is_accepted(backend):
    with shoal.Pool(2, context=multiprocessing.get_context("spawn"), backend=backend) as p:
        assert p.map(h.square, [4]) == [16]


def _pickle_error_type(obj):
    import pickle

    try:
        pickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    raise AssertionError(f"{obj!r} pickled")


# Backends that pickle arguments and results (threads pass them by reference).
PICKLING = ["processes"]


@pytest.mark.parametrize("backend", PICKLING)
@pytest.mark.parametrize("kind", ["lock", "generator", "queue", "refuses"])
def test_an_argument_that_cannot_be_pickled_raises_the_pickling_errors_own_type(backend, kind):
    bad = h.make_unpicklable(kind)
    expected = _pickle_error_type(bad)
    with shoal.Pool(2, backend=backend) as p:
        with pytest.raises(expected) as info:
            p.apply(h.identity, (bad,))
        assert isinstance(info.value, shoal.SerializationError)
        assert type(bad).__name__ in str(info.value)  # names the object
        with pytest.raises(expected):
            p.map(h.identity, [1, bad, 3], chunksize=1)
        assert p.map(h.square, [5]) == [25]  # the pool goes on


@pytest.mark.parametrize("backend", PICKLING)
@pytest.mark.parametrize("kind", ["lock", "generator", "refuses"])
def test_a_result_that_cannot_be_pickled_raises_the_pickling_errors_own_type(backend, kind):
    expected = _pickle_error_type(h.make_unpicklable(kind))
    with shoal.Pool(2, backend=backend) as p:
        with pytest.raises(expected) as info:
            p.apply(h.return_unpicklable, (kind,))
        assert isinstance(info.value, shoal.SerializationError)
        assert p.map(h.square, [5]) == [25]


def test_a_lambda_result_travels_back_unlike_multiprocessing(backend):
    # multiprocessing cannot send a lambda back (PicklingError); shoal can.
    with shoal.Pool(2, backend=backend) as p:
        add = p.apply(h.make_adder, (3,))
    assert add(4) == 7
