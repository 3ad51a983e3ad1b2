"""shoal.parallel_for / parallel_reduce with real numba cfunc and ctypes kernels."""

from __future__ import annotations

import array
import ctypes
import math
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import shoal

numba = pytest.importorskip("numba")
from numba import carray, cfunc, njit, types  # noqa: E402

SIZES = [0, 1, 2, 3, 7, 13, 97, 1009, 100_003, 2_000_003]
THREADS = [1, 2, 3, 7]

for_sig = types.void(types.int64, types.int64, types.voidptr)
f64_sig = types.float64(types.int64, types.int64, types.voidptr)
i64_sig = types.int64(types.int64, types.int64, types.voidptr)


@cfunc(types.void(types.int64, types.int64, types.CPointer(types.int64)))
def mark(begin, end, out):
    for i in range(begin, end):
        out[i] += 2 * i + 1  # += : a doubly visited index would show


@cfunc(i64_sig)
def count_i64(begin, end, ctx):
    return end - begin


@cfunc(f64_sig)
def wild_f64(begin, end, ctx):
    s = 0.0
    for i in range(begin, end):
        s += math.sin(i) * 10.0 ** (i % 17 - 8)
    return s


@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def read_sum(begin, end, x):
    s = 0.0
    for i in range(begin, end):
        s += x[i]
    return s


@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def read_min(begin, end, x):
    m = math.inf
    for i in range(begin, end):
        m = min(m, x[i])
    return m


@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def read_max(begin, end, x):
    m = -math.inf
    for i in range(begin, end):
        m = max(m, x[i])
    return m


@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def read_prod(begin, end, x):
    p = 1.0
    for i in range(begin, end):
        p *= x[i]
    return p


@cfunc(i64_sig)
def imax(begin, end, ctx):
    m = -(2**63)
    for i in range(begin, end):
        v = (i * 7919) % 10007
        if v > m:
            m = v
    return m


@cfunc(f64_sig)
def spin(begin, end, ctx):  # about a second of arithmetic per 1000 iterations
    s = 0.0
    for i in range(begin, end):
        for j in range(200_000):
            s += math.sqrt(i + j)
    return s


def wild_serial(n: int) -> float:
    i = np.arange(n, dtype=np.float64)
    return float(np.sum(np.sin(i) * 10.0 ** (np.arange(n) % 17 - 8.0)))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
def test_parallel_for_visits_every_index_once(n, threads):
    out = np.zeros(n, dtype=np.int64)
    shoal.parallel_for(n, mark, out, threads=threads)
    np.testing.assert_array_equal(out, 2 * np.arange(n, dtype=np.int64) + 1)


@pytest.mark.parametrize("grain", [1, 10, 100_000])
def test_parallel_for_grain(grain):
    out = np.zeros(10_007, dtype=np.int64)
    shoal.parallel_for(out.size, mark, out, threads=3, grain=grain)
    np.testing.assert_array_equal(out, 2 * np.arange(out.size, dtype=np.int64) + 1)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", SIZES)
def test_reduce_int64_count(n, threads):
    assert shoal.parallel_reduce(n, count_i64, dtype="int64", threads=threads) == n


def test_reduce_huge_n_with_large_grain():
    n = 2**40
    assert shoal.parallel_reduce(n, count_i64, dtype=np.int64, grain=2**30) == n


@pytest.mark.parametrize("n", [1, 1009, 100_003])
@pytest.mark.parametrize("threads", THREADS)
def test_reduce_ops_against_numpy(n, threads):
    rng = np.random.default_rng(n)
    x = rng.uniform(0.5, 1.5, n)
    assert shoal.parallel_reduce(n, read_sum, x, threads=threads) == pytest.approx(x.sum(), rel=1e-12)
    assert shoal.parallel_reduce(n, read_min, x, op="min", threads=threads) == x.min()
    assert shoal.parallel_reduce(n, read_max, x, op="max", threads=threads) == x.max()
    p = shoal.parallel_reduce(n, read_prod, x, op="prod", threads=threads)
    assert p == pytest.approx(np.prod(x), rel=1e-9)


