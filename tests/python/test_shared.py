"""shoal.shared: numpy arrays in shared memory, by reference, with real
processes (multiprocessing spawn workers, fresh interpreters, SIGKILL) and
lifetimes checked in /dev/shm."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import shoal
from shoal import _serialize as S
from shoal import shared


def exists(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


# Module-level so that spawn workers import them by name.
def write_row(args):
    arr, i = args
    arr[...] = i + 1.0  # arr is this task's row: same memory as the driver's
    return os.getpid()


def partial_sum(args):
    arr, out, k = args
    out[k] = arr.sum()
    return k


def attach_info(refs):
    """In a worker: map the same array many times; report mappings made."""
    total = 0.0
    for r in refs:
        total += float(r[0])
    name = refs[0].segment_name
    with open("/proc/self/maps") as f:
        maps = sum(1 for line in f if name in line)
    return total, len(shared._ATTACHED), maps


@pytest.fixture(scope="module")
def spawn_pool():
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        yield pool


# -------------------------------------------------------------------- creation

def test_creators():
    a = shared.zeros((3, 4))
    assert isinstance(a, shared.SharedArray) and isinstance(a, np.ndarray)
    assert a.shape == (3, 4) and a.dtype == np.float64 and not a.any()
    b = shared.full(5, 7, dtype=np.int32)
    assert b.dtype == np.int32 and (b == 7).all()
    c = shared.full((2, 2), 2.5)
    assert c.dtype == np.float64 and (c == 2.5).all()
    e = shared.empty((2, 3), dtype="f4", order="F")
    assert e.flags.f_contiguous and e.dtype == np.float32
    src = np.arange(12.0).reshape(3, 4)
    d = shared.copy(src)
    np.testing.assert_array_equal(d, src)
    assert d.segment_name != a.segment_name
    f = shared.copy(np.asfortranarray(src))
    assert f.flags.f_contiguous
    z = shared.zeros(0)
    assert z.size == 0 and pickle.loads(pickle.dumps(z)).size == 0
    s = shared.zeros(())
    s[()] = 3
    assert pickle.loads(pickle.dumps(s))[()] == 3
    assert shared.SharedArray is shoal.shared.SharedArray


@pytest.mark.parametrize("layout", ["C", "F", "strided", "C->F", "F->C", "structured"])
def test_big_copies_are_exact_in_every_layout(layout):
    """Copies of 64 KiB and more are written through the segment's file
    (pwrite) when the source is contiguous in the wanted order, else element
    by element; both give the same array."""
    rng = np.random.default_rng(7)
    src = rng.random((300, 400))  # 960 KB
    if layout == "F":
        src, order, want = np.asfortranarray(src), "K", "F"
    elif layout == "strided":
        src, order, want = src[:, ::3], "K", "C"
    elif layout == "C->F":
        order, want = "F", "F"
    elif layout == "F->C":
        src, order, want = np.asfortranarray(src), "C", "C"
    elif layout == "structured":
        src = np.zeros(50_000, dtype=[("a", "i4"), ("b", "f8")])
        src["a"], src["b"] = np.arange(50_000), rng.random(50_000)
        order, want = "K", "C"
    else:
        order, want = "K", "C"
    d = shared.copy(src, order=order)
    np.testing.assert_array_equal(d, src)
    assert d.dtype == src.dtype
    assert d.flags.f_contiguous if want == "F" else d.flags.c_contiguous
    # What a worker maps (a second mapping of the segment) holds the same bytes.
    from shoal import _core

    other = _core.SharedSegment.attach(d.segment_name).view()
    flat = d.reshape(-1, order="A").view(np.uint8)
    assert bytes(other[: flat.nbytes]) == flat.tobytes()


def test_structured_dtype():
    dt = np.dtype([("x", "<f8"), ("n", "<i4")])
    a = shared.zeros(10, dtype=dt)
    a["x"] = np.arange(10)
    b = pickle.loads(pickle.dumps(a))
    assert b.dtype == dt and (b["x"] == np.arange(10)).all()


@pytest.mark.parametrize("dtype", [object, "O", np.dtype([("a", "O")]), "not-a-dtype", 3.5])
def test_bad_dtype(dtype):
    with pytest.raises(TypeError, match="shoal.shared"):
        shared.zeros(4, dtype=dtype)


@pytest.mark.parametrize("shape,exc", [((-1,), ValueError), ((2, -3), ValueError),
                                       ((2.5,), TypeError), ("abc", TypeError),
                                       (None, TypeError)])
def test_bad_shape(shape, exc):
    with pytest.raises(exc, match="shoal.shared"):
        shared.empty(shape)


def test_bad_order():
    with pytest.raises(ValueError, match="order"):
        shared.empty(3, order="X")


# ----------------------------------------------------------- numpy semantics

def test_new_arrays_are_plain_ndarrays():
    a = shared.full((4, 4), 2.0)
    for r in [a + 1, a * a, np.sin(a), a.copy(), a.astype(np.float32),
              np.concatenate([a, a]), np.stack([a, a]), a @ a, -a, a[a > 1]]:
        assert type(r) is np.ndarray, type(r)
    assert type(a.sum()) is np.float64 and a.sum() == 32.0
    assert type(np.mean(a, axis=0)) is np.ndarray
    # views stay shared
    for v in [a[1:], a.T, a[:, ::2], a.reshape(16), a.view(np.int64), a[None]]:
        assert type(v) is shared.SharedArray and v.segment_name == a.segment_name
    # in place with out= writes into the shared memory and returns it
    r = np.add(a, 1, out=a)
    assert r is a and (a == 3.0).all()
    a += 1
    assert type(a) is shared.SharedArray and (a == 4.0).all()


def test_private_subclass_instance_pickles_by_value():
    a = shared.zeros((4, 6))
    a[:] = np.arange(24).reshape(4, 6)
    b = a[:, :3].reshape(-1)  # not expressible as a view: numpy copies
    assert not np.shares_memory(a, b)
    data = pickle.dumps(b)
    out = pickle.loads(data)
    np.testing.assert_array_equal(out, a[:, :3].ravel())
    assert type(out) is np.ndarray


# ------------------------------------------------------------ by reference

def test_pickles_by_reference_in_a_few_bytes():
    a = shared.zeros(10_000_000)  # 80 MB
    data = pickle.dumps(a[10:20], protocol=5)
    assert len(data) < 400
    v = pickle.loads(data)
    v[:] = 5.0  # same process: the creator's own mapping
    assert (a[10:20] == 5.0).all() and a[9] == 0 and a[20] == 0


@pytest.mark.parametrize("make", [
    lambda a: a[2:7, 1:9:3],
    lambda a: a[::-1, ::-2],
    lambda a: a.T,
    lambda a: a[3],
    lambda a: a[:, 4],
    lambda a: a[5, 5:5],
])
def test_views_round_trip_by_reference(make):
    a = shared.copy(np.arange(100.0).reshape(10, 10))
    v = make(a)
    p = S.dumps(v)
    assert not p.segments and p.nbytes_out_of_band == 0
    w = S.loads(p.data)
    np.testing.assert_array_equal(w, v)
    assert w.strides == v.strides
    assert w.__array_interface__["data"][0] == v.__array_interface__["data"][0]


def test_read_only_view_stays_read_only():
    a = shared.zeros(10)
    v = a[2:5]
    v.flags.writeable = False
    w = pickle.loads(pickle.dumps(v))
    assert not w.flags.writeable


def test_workers_write_into_their_slices(spawn_pool):
    """Real processes (spawn) write rows of the driver's array: zero-copy."""
    a = shared.zeros((4, 100_000))
    pids = spawn_pool.map(write_row, [(a[i], i) for i in range(4)], chunksize=1)
    assert os.getpid() not in pids
    for i in range(4):
        assert (a[i] == i + 1.0).all()


