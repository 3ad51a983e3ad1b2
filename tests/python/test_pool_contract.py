"""The public contract of shoal.Pool and shoal.Executor: one test body per
behaviour, run once per backend ("processes"; "threads" when
shoal._backend_threads exists)."""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import itertools
import time

import pytest

import shoal
from pool_helpers import add, fail_on, raise_value_error, sleep_return, square

pytestmark = pytest.mark.timeout(120)


def _threads_available() -> bool:
    return importlib.util.find_spec("shoal._backend_threads") is not None


@pytest.fixture(params=["processes", "threads"], scope="module")
def backend(request):
    if request.param == "threads" and not _threads_available():
        pytest.skip("shoal._backend_threads is not in this tree")
    return request.param


@pytest.fixture(scope="module")
def pool(backend):
    p = shoal.Pool(2, backend=backend)
    yield p
    p.terminate()


@pytest.fixture(scope="module")
def executor(backend):
    ex = shoal.Executor(2, backend=backend)
    yield ex
    ex.shutdown(wait=True)


def test_map_returns_a_list_in_order(pool):
    assert pool.map(square, range(1000)) == [i * i for i in range(1000)]
    for chunksize in (1, 3, 1000, 5000):
        assert pool.map(square, range(1000), chunksize) == [i * i for i in range(1000)]
    assert pool.map(square, []) == []


def test_map_accepts_generators_of_unknown_length(pool):
    assert pool.map(square, (i for i in range(300))) == [i * i for i in range(300)]


def test_imap_is_lazy_and_ordered(pool):
    it = pool.imap(square, itertools.count(), chunksize=1)
    assert [next(it) for _ in range(50)] == [i * i for i in range(50)]
    it.close()


def test_imap_unordered_yields_everything(pool):
    assert sorted(pool.imap_unordered(square, range(500), chunksize=1)) == \
        [i * i for i in range(500)]


def test_starmap_and_apply(pool):
    assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(add, (2, 5)) == 7
    assert pool.apply(sleep_return, (0, "v")) == "v"


def test_apply_async_callbacks(pool):
    got, errs = [], []
    r1 = pool.apply_async(square, (4,), callback=got.append)
    r2 = pool.apply_async(raise_value_error, ("x",), error_callback=errs.append)
    assert r1.get(timeout=30) == 16
    r2.wait(timeout=30)
    assert r1.ready() and r1.successful() and not r2.successful()
    deadline = time.monotonic() + 10
    while (not got or not errs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == [16] and isinstance(errs[0], ValueError)


def test_exception_in_task_is_reraised_with_same_type(pool):
    with pytest.raises(ValueError, match="nope"):
        pool.apply(raise_value_error, ("nope",))
    with pytest.raises(KeyError):
        pool.starmap(fail_on, [(i, 7) for i in range(20)], chunksize=1)
    with pytest.raises(KeyError):
        pool.starmap(fail_on, [(i, 7) for i in range(20)], chunksize=5)
    assert pool.map(square, [3]) == [9]  # the pool is fine afterwards


def test_lambdas_and_closures(pool):
    k = 10
    assert pool.map(lambda x: x + k, range(5)) == [10, 11, 12, 13, 14]
    assert pool.apply(lambda: "lam") == "lam"


def test_executor_is_a_real_executor(executor):
    assert isinstance(executor, cf.Executor)
    futs = [executor.submit(square, i) for i in range(100)]
    assert all(isinstance(f, cf.Future) for f in futs)
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=60)) == \
        sorted(i * i for i in range(100))
    done, not_done = cf.wait(futs, timeout=60)
    assert len(done) == 100 and not not_done
    assert executor.submit(sleep_return, 0, value=3).result() == 3


def test_executor_map_with_several_iterables_and_timeout(executor):
    assert list(executor.map(add, range(5), range(5))) == [0, 2, 4, 6, 8]
    assert list(executor.map(square, range(100), chunksize=7)) == [i * i for i in range(100)]
    with pytest.raises(cf.TimeoutError):
        list(executor.map(sleep_return, [5, 5], timeout=0.2))


def test_executor_future_exception(executor):
    fut = executor.submit(raise_value_error, "bad")
    assert isinstance(fut.exception(timeout=30), ValueError)
    with pytest.raises(ValueError):
        fut.result()