def test_reduce_int64_max_and_identities():
    assert shoal.parallel_reduce(100_000, imax, op="max", dtype="int64") == 10006
    empty = np.empty(0)  # typed-pointer kernels need a ctx of their dtype, even for n == 0
    assert shoal.parallel_reduce(0, read_sum, empty) == 0.0
    assert shoal.parallel_reduce(0, read_prod, empty, op="prod") == 1.0
    assert shoal.parallel_reduce(0, read_min, empty, op="min") == math.inf
    assert shoal.parallel_reduce(0, read_max, empty, op="max") == -math.inf
    assert shoal.parallel_reduce(0, imax, op="max", dtype="int64") == -(2**63)
    assert shoal.parallel_reduce(0, imax, op="min", dtype="int64") == 2**63 - 1


@pytest.mark.parametrize("n", [1, 97, 1009, 100_003, 1_000_003])
@pytest.mark.parametrize("grain", [None, 333])
def test_deterministic_is_bit_identical_across_thread_counts(n, grain):
    results = [shoal.parallel_reduce(n, wild_f64, threads=t, deterministic=True, grain=grain)
               for t in THREADS for _ in range(2)]
    bits = {struct.pack("<d", r) for r in results}
    assert len(bits) == 1, results
    assert results[0] == pytest.approx(wild_serial(n), rel=1e-9, abs=1e-9)


def test_plain_reduce_is_close_to_serial():
    n = 1_000_003
    for t in THREADS:
        assert shoal.parallel_reduce(n, wild_f64, threads=t) == pytest.approx(wild_serial(n), rel=1e-9)


def test_integration_like_the_course():
    n = 400
    h = math.pi / n

    @cfunc(f64_sig)
    def rows(begin, end, ctx):
        s = 0.0
        for i in range(begin, end):
            x = h * (i + 0.5)
            for j in range(n):
                s += math.sin(x + h * (j + 0.5))
        return s

    assert abs(shoal.parallel_reduce(n, rows) * h * h) < 1e-10


def test_ctypes_and_raw_address_kernels():
    n = 5000
    out = np.zeros(n, dtype=np.int64)
    shoal.parallel_for(n, mark.ctypes, out, threads=2)  # numba's ctypes wrapper
    np.testing.assert_array_equal(out, 2 * np.arange(n) + 1)
    out[:] = 0
    shoal.parallel_for(n, mark.address, out.ctypes.data, threads=2)  # raw int addresses
    np.testing.assert_array_equal(out, 2 * np.arange(n) + 1)
    # A ctypes callback made from Python: runs (taking the GIL per call) and is checked.
    proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)
    cb = proto(lambda b, e, ctx: float(e - b))
    assert shoal.parallel_reduce(12345, cb, threads=2, grain=1000) == 12345.0


def test_ctx_kinds():
    buf = bytearray(8 * 100)
    shoal.parallel_for(100, mark, buf)
    assert np.frombuffer(buf, dtype=np.int64)[99] == 199
    arr = array.array("q", [0] * 50)
    shoal.parallel_for(50, mark, arr)
    assert arr[49] == 99
    carr = (ctypes.c_int64 * 10)()
    shoal.parallel_for(10, mark, carr)
    assert carr[9] == 19
    ptr = ctypes.cast(carr, ctypes.POINTER(ctypes.c_int64))
    shoal.parallel_for(10, mark, ptr)
    assert carr[9] == 38
    x = np.ones(10)
    assert shoal.parallel_reduce(10, read_sum, memoryview(x)) == 10.0
    assert shoal.parallel_reduce(5, count_i64, b"", dtype="int64") == 5