def test_partial_sums_like_the_course(spawn_pool):
    data = shared.copy(np.arange(1_000_000, dtype=np.float64))
    sums = shared.zeros(4)
    chunks = np.array_split(np.arange(data.size), 4)
    spawn_pool.map(partial_sum, [(data[c[0]:c[-1] + 1], sums, k) for k, c in enumerate(chunks)],
                   chunksize=1)
    assert sums.sum() == data.sum()


def test_receiver_maps_a_segment_once(spawn_pool):
    a = shared.copy(np.arange(1000.0))
    refs = [a[i:i + 1] for i in range(1000)]
    total, n_attached, n_maps = spawn_pool.apply(attach_info, (refs,))
    assert total == float(np.arange(1000.0).sum())
    assert n_maps == 1  # 1000 references, one mapping
    # and across tasks the worker keeps using the cached mapping
    total2, _, n_maps2 = spawn_pool.apply(attach_info, (refs[:10],))
    assert n_maps2 == 1


# --------------------------------------------------------------------- lifetime

def test_unlinked_when_last_array_collected():
    a = shared.zeros(1000)
    name = a.segment_name
    v = a[10:20]
    assert exists(name)
    del a
    gc.collect()
    assert exists(name)  # the view keeps it
    v[:] = 1
    del v
    gc.collect()
    assert not exists(name)