def test_executor_shutdown_cancel_futures(backend):
    ex = shoal.Executor(1, backend=backend)
    first = ex.submit(sleep_return, 0.3, "done")
    # Only a started task is sure to survive cancel_futures (a queued one is
    # cancelled, as in concurrent.futures): wait until a thread took it.
    deadline = time.monotonic() + 30
    while not (first.running() or first.done()) and time.monotonic() < deadline:
        time.sleep(0.001)
    rest = [ex.submit(sleep_return, 0.3, i) for i in range(20)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == "done"
    # some of the queued ones were cancelled rather than run
    assert all(f.done() for f in rest)
    with pytest.raises(RuntimeError):
        ex.submit(square, 2)


def test_pool_close_join_and_context_manager(backend):
    with shoal.Pool(2, backend=backend) as p:
        results = [p.apply_async(square, (i,)) for i in range(10)]
    assert [r.get(timeout=30) for r in results] == [i * i for i in range(10)]
    p2 = shoal.Pool(2, backend=backend)
    r = p2.apply_async(sleep_return, (0.2, "x"))
    p2.close()
    p2.join()
    assert r.get(timeout=0) == "x"
    with pytest.raises(ValueError):
        p2.apply(square, (1,))


def test_default_workers(backend):
    with shoal.Pool(backend=backend) as p:
        assert p.workers == shoal.default_workers()
        assert p.map(square, range(3)) == [0, 1, 4]


def test_submit_from_many_threads_at_once(executor):
    import threading

    barrier = threading.Barrier(4)
    out = {}

    def client(k):
        barrier.wait()
        futs = [executor.submit(add, k * 1000, i) for i in range(300)]
        out[k] = [f.result(timeout=60) for f in futs]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {k: [k * 1000 + i for i in range(300)] for k in range(4)}


def test_done_callbacks_may_submit_more_work(executor):
    import threading

    done = threading.Event()
    results = []

    def chain(fut):
        results.append(fut.result())
        if len(results) < 5:
            executor.submit(add, fut.result(), 1).add_done_callback(chain)
        else:
            done.set()

    executor.submit(add, 0, 1).add_done_callback(chain)
    assert done.wait(60)
    assert results == [1, 2, 3, 4, 5]


def test_map_propagates_errors_of_the_input_iterable(pool):
    def items():
        yield 1
        yield 2
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        pool.map(square, items(), chunksize=1)
    assert pool.map(square, [4]) == [16]


def test_progress_bar(pool, capsys):
    assert pool.map(square, range(50), progress=True) == [i * i for i in range(50)]
    assert sorted(pool.imap_unordered(square, range(20), progress=True)) == \
        sorted(i * i for i in range(20))
    err = capsys.readouterr().err
    assert "50/50" in err and "20/20" in err


@pytest.mark.parametrize("n,workers", [(64, 2), (65, 2), (1000, 2), (200_000, 2), (4097, 3),
                                       (10_000, 16)])
def test_guided_chunks_cover_every_item_once_and_shrink(n, workers):
    from shoal._mapping import auto_chunksize, guided_chunks

    chunks = list(guided_chunks(range(n), n, workers))
    assert [x for c in chunks for x in c] == list(range(n))
    sizes = [len(c) for c in chunks]
    assert sizes[0] == auto_chunksize(n, workers)  # no more overhead than fixed chunks at first
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)  # then smaller and smaller
    assert min(sizes[:-1] or sizes) == max(1, -(-n // (32 * workers)))
    assert len(chunks) <= 32 * workers + 1


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000, 4097])
@pytest.mark.parametrize("kind", [range, list, tuple])
def test_automatic_chunks_keep_every_result_in_order(pool, executor, n, kind):
    items = range(n) if kind is range else kind(range(n))
    want = [x * x for x in range(n)]
    assert pool.map(square, items) == want
    assert list(pool.imap(square, items)) == want
    assert sorted(pool.imap_unordered(square, items)) == want
    assert pool.map_async(square, items).get(timeout=60) == want
    assert list(executor.map(square, items)) == want


def test_fixed_chunks_when_guided_ones_are_turned_off(pool, monkeypatch):
    monkeypatch.setenv("SHOAL_GUIDED", "0")
    assert pool.map(square, range(5000)) == [x * x for x in range(5000)]
    assert pool.map_async(square, range(5000)).get(timeout=60) == [x * x for x in range(5000)]