def test_bad_kernels_are_rejected_before_running():
    def py(b, e, c):
        return 0.0

    cases = [
        (None, TypeError, "None"),
        (py, TypeError, "Python callable"),
        (njit(py), TypeError, "cfunc"),
        (cfunc(types.float64(types.int32, types.int64, types.voidptr))(py), TypeError, "signature"),
        (cfunc(types.float32(types.int64, types.int64, types.voidptr))(py), TypeError, "signature"),
        (wild_f64, None, None),
        (count_i64, TypeError, "signature"),  # int64 kernel with dtype float64
        (True, TypeError, "bool"),
        ("kernel", TypeError, "str"),
        (-5, ValueError, "address"),
        (0, ValueError, "address"),
    ]
    for kernel, exc, words in cases:
        if exc is None:
            continue
        with pytest.raises(exc, match=words):
            shoal.parallel_reduce(10, kernel)
    with pytest.raises(TypeError, match="signature"):
        shoal.parallel_for(10, wild_f64)  # returns a value: not a for-kernel
    no_args = ctypes.CDLL(None).labs  # a libc function: argtypes not set
    with pytest.raises(TypeError, match="argtypes"):
        shoal.parallel_reduce(10, no_args)
    wrong_res = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        lambda b, e, c: 0)
    with pytest.raises(TypeError, match="returns"):
        shoal.parallel_reduce(10, wrong_res)
    wrong_args = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p)(
        lambda b, e, c: 0.0)
    with pytest.raises(TypeError, match="expected"):
        shoal.parallel_reduce(10, wrong_args)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be >= 0"):
        shoal.parallel_for(-1, mark)
    with pytest.raises(TypeError, match="n must be an int"):
        shoal.parallel_for(1.5, mark)
    with pytest.raises(TypeError, match="bool"):
        shoal.parallel_for(True, mark)
    with pytest.raises(ValueError, match="threads"):
        shoal.parallel_for(10, mark, threads=0)
    with pytest.raises(ValueError, match="grain"):
        shoal.parallel_for(10, mark, grain=0)
    with pytest.raises(ValueError, match="op must be"):
        shoal.parallel_reduce(10, wild_f64, op="mean")
    with pytest.raises(ValueError, match="dtype"):
        shoal.parallel_reduce(10, wild_f64, dtype="float32")
    with pytest.raises(TypeError, match="deterministic"):
        shoal.parallel_reduce(10, wild_f64, deterministic="yes")
    with pytest.raises(TypeError, match="ctx"):
        shoal.parallel_for(10, mark, object())
    with pytest.raises(TypeError, match="bool"):
        shoal.parallel_for(10, mark, False)
    with pytest.raises(ValueError, match="ctx address"):
        shoal.parallel_for(10, mark, -1)
    with pytest.raises(ValueError, match="contiguous"):
        shoal.parallel_for(1, mark, memoryview(bytearray(16))[::2])


def test_gil_is_released_while_kernels_run():
    ticks: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        time.sleep(0.01)
        start = time.perf_counter()
        shoal.parallel_reduce(400, spin, threads=1)
        end = time.perf_counter()
    finally:
        stop.set()
        t.join()
    during = [x for x in ticks if start < x < end]
    assert during, "no Python thread ran while the kernel ran: the GIL was held"


def test_shoal_num_threads_sizes_the_default_pool():
    code = "import shoal.parallel as p; print(p.default_threads())"
    for value in ("1", "3"):
        env = dict(os.environ, SHOAL_NUM_THREADS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert out.strip() == value
    from shoal.parallel import default_threads

    assert default_threads() >= 1


@pytest.mark.timeout(60)
def test_loops_work_in_a_forked_child():
    # The parent's pool threads do not survive fork(); the child must build its own.
    assert shoal.parallel_reduce(10_000, count_i64, dtype="int64", threads=2) == 10_000
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads running
        pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = shoal.parallel_reduce(10_000, count_i64, dtype="int64", threads=2) == 10_000
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_deterministic_with_too_many_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="grain of at least 64"):
        shoal.parallel_reduce(2**30, count_i64, dtype="int64", deterministic=True, grain=1)


# ---- ctx against the kernel's third parameter ----------------------------------

def run_in_child(code: str) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter: a call that segfaults shows as a
    failed test (exit -11), not as a crashed pytest."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


CHILD_PRELUDE = """
import ctypes, numpy as np, shoal
from numba import cfunc, types
@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def read_sum(begin, end, x):
    s = 0.0
    for i in range(begin, end):
        s += x[i]
    return s
@cfunc(types.void(types.int64, types.int64, types.CPointer(types.float64)))
def write(begin, end, x):
    for i in range(begin, end):
        x[i] = 1.0
def expect_type_error(call):
    try:
        call()
    except TypeError as e:
        print("TypeError:", e)
    else:
        print("no error")
"""


