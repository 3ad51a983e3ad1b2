"""shoal._serialize: round trips, out-of-band buffers through real shared
memory, by-value functions across real fresh interpreters, clear errors,
and segment lifetimes checked in /dev/shm."""

from __future__ import annotations

import collections
import datetime
import decimal
import fractions
import functools
import gc
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import pytest

import shoal
from shoal import _serialize as S


@pytest.fixture(autouse=True)
def fresh_segment_cache():
    S.clear_segment_cache()
    yield
    gc.collect()
    S.clear_segment_cache()


def roundtrip(obj, **kw):
    p = S.dumps(obj, **kw)
    return S.loads(p.data), p


def shm_exists(seg) -> bool:
    return os.path.exists("/dev/shm" + seg.name)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


def square(x):
    return x * x


def mapping_of(address: int) -> str | None:
    """The file mapped at ``address`` in this process (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5].strip().removesuffix(" (deleted)") if len(parts) > 5 else None
    return None


# ------------------------------------------------------------------ round trips

PLAIN = [
    None, True, False, 0, -1, 2**200, 1.5, float("inf"), complex(1, -2), "", "héllo ✓",
    b"", b"\x00\xff" * 10, bytearray(b"abc"), (), (1, (2, (3,))), [1, [2, [3]]],
    {"a": 1, 2: [3]}, {1, 2, 3}, frozenset({4}), range(3, 30, 4), slice(1, 9, 2),
    collections.OrderedDict(a=1), collections.Counter("hello"), decimal.Decimal("1.25"),
    fractions.Fraction(3, 7), datetime.datetime(2024, 1, 2, 3, 4, 5), uuid.UUID(int=42),
    Point(1, 2), square, functools.partial(square, 3), ValueError("boom"),
    "x" * 1_000_000, list(range(10_000)), bytearray(b"xyz" * 200_000),
]


@pytest.mark.parametrize("obj", PLAIN, ids=lambda o: type(o).__name__)
def test_plain_round_trip(obj):
    out, p = roundtrip(obj)
    if isinstance(obj, ValueError):
        assert type(out) is ValueError and out.args == obj.args
    elif isinstance(obj, functools.partial):
        assert out() == obj() == 9
    else:
        assert out == obj
    assert p.segments == [] and p.nbytes_out_of_band == 0


def test_small_object_is_a_bare_pickle():
    # the fast path: no header, no segment, readable by plain pickle
    p = S.dumps((square, (3,), {}))
    assert bytes(p.data[:1]) == b"\x80" and not p.segments
    fn, args, kwargs = pickle.loads(p.data)
    assert fn(*args, **kwargs) == 9


ALL_DTYPES = [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
              np.int64, np.uint64, np.float16, np.float32, np.float64, np.longdouble,
              np.complex64, np.complex128, np.clongdouble, "M8[ns]", "m8[s]", "S7", "U5",
              np.dtype([("a", "<i4"), ("b", "<f8", (2,))])]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("n", [0, 5, 100_000])
def test_numpy_dtypes(dtype, n):
    a = np.zeros(n, dtype=dtype)
    if n:
        a.view(np.uint8)[:] = np.arange(a.nbytes, dtype=np.uint64).astype(np.uint8)
    out, p = roundtrip(a)
    assert out.dtype == a.dtype and out.shape == a.shape
    assert out.tobytes() == a.tobytes()
    if a.dtype.kind in "mM":
        pass  # numpy exports no buffer for datetimes: they go in band
    elif a.nbytes >= S.OUT_OF_BAND_THRESHOLD:
        assert p.nbytes_out_of_band == a.nbytes and len(p.segments) == 1
    else:
        assert p.nbytes_out_of_band == 0 and not p.segments


def test_object_array_goes_in_band():
    a = np.array([{"k": 1}, None, "s", [1, 2]] * 10_000, dtype=object)
    out, p = roundtrip(a)
    assert out.dtype == object and list(out) == list(a) and not p.segments


def test_zero_dim_and_scalars():
    for x in [np.array(3.5), np.array(7, dtype=np.int8), np.float32(2.5), np.int64(-3)]:
        out, _ = roundtrip(x)
        assert out == x and type(out) is type(x) and np.shape(out) == np.shape(x)


def test_non_contiguous_and_fortran():
    base = np.arange(2_000_000, dtype=np.float64).reshape(1000, 2000)
    for a in [base[::3, 1::7], base.T, np.asfortranarray(base), base[::-1, ::-2]]:
        out, _ = roundtrip(a)
        np.testing.assert_array_equal(out, a)
        assert out.flags.f_contiguous == a.flags.f_contiguous or not a.flags.contiguous
    out, p = roundtrip(np.asfortranarray(base))
    assert out.flags.f_contiguous and p.nbytes_out_of_band == base.nbytes


def test_big_array_comes_back_as_a_view_on_shared_memory():
    a = np.random.default_rng(0).random(1_000_000)
    out, p = roundtrip(a)
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable
    # the memory lies in this process's mapping of the payload's segment
    ptr = out.__array_interface__["data"][0]
    assert mapping_of(ptr) == "/dev/shm" + p.segments[0].name
    out[0] = 42.0  # writable, and independent of the sender's array
    assert a[0] != 42.0


def test_many_buffers_share_one_segment_and_small_ones_stay_inline():
    big = [np.full(40_000, i, dtype=np.float64) for i in range(5)]  # 320 kB each
    small = [np.full(10, i) for i in range(5)]
    out, p = roundtrip({"big": big, "small": small})
    assert len(p.segments) == 1
    assert p.nbytes_out_of_band == sum(b.nbytes for b in big)
    for a, b in zip(big + small, out["big"] + out["small"]):
        np.testing.assert_array_equal(a, b)
    # aligned for every dtype
    for b in out["big"]:
        assert b.__array_interface__["data"][0] % 64 == 0


def test_threshold_is_a_parameter():
    a = np.ones(100)
    _, p = roundtrip(a, threshold=64)
    assert p.nbytes_out_of_band == a.nbytes
    _, p = roundtrip(np.ones(100_000), threshold=10**9)
    assert p.nbytes_out_of_band == 0


def test_huge_array_one_copy():
    a = np.ones(64 * 2**20 // 8)  # 64 MiB
    out, p = roundtrip(a)
    assert p.nbytes_out_of_band == a.nbytes
    assert out.sum() == a.size


def test_pandas_dataframe():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(100_000), "b": np.linspace(0, 1, 100_000)})
    out, p = roundtrip(df)
    pd.testing.assert_frame_equal(out, df)
    assert p.nbytes_out_of_band >= 100_000 * 8


# ------------------------------------------------------------- by-value functions

def test_lambda_and_closure_round_trip():
    k = 10
    add_k = lambda x: x + k  # noqa: E731

    def make(m):
        def mul(x):
            return x * m + k
        return mul

    out, _ = roundtrip((add_k, (1,), {}))
    assert out[0](*out[1]) == 11
    out, _ = roundtrip([make(3), make(4)])
    assert [f(2) for f in out] == [16, 18]


def test_rebinding_a_global_is_seen(tmp_path):
    script = tmp_path / "rebind.py"
    script.write_text(textwrap.dedent("""
        from shoal import _serialize as S
        SCALE = 2
        def f(x):
            return x * SCALE
        first = S.loads(S.dumps((f, (1,))).data)
        print(first[0](1))
        SCALE = 5
        second = S.loads(S.dumps((f, (1,))).data)
        # Rebuilt functions of one module share its namespace, as the
        # driver's own do: the rebinding reaches both copies.
        print(second[0](1), first[0](1))
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "5", "5"]