def test_payload_keeps_a_referenced_array_alive():
    a = shared.zeros(1000)
    name = a.segment_name
    p = S.dumps((write_row, ((a[3:4], 1),), {}))
    del a
    gc.collect()
    assert exists(name)  # in flight: the payload holds it
    fn, args, _ = S.loads(p.data)
    fn(*args)
    assert args[0][0][0] == 2.0
    del p, fn, args
    gc.collect()
    assert not exists(name)


def test_segment_gone_is_a_clear_error():
    a = shared.zeros(10)
    data = pickle.dumps(a)
    name = a.segment_name
    del a
    gc.collect()
    assert not exists(name)
    with pytest.raises(shared.SegmentGone, match="is gone"):
        pickle.loads(data)
    # and in a fresh process
    code = (f"import pickle, sys; from shoal import shared\n"
            f"try:\n    pickle.loads({data!r})\n"
            f"except shared.SegmentGone as e:\n    print('gone', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("gone"), r.stderr


def test_survives_a_worker_being_killed(tmp_path):
    a = shared.copy(np.arange(1000.0))
    data = pickle.dumps(a[100:200])
    code = textwrap.dedent(f"""
        import os, pickle, signal, sys
        v = pickle.loads({data!r})
        v[:] = -1.0
        print("attached", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL and "attached" in r.stdout
    assert (a[100:200] == -1.0).all() and a[99] == 99.0 and a[200] == 200.0
    assert exists(a.segment_name)  # a receiver dying never removes the creator's name
    # a fresh receiver still attaches
    code2 = f"import pickle; print(float(pickle.loads({data!r}).sum()))"
    r2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, timeout=60)
    assert float(r2.stdout) == -100.0


def test_creator_killed_leaves_a_sweepable_segment(tmp_path):
    code = textwrap.dedent("""
        import os, signal
        from shoal import shared
        a = shared.zeros(1000)
        print(a.segment_name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    name = r.stdout.strip()
    assert r.returncode == -signal.SIGKILL and name.startswith("/shoal.")
    # (another shoal process starting a pool meanwhile may have swept it already)
    shoal._core.sweep_orphan_segments()
    assert not exists(name)


def test_trim_mappings_drops_dead_segments():
    code = textwrap.dedent("""
        import pickle, sys
        from shoal import shared
        data = sys.stdin.buffer.read()
        v = pickle.loads(data)
        assert len(shared._ATTACHED) == 1
        del v
        print("waiting", flush=True)
        sys.stdin.close()
        import time
        t0 = time.time()
        while shared.trim_mappings() == 0 and time.time() - t0 < 30:
            time.sleep(0.05)
        print(len(shared._ATTACHED), flush=True)
    """)
    a = shared.zeros(1000)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=False)
    proc.stdin.write(pickle.dumps(a))
    proc.stdin.close()
    assert proc.stdout.readline().strip() == b"waiting"
    del a
    gc.collect()
    out = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert out.strip() == b"0"


# ------------------------------------------------------------- with shoal.Pool

def _has_pool() -> bool:
    try:
        import shoal.pool  # noqa: F401
        return True
    except ImportError:
        return False


needs_pool = pytest.mark.skipif(not _has_pool(), reason="shoal.Pool is not built")


def fill_block(a, value):
    a[...] = value
    return os.getpid()


def die_or_fill(a, value):
    if value < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    a[...] = value
    return value


def echo(x):
    return x


@needs_pool
@pytest.mark.timeout(120)
def test_pool_tasks_write_into_their_slices():
    a = shared.zeros((8, 50_000))
    with shoal.Pool(2) as pool:
        pids = pool.starmap(fill_block, [(a[i], i + 1) for i in range(8)], chunksize=1)
        assert os.getpid() not in pids
        for i in range(8):
            assert (a[i] == i + 1).all()
        # many tasks over one array: workers map it once (cached), all writes land
        pool.starmap(fill_block, [(a[i, j:j + 1000], -1.0) for i in range(8)
                                  for j in range(0, 50_000, 1000)])
        assert (a == -1.0).all()


@needs_pool
@pytest.mark.timeout(120)
def test_pool_survives_a_worker_killed_mid_task_on_a_shared_array():
    a = shared.zeros(4)
    with shoal.Pool(2) as pool:
        bad = pool.apply_async(die_or_fill, (a[0:1], -1))
        with pytest.raises(shoal.WorkerLost):
            bad.get(timeout=60)
        # the memory and the name survive; the replacement worker attaches it
        assert exists(a.segment_name)
        assert pool.starmap(die_or_fill, [(a[i:i + 1], i + 1) for i in range(4)]) == [1, 2, 3, 4]
    assert list(a) == [1.0, 2.0, 3.0, 4.0]


@needs_pool
@pytest.mark.timeout(120)
def test_pool_big_arguments_and_results_travel_out_of_band():
    big = np.arange(2_000_000, dtype=np.float64)  # 16 MB
    S.clear_segment_cache()
    before = set(os.listdir("/dev/shm"))
    with shoal.Pool(2) as pool:
        pids = {os.getpid()} | set(pool.map(_pid, range(8),
                                            chunksize=1))
        for _ in range(3):  # the second and third reuse recycled segments
            out = pool.apply(echo, (big,))
            np.testing.assert_array_equal(out, big)
        res = pool.map(echo, [big[i::4] for i in range(4)], chunksize=1)
        for i in range(4):
            np.testing.assert_array_equal(res[i], big[i::4])
    del out, res
    gc.collect()
    S.clear_segment_cache()
    # nothing this test's processes created is left: argument segments were
    # recycled then unlinked, result segments adopted (unlinked) by the driver
    left = [n for n in set(os.listdir("/dev/shm")) - before
            if n.startswith("shoal.") and int(n.split(".")[1]) in pids]
    assert left == []


def _pid(_):
    return os.getpid()


@needs_pool
@pytest.mark.timeout(120)
def test_pool_unpicklable_argument_is_named_and_pool_goes_on():
    import threading

    with shoal.Pool(2) as pool:
        fut = pool.apply_async(echo, ({"lock": threading.Lock()},))
        with pytest.raises(shoal.SerializationError, match=r"_thread.lock.*\['lock'\]"):
            fut.get(timeout=60)
        assert pool.apply(echo, (5,)) == 5


def _sleep_then(seconds, value):
    import time as _time

    _time.sleep(seconds)
    return value


def _first(a):
    return float(a[0])


@needs_pool
@pytest.mark.timeout(120)
def test_pool_keeps_a_submitted_shared_array_alive_until_the_worker_has_it():
    with shoal.Pool(1) as pool:
        busy = pool.apply_async(_sleep_then, (1.0, 0))  # the only worker is busy
        a = shared.full(10, 7.0)
        fut = pool.apply_async(_first, (a,))
        del a  # the user lets go before the worker has attached the array
        gc.collect()
        assert busy.get(timeout=60) == 0
        assert fut.get(timeout=60) == 7.0


def _make_shared(n, value):
    a = shared.full(n, value)
    return a[1:]  # a view: its segment travels with it


@needs_pool
@pytest.mark.timeout(120)
def test_pool_task_creates_and_returns_a_shared_array():
    with shoal.Pool(2) as pool:
        r = pool.apply(_make_shared, (1000, 4.0))
        assert type(r) is shared.SharedArray and r.shape == (999,) and (r == 4.0).all()
        name = r.segment_name
        assert exists(name)  # handed over: the worker's exit does not remove it
        r[:] = 5.0
        # the driver now owns it: passing it to another task is by reference
        assert pool.apply(_first, (r,)) == 5.0
        many = pool.starmap(_make_shared, [(10, float(i)) for i in range(20)])
        assert [float(x[0]) for x in many] == [float(i) for i in range(20)]
    del r
    gc.collect()
    assert not exists(name)  # unlinked with the driver's last array
    names = [m.segment_name for m in many]
    del many
    gc.collect()
    assert not any(exists(n) for n in names)


def test_release_and_adopt_hand_over_ownership_in_process():
    a = shared.zeros(10)
    name = a.segment_name
    p = S.dumps(a[2:4])
    assert p.keepalive and p.keepalive[0].name == name
    p.release_names()
    assert not a._shoal_seg.seg.owns_name
    # same process: resolves to its own mapping, and owning stays with nobody
    # else; clean up by hand
    a._shoal_seg.seg.adopt_name()
    del a, p
    gc.collect()
    assert not exists(name)