@pytest.mark.timeout(240)
@pytest.mark.parametrize("call", [
    "shoal.parallel_reduce(100_000, read_sum)",                     # numba CPointer(float64)
    "shoal.parallel_reduce(100_000, read_sum.ctypes)",              # ctypes POINTER(c_double)
    "shoal.parallel_for(100_000, write)",
    "shoal.parallel_for(100_000, write, None, threads=2)",
    "shoal.parallel_reduce(100_000, read_sum, ctypes.POINTER(ctypes.c_double)())",  # NULL pointer
])
def test_typed_pointer_kernel_without_ctx_raises_instead_of_segfaulting(call):
    out = run_in_child(CHILD_PRELUDE + f"expect_type_error(lambda: {call})\n")
    assert out.returncode == 0, f"the child died ({out.returncode}):\n{out.stderr[-2000:]}"
    assert "TypeError: ctx is" in out.stdout, out.stdout + out.stderr
    assert "float64" in out.stdout and "NULL" in out.stdout


def test_void_pointer_kernel_takes_no_ctx():
    assert shoal.parallel_reduce(10, wild_f64) == pytest.approx(wild_serial(10))
    assert shoal.parallel_reduce(10, count_i64, None, dtype="int64") == 10
    assert shoal.parallel_reduce(10, count_i64.ctypes, dtype="int64") == 10


def test_typed_pointer_kernel_checks_ctx_even_for_empty_n():
    with pytest.raises(TypeError, match="ctx is None"):
        shoal.parallel_reduce(0, read_sum)
    with pytest.raises(TypeError, match="ctx holds int32"):
        shoal.parallel_reduce(0, read_sum, np.empty(0, dtype=np.int32))


WRONG_ELEMENTS = [  # 32 bytes each: the old code read them as 4 doubles of garbage
    (np.zeros(8, dtype=np.int32), "int32"),
    (np.zeros(8, dtype=np.float32), "float32"),
    (np.zeros(4, dtype=np.int64), "int64"),  # same size, wrong kind
    (np.zeros(4, dtype=">f8"), ">f8"),  # same kind, wrong byte order
    (np.zeros(4, dtype=np.complex64), "complex64"),
    (array.array("i", [0] * 8), "int32"),
    ((ctypes.c_int32 * 8)(), "int32"),
    (ctypes.cast((ctypes.c_int64 * 4)(), ctypes.POINTER(ctypes.c_int64)), "int64"),
    (memoryview(np.zeros(8, dtype=np.int32)), "int32"),
]


@pytest.mark.parametrize("ctx,dtype", WRONG_ELEMENTS,
                         ids=[f"{type(c).__name__}-{d}" for c, d in WRONG_ELEMENTS])
@pytest.mark.parametrize("kernel", [read_sum, read_sum.ctypes], ids=["numba", "ctypes"])
def test_ctx_elements_must_be_the_kernels_pointee(kernel, ctx, dtype):
    with pytest.raises(TypeError, match=rf"ctx holds {dtype} \(.*third parameter is \w+\* .*as float64"):
        shoal.parallel_reduce(4, kernel, ctx)


@pytest.mark.parametrize("kernel", [read_sum, read_sum.ctypes], ids=["numba", "ctypes"])
def test_ctx_of_the_kernels_pointee_is_taken(kernel):
    fits = [np.ones(4), np.ones((2, 2), order="F"), memoryview(np.ones(4)), array.array("d", [1.0] * 4),
            (ctypes.c_double * 4)(1, 1, 1, 1),
            ctypes.cast((ctypes.c_double * 4)(1, 1, 1, 1), ctypes.POINTER(ctypes.c_double)),
            np.frombuffer(np.ones(4).tobytes()),  # read-only: reading is fine
            struct.pack("<4d", 1, 1, 1, 1),  # raw bytes are not type-checked
            ]
    for ctx in fits:
        assert shoal.parallel_reduce(4, kernel, ctx) == 4.0, ctx
    x = np.ones(4)
    assert shoal.parallel_reduce(4, kernel, x.ctypes.data) == 4.0  # raw address: unchecked