MAIN_SENDER = """
import os
import sys
import numpy as np
from shoal import _serialize as S

class Acc:
    def __init__(self, v):
        self.v = v
    def total(self):
        return float(np.sum(self.v))

def work(acc, k):
    return acc.total() * k

offset = 7
payload = S.dumps((work, (Acc(np.arange(100_000.0)), 2), {"extra": lambda: offset}))
for seg in payload.segments:
    seg.release_name()            # the receiver adopts the segment
sys.stdout.buffer.write(bytes(payload.data))
sys.stdout.flush()
os.close(1)  # EOF for the reader (sys.stdout does not own fd 1)
# Stay alive until the receiver has attached: a segment whose creator died
# may be swept by any shoal process starting a pool meanwhile.
sys.stdin.read()
"""

MAIN_RECEIVER = """
import sys
from shoal import _serialize as S
fn, args, kwargs = S.loads(sys.stdin.buffer.read(), adopt=True)
print(fn(*args), kwargs["extra"]())
"""


def test_main_functions_classes_and_lambdas_cross_fresh_interpreters(tmp_path):
    """Functions/classes defined in a script's __main__ and lambdas arrive in
    a *different* fresh interpreter, whose __main__ has none of them."""
    (tmp_path / "sender.py").write_text(MAIN_SENDER)
    (tmp_path / "receiver.py").write_text(MAIN_RECEIVER)
    sender = subprocess.Popen([sys.executable, str(tmp_path / "sender.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        data = sender.stdout.read()
        assert data[:1] == b"S", sender.stderr.read().decode()  # the 800 kB array: out of band
        got = subprocess.run([sys.executable, str(tmp_path / "receiver.py")], input=data,
                             capture_output=True, timeout=60)
    finally:
        sender.stdin.close()
        assert sender.wait(timeout=60) == 0
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout.decode().split() == [str(2 * float(sum(range(100_000)))), "7"]


def test_importable_function_goes_by_reference():
    p = S.dumps((square, (1,), {}))
    assert b"test_serialize" in bytes(p.data) and len(p.data) < 200


# ------------------------------------------------------------------------ errors

def test_unpicklable_object_is_named():
    lock = threading.Lock()
    with pytest.raises(shoal.SerializationError) as info:
        S.dumps((square, (1, {"key": [0, lock]}), {}))
    msg = str(info.value)
    assert "_thread.lock" in msg and "[1]['key'][1]" in msg
    assert isinstance(info.value.__cause__, TypeError)
    assert isinstance(info.value, TypeError)  # SerializationError is also a TypeError


def test_unpicklable_in_object_attribute_and_closure():
    class Holder:
        pass

    h = Holder()
    h.gen = (i for i in range(3))
    with pytest.raises(shoal.SerializationError, match=r"generator.*\.gen"):
        S.dumps([h])

    lock = threading.Lock()

    def uses_lock():
        return lock

    with pytest.raises(shoal.SerializationError, match=r"_thread.lock.*<closure lock>"):
        S.dumps(uses_lock)


def test_long_repr_is_truncated():
    class Bad:
        def __reduce__(self):
            raise RuntimeError("no way")

        def __repr__(self):
            return "B" * 10_000

    with pytest.raises(shoal.SerializationError) as info:
        S.dumps(Bad())
    assert len(str(info.value)) < 600 and "no way" in str(info.value)


def test_serialize_works_after_an_error():
    with pytest.raises(shoal.SerializationError):
        S.dumps(threading.Lock())
    out, _ = roundtrip((square, (4,), {}))
    assert out[0](4) == 16


def test_segment_gone_is_a_clear_error():
    p = S.dumps(np.ones(100_000))  # below RECYCLE_MIN: unlinked when dropped
    data = bytes(p.data)
    del p
    gc.collect()
    with pytest.raises(OSError):
        S.loads(data)


# ---------------------------------------------------------------- segment lifetime

def test_no_segment_left_after_payload_dropped():
    p = S.dumps(np.ones(100_000))  # 800 kB: below RECYCLE_MIN, unlinked at once
    seg = p.segments[0]
    name = seg.name
    assert shm_exists(seg)
    del p, seg
    gc.collect()
    assert not os.path.exists("/dev/shm" + name)
    # a big one is parked for reuse, and unlinked when the cache is cleared
    p = S.dumps(np.ones(1_000_000))
    name = p.segments[0].name
    del p
    gc.collect()
    assert os.path.exists("/dev/shm" + name)
    assert S.clear_segment_cache() >= 1
    assert not os.path.exists("/dev/shm" + name)


def test_segments_are_recycled_only_once_the_receiver_let_go():
    a = np.arange(1_000_000.0)
    p = S.dumps(a)
    name = p.segments[0].name
    out = S.loads(p.data)
    view = out[10:20]  # any object over the buffer counts
    del p, out
    gc.collect()
    p2 = S.dumps(a * 2)  # the receiver still uses the first segment: a new one
    assert p2.segments[0].name != name
    out2 = S.loads(p2.data)
    np.testing.assert_array_equal(view, a[10:20])  # not overwritten
    del view
    gc.collect()
    p3 = S.dumps(a * 3)  # now free: refilled, no new segment
    assert p3.segments[0].name == name
    out3 = S.loads(p3.data)
    np.testing.assert_array_equal(out3, a * 3)
    np.testing.assert_array_equal(out2, a * 2)


def test_a_fresh_segment_has_memory_for_every_page():
    """A fresh out-of-band segment reserves only its header and write()s the
    buffers; every page must still end up with memory, since the recycler
    refills it through the mapping (a page without memory would be a SIGBUS
    on a full /dev/shm). Odd sizes, several buffers, the pickle stream too."""
    objs = [np.arange(300_001.0), np.ones(70_003, dtype=np.int8), np.zeros(5)]
    p = S.dumps(objs, threshold=1 << 10)
    seg = p.segments[0]
    st = os.stat("/dev/shm" + seg.name)
    assert st.st_size == seg.size
    assert st.st_blocks * 512 >= seg.size
    out = S.loads(p.data)
    for a, b in zip(out, objs):
        np.testing.assert_array_equal(a, b)


def test_recycling_across_processes(tmp_path):
    """A real receiver process releases the buffers when its arrays die; the
    sender then refills the same segment."""
    code = textwrap.dedent("""
        import gc, sys
        from shoal import _serialize as S
        for line in sys.stdin.buffer:
            data = bytes.fromhex(line.decode().strip())
            a = S.loads(data)
            print(float(a.sum()), flush=True)
            del a
            gc.collect()
            print("released", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    names = []
    try:
        for k in range(3):
            a = np.full(500_000, float(k))
            p = S.dumps(a)
            names.append(p.segments[0].name)
            proc.stdin.write(bytes(p.data).hex() + "\n")
            proc.stdin.flush()
            assert float(proc.stdout.readline()) == float(a.sum())
            assert proc.stdout.readline().strip() == "released"
            del p
            gc.collect()
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    assert names[0] == names[1] == names[2]

def test_loaded_array_outlives_the_sender_payload():
    p = S.dumps(np.arange(100_000.0))
    out = S.loads(p.data)
    name = p.segments[0].name
    del p
    gc.collect()
    assert not os.path.exists("/dev/shm" + name)  # name gone...
    assert out[99_999] == 99_999.0  # ...memory still mapped by the receiver


def test_adopt_unlinks_right_after_mapping():
    p = S.dumps([np.arange(50_000.0), np.arange(50_000)])
    p.release_names()
    name = p.segments[0].name
    assert os.path.exists("/dev/shm" + name)
    out = S.loads(p.data, adopt=True)
    assert not os.path.exists("/dev/shm" + name)
    del p
    gc.collect()
    assert out[0][-1] == 49_999.0 and out[1][-1] == 49_999


def test_adopt_in_another_process(tmp_path):
    p = S.dumps(np.arange(100_000, dtype=np.int64))
    p.release_names()
    name = p.segments[0].name
    (tmp_path / "data.bin").write_bytes(bytes(p.data))
    code = ("import sys; from shoal import _serialize as S; "
            f"a = S.loads(open({str(tmp_path / 'data.bin')!r}, 'rb').read(), adopt=True); "
            "print(int(a.sum()))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == sum(range(100_000))
    assert not os.path.exists("/dev/shm" + name)


def test_failed_dumps_leaves_no_segment():
    before = set(os.listdir("/dev/shm"))
    with pytest.raises(shoal.SerializationError):
        S.dumps([np.ones(100_000), threading.Lock()])
    gc.collect()
    assert {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("shoal.")} == set()


def test_concurrent_dumps_from_threads():
    errors = []
    barrier = threading.Barrier(4)

    def run(i):
        try:
            barrier.wait()
            for j in range(50):
                a = np.full(20_000, i * 1000 + j, dtype=np.int64)
                out, _ = roundtrip((square, (a,), {}))
                assert (out[1][0] == a).all()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_max_inline_moves_the_pickle_stream_out_of_band():
    obj = {"floats": [float(i) for i in range(100_000)], "arr": np.arange(100_000.0)}
    p = S.dumps(obj, max_inline=512)
    assert len(p.data) < 512 and len(p.segments) == 1
    out = S.loads(p.data)
    assert out["floats"] == obj["floats"]
    np.testing.assert_array_equal(out["arr"], obj["arr"])
    # small objects stay a bare pickle even with a limit
    p = S.dumps((square, (2,), {}), max_inline=512)
    assert not p.segments and bytes(p.data[:1]) == b"\x80"
    # only the stream, no buffer
    p = S.dumps(list(range(100_000)), max_inline=1000)
    assert len(p.data) < 1000 and S.loads(p.data) == list(range(100_000))


def test_functions_of_exec_namespaces_keep_their_own_globals():
    # Not a module's namespace: each keeps its own globals, as cloudpickle
    # gives them (only a module's functions share the receiver's namespace).
    fns = []
    for scale in (2, 3):
        g = {"scale": scale}
        exec("def f(x):\n    return x * scale\n", g)
        fns.append(g["f"])
    out = [roundtrip((f, (1,)))[0] for f in fns]
    assert [o[0](*o[1]) for o in out] == [2, 3]