class Params(ctypes.Structure):
    _fields_ = [("n", ctypes.c_double), ("h", ctypes.c_double)]


def test_structured_pointee_is_checked_field_by_field():
    # A ctypes kernel reading a Params* (a callback made from Python: it takes the GIL per call).
    proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(Params))
    read_params = proto(lambda b, e, p: (e - b) * p.contents.h)
    params = np.array([(3.0, 0.5)], dtype=[("n", np.float64), ("h", np.float64)])
    assert shoal.parallel_reduce(4, read_params, params, threads=1) == 2.0
    assert shoal.parallel_reduce(4, read_params, Params(3.0, 0.5), threads=1) == 2.0
    with pytest.raises(TypeError, match=r"ctx holds float64 .*Params\*"):
        shoal.parallel_reduce(4, read_params, np.array([3.0, 0.5]))
    swapped = np.array([(0.5, 3.0)], dtype=[("h", np.float64), ("n", np.float64)])
    with pytest.raises(TypeError, match="ctx holds"):
        shoal.parallel_reduce(4, read_params, swapped)


def test_non_contiguous_array_ctx_is_a_value_error():
    with pytest.raises(ValueError, match="ctx buffer must be contiguous"):
        shoal.parallel_reduce(4, read_sum, np.ones(8)[::2])
    with pytest.raises(ValueError, match="ctx buffer must be contiguous"):
        shoal.parallel_for(4, mark, np.zeros((4, 4), dtype=np.int64)[:, 1])


def test_return_type_and_arity_mismatches():
    out = np.zeros(10, dtype=np.int64)
    with pytest.raises(TypeError, match="signature"):
        shoal.parallel_reduce(10, mark, out, dtype="int64")  # a void kernel cannot reduce
    with pytest.raises(TypeError, match="signature"):
        shoal.parallel_reduce(10, mark, out)
    with pytest.raises(TypeError, match="signature"):
        shoal.parallel_for(10, count_i64)  # returns a value: not a for-kernel
    two_args = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64)(lambda b, e: 0.0)
    with pytest.raises(TypeError, match="expected"):
        shoal.parallel_reduce(10, two_args)
    void_ct = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(lambda b, e, c: None)
    with pytest.raises(TypeError, match="returns None"):
        shoal.parallel_reduce(10, void_ct)
    f32 = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        lambda b, e, c: 0.0)
    with pytest.raises(TypeError, match="returns c_float"):
        shoal.parallel_reduce(10, f32)
    dbl_for = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)(
        lambda b, e, c: 0.0)
    with pytest.raises(TypeError, match="returns c_double"):
        shoal.parallel_for(10, dbl_for)
    i32_end = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p)(lambda b, e, c: None)
    with pytest.raises(TypeError, match="c_int"):
        shoal.parallel_for(10, i32_end)


def test_plain_arguments_are_checked_before_the_kernel_and_ctx():
    # A typed-pointer kernel with no ctx: the bad scalar is still the error named.
    with pytest.raises(ValueError, match="threads"):
        shoal.parallel_reduce(10, read_sum, threads=-1)
    with pytest.raises(ValueError, match="grain"):
        shoal.parallel_reduce(10, read_sum, grain=0)
    with pytest.raises(TypeError, match="threads must be an int"):
        shoal.parallel_for(10, mark, threads=2.0)


def test_char_pointer_kernel_needs_a_buffer_of_any_kind():
    proto = ctypes.CFUNCTYPE(ctypes.c_double, ctypes.c_int64, ctypes.c_int64, ctypes.c_char_p)
    first_byte = proto(lambda b, e, p: float(p[0]) if p else -1.0)
    with pytest.raises(TypeError, match=r"ctx is None.*char\*"):
        shoal.parallel_reduce(1, first_byte)
    assert shoal.parallel_reduce(1, first_byte, b"\x07") == 7.0
    assert shoal.parallel_reduce(1, first_byte, np.array([9], dtype=np.int64)) == 9.0
