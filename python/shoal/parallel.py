"""Native kernels on shoal's C++ thread pool: OpenMP-style loops from Python.

A kernel is compiled code that works on a range of iterations::

    void   kernel(int64 begin, int64 end, void* ctx)   # parallel_for
    double kernel(int64 begin, int64 end, void* ctx)   # parallel_reduce, dtype="float64"
    int64  kernel(int64 begin, int64 end, void* ctx)   # parallel_reduce, dtype="int64"

for example a numba ``cfunc``::

    from numba import cfunc, types, carray
    @cfunc(types.float64(types.int64, types.int64, types.voidptr))
    def rows(begin, end, ctx): ...
    total = shoal.parallel_reduce(n, rows, op="sum")

Flow of one call::

    parallel_reduce(n, kernel, ctx)          (Python: check everything checkable)
        -> _core.parallel_reduce_f64(...)    (GIL released)
        -> shoal::parallel_reduce            (C++: caller + pool workers claim chunks,
                                              call kernel(b, e, ctx), combine partials)

The GIL is released while kernels run, so a kernel must not touch Python
objects. Everything that can be checked is checked before the first call
(even when ``n == 0``): a wrong signature, ``None``, a Python function, a
negative ``n`` raise ``TypeError``/``ValueError``; so does a ``ctx`` that does
not fit the kernel's third parameter where that is a typed pointer (numba
``CPointer(T)``, ctypes ``POINTER(T)``): ``None`` or a NULL pointer, an array
of another dtype. What cannot be checked: a raw int address (kernel or ctx)
and raw bytes (``bytes``, ``bytearray``) are the caller's promise, and neither
numba nor ctypes can say that a kernel only reads, so a read-only buffer is
passed as it is.
"""

from __future__ import annotations

import ctypes
import operator
from typing import Any, NamedTuple

from .monitor import _session as _monitor  # _monitor.current: the recording session or None

__all__ = ["parallel_for", "parallel_reduce", "default_threads"]

_OPS = ("sum", "min", "max", "prod")
_MAX_DETERMINISTIC_BLOCKS = 1 << 24  # as detail::kMaxDeterministicBlocks in shoal/parallel.hpp
_DTYPES = ("float64", "int64")
_INT64_CTYPES = (ctypes.c_int64, ctypes.c_longlong, ctypes.c_ssize_t)
_RESTYPES = {None: (None,), "float64": (ctypes.c_double,), "int64": _INT64_CTYPES}
_SIGNATURE_TEXT = {
    None: "void(int64 begin, int64 end, void* ctx)",
    "float64": "float64(int64 begin, int64 end, void* ctx)",
    "int64": "int64(int64 begin, int64 end, void* ctx)",
}


def default_threads() -> int:
    """Threads a native loop uses when ``threads`` is not given (the calling
    thread included): ``SHOAL_NUM_THREADS`` if set, else the CPUs this process
    may run on."""
    return _core().default_threads()


def parallel_for(n: int, kernel: Any, ctx: Any = None, *, threads: int | None = None,
                 grain: int | None = None) -> None:
    """Call ``kernel(begin, end, ctx)`` over disjoint ranges covering ``[0, n)``
    on ``threads`` threads (default: :func:`default_threads`). ``grain`` fixes
    the number of iterations per call (default: about 8 ranges per thread)."""
    n = _check_count(n)
    threads, grain = _check_threads(threads), _check_grain(grain)
    address, pointee = _kernel_entry(kernel, None)
    ctx_address, keep = _ctx_address(ctx, pointee)
    mon = _monitor.current
    _core().parallel_for(n, address, ctx_address, threads, grain,
                         None if mon is None else mon.sampler)
    del keep  # ctx's buffer had to stay alive until here


def parallel_reduce(n: int, kernel: Any, ctx: Any = None, *, op: str = "sum",
                    dtype: Any = "float64", threads: int | None = None,
                    deterministic: bool = False, grain: int | None = None) -> float | int:
    """Combine ``kernel(begin, end, ctx)`` over ranges covering ``[0, n)`` with
    ``op`` (sum, min, max, prod); ``dtype`` float64 or int64 is the kernel's
    return type. Empty ``n`` gives the identity (0, +inf, -inf, 1; integer
    min/max: the int64 limits).

    ``deterministic=True`` cuts ``[0, n)`` into blocks that depend on ``n``
    (and ``grain``) only and combines them in a fixed pairwise order: the
    result is bit-identical for any ``threads``."""
    if op not in _OPS:
        raise ValueError(f"op must be one of {', '.join(_OPS)}, got {op!r}")
    dtype_name = _dtype_name(dtype)
    n = _check_count(n)
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    threads, grain = _check_threads(threads), _check_grain(grain)
    if deterministic and grain and -(-n // grain) > _MAX_DETERMINISTIC_BLOCKS:
        raise ValueError(f"deterministic=True keeps one partial result per block: n={n} with "
                         f"grain={grain} would need {-(-n // grain)} blocks; pass a grain of at "
                         f"least {-(-n // _MAX_DETERMINISTIC_BLOCKS)}")
    address, pointee = _kernel_entry(kernel, dtype_name)
    ctx_address, keep = _ctx_address(ctx, pointee)
    core = _core()
    run = core.parallel_reduce_f64 if dtype_name == "float64" else core.parallel_reduce_i64
    mon = _monitor.current
    result = run(n, address, ctx_address, op, threads, deterministic, grain,
                 None if mon is None else mon.sampler)
    del keep
    return result


_core_module = None


def _core():
    global _core_module
    if _core_module is None:
        from . import _core as module

        _core_module = module
    return _core_module


# ---- checks -----------------------------------------------------------------

def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def _check_count(n: Any) -> int:
    if type(n) is not int:
        n = _as_int(n, "n")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n >= 2**63:
        raise ValueError(f"n must be < 2**63, got {n}")
    return n


def _check_threads(threads: Any) -> int:
    if threads is None:
        return 0
    if type(threads) is not int:
        threads = _as_int(threads, "threads")
    if not 1 <= threads <= 4096:
        raise ValueError(f"threads must be between 1 and 4096 (or None), got {threads}")
    return threads


def _check_grain(grain: Any) -> int:
    if grain is None:
        return 0
    if type(grain) is not int:
        grain = _as_int(grain, "grain")
    if grain < 1:
        raise ValueError(f"grain must be >= 1 (or None), got {grain}")
    return grain


def _dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else None
    if name is None:
        try:
            import numpy as np

            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be 'float64' or 'int64', got {dtype!r}") from None
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float64' or 'int64', got {dtype!r}")
    return name


class _Pointee(NamedTuple):
    """What a kernel's typed-pointer third parameter points to."""

    text: str  # for messages: "float64* (numba CPointer(float64))"
    dtype: Any  # numpy dtype of one element; None where it has none (char*, T**, void)


# (id(kernel), restype) -> (kernel, address, pointee): kernels already checked.
# Holding the kernel keeps its id from being reused; bounded so it cannot grow forever.
_checked: dict[tuple[int, str | None], tuple[Any, int, _Pointee | None]] = {}


def _kernel_entry(kernel: Any, restype: str | None) -> tuple[int, _Pointee | None]:
    """The kernel's entry address, after checking its signature where it has one,
    and what its ctx parameter points to (None: untyped, nothing to check)."""
    hit = _checked.get((id(kernel), restype))
    if hit is not None and hit[0] is kernel:
        return hit[1], hit[2]
    address, pointee = _check_kernel(kernel, restype)
    if not isinstance(kernel, int):
        if len(_checked) >= 256:
            _checked.clear()
        _checked[id(kernel), restype] = (kernel, address, pointee)
    return address, pointee


def _check_kernel(kernel: Any, restype: str | None) -> tuple[int, _Pointee | None]:
    want = _SIGNATURE_TEXT[restype]
    if kernel is None:
        raise TypeError(f"kernel is None; expected a numba cfunc, a ctypes function pointer or "
                        f"an int address of {want}")
    if isinstance(kernel, bool):
        raise TypeError("kernel must be a function, not bool")
    if isinstance(kernel, int):
        if not 0 < kernel < 2**64:
            raise ValueError(f"kernel address must be a positive 64-bit int, got {kernel:#x}")
        return kernel, None  # a raw address says nothing about its parameters
    if hasattr(kernel, "_sig") and hasattr(kernel, "address"):  # numba.cfunc
        return int(kernel.address), _check_numba_signature(kernel, restype)
    if isinstance(kernel, ctypes._CFuncPtr):  # type: ignore[attr-defined]
        pointee = _check_ctypes_signature(kernel, restype)
        return ctypes.cast(kernel, ctypes.c_void_p).value or 0, pointee
    if hasattr(kernel, "py_func"):  # numba @njit dispatcher: not callable from C
        raise TypeError("a numba @njit function cannot be called from C++; compile the kernel "
                        f"with numba.cfunc and the signature {want}")
    if callable(kernel):
        raise TypeError(f"kernel {kernel!r} is a Python callable: native loops run without the "
                        f"GIL. Compile it with numba.cfunc ({want}), or run Python callables "
                        "with shoal.Pool(backend='threads')")
    raise TypeError(f"kernel must be a numba cfunc, a ctypes function pointer or an int "
                    f"address, got {type(kernel).__name__}")


def _check_numba_signature(kernel: Any, restype: str | None) -> _Pointee | None:
    from numba import types

    sig = kernel._sig
    args, ret = tuple(sig.args), sig.return_type
    ok_args = (len(args) == 3 and args[0] == types.int64 and args[1] == types.int64
               and (isinstance(args[2], (types.RawPointer, types.CPointer))
                    or args[2] in (types.int64, types.uint64)))
    ok_ret = {None: ret in (types.void, types.none), "float64": ret == types.float64,
              "int64": ret == types.int64}[restype]
    if not (ok_args and ok_ret):
        raise TypeError(f"numba cfunc has signature {sig}; expected {_SIGNATURE_TEXT[restype]} "
                        f"(for example types.{restype or 'void'}(types.int64, types.int64, "
                        "types.voidptr))")
    ctx = args[2]
    if not isinstance(ctx, types.CPointer) or ctx.dtype in (types.void, types.none):
        return None  # voidptr, or an integer that the kernel turns into an address itself
    try:
        from numba.np.numpy_support import as_dtype

        dtype = as_dtype(ctx.dtype)
    except Exception:  # a pointer to pointers, to a tuple...: no numpy dtype to compare with
        dtype = None
    return _Pointee(f"{ctx} (numba CPointer({ctx.dtype}))", dtype)


def _check_ctypes_signature(kernel: Any, restype: str | None) -> _Pointee | None:
    argtypes = kernel.argtypes
    want = _SIGNATURE_TEXT[restype]
    if argtypes is None:
        raise TypeError(f"ctypes function {kernel!r} has no argtypes; set them for {want}")
    ctx = argtypes[2] if len(argtypes) == 3 else None
    typed = isinstance(ctx, type) and issubclass(ctx, ctypes._Pointer)  # type: ignore[attr-defined]
    ptr_ok = typed or ctx in (ctypes.c_void_p, ctypes.c_char_p) + _INT64_CTYPES + (ctypes.c_size_t,)
    if not (ptr_ok and argtypes[0] in _INT64_CTYPES and argtypes[1] in _INT64_CTYPES):
        names = ", ".join(getattr(a, "__name__", str(a)) for a in argtypes)
        raise TypeError(f"ctypes function takes ({names}); expected {want}")
    if kernel.restype not in _RESTYPES[restype]:
        got = getattr(kernel.restype, "__name__", repr(kernel.restype))
        raise TypeError(f"ctypes function returns {got}; expected {want}")
    if ctx is ctypes.c_char_p:  # char*: C's bytes, any buffer fits, but not NULL
        return _Pointee("char* (ctypes c_char_p)", None)
    if not typed:
        return None
    target = ctx._type_
    name = getattr(target, "__name__", str(target))
    return _Pointee(f"{name}* (ctypes POINTER({name}))", _ctypes_dtype(target))


def _ctypes_dtype(ctype: Any) -> Any:
    """The numpy dtype of one element of a ctypes type (an array's element), or None."""
    import numpy as np

    try:
        return np.dtype(ctype).base
    except (TypeError, ValueError):
        return None


def _ctx_address(ctx: Any, pointee: _Pointee | None) -> tuple[int, Any]:
    """(address, object to keep alive during the call), after checking ctx
    against what the kernel's third parameter points to (``pointee``)."""
    if ctx is None:
        if pointee is not None:
            raise TypeError(f"ctx is None, but the kernel's third parameter is {pointee.text}: it "
                            f"would read through a NULL pointer. Pass {_what_fits(pointee)}, or "
                            "declare the parameter void* if the kernel never reads it")
        return 0, None
    if isinstance(ctx, bool):
        raise TypeError("ctx must be an array, a buffer, a ctypes object, an int address or None, "
                        "not bool")
    if isinstance(ctx, int):  # unchecked: the caller's promise
        if not 0 <= ctx < 2**64:
            raise ValueError(f"ctx address must be a non-negative 64-bit int, got {ctx}")
        return ctx, None
    if isinstance(ctx, ctypes._Pointer):  # type: ignore[attr-defined]  # its target, not itself
        address = ctypes.cast(ctx, ctypes.c_void_p).value or 0
        if pointee is not None:
            target = getattr(ctx._type_, "__name__", str(ctx._type_))
            if not address:
                raise TypeError(f"ctx is a NULL ctypes POINTER({target}), but the kernel's third "
                                f"parameter is {pointee.text}: it would read through it")
            _check_element(pointee, _ctypes_dtype(ctx._type_), f"ctypes POINTER({target})")
        return address, ctx
    try:
        # numpy arrays, bytes, bytearray, memoryview, array.array, ctypes objects...
        address = _core().buffer_address(ctx)
    except (BufferError, ValueError):
        raise ValueError("ctx buffer must be contiguous (C or Fortran order): the kernel gets "
                         "only its address") from None
    except TypeError:
        raise TypeError(f"ctx must be a numpy array, a buffer, a ctypes object, an int address or "
                        f"None, got {type(ctx).__name__}") from None
    if pointee is not None and pointee.dtype is not None:
        got = ctx.dtype if type(ctx) is _ndarray else _buffer_dtype(ctx)
        if got is not pointee.dtype:  # builtin dtypes are singletons: the common case is fast
            _check_element(pointee, got, _describe(ctx))
    return address, ctx


_ndarray: Any = None  # numpy.ndarray, once a typed-pointer kernel has needed it


def _buffer_dtype(ctx: Any) -> Any:
    """The numpy dtype of a contiguous buffer's elements; None for raw bytes
    (format "B": bytes, bytearray, mmap, their memoryviews), which any kernel
    may take as it likes."""
    global _ndarray
    import numpy as np

    _ndarray = np.ndarray
    if isinstance(ctx, (np.ndarray, np.generic)):
        return ctx.dtype
    if isinstance(ctx, (ctypes._SimpleCData, ctypes.Array, ctypes.Structure, ctypes.Union)):
        return _ctypes_dtype(type(ctx))
    view = memoryview(ctx)
    if view.format == "B":
        return None
    try:
        return np.asarray(view).dtype
    except (TypeError, ValueError, NotImplementedError):
        return None  # a format numpy cannot read: nothing to compare with


def _check_element(pointee: _Pointee, got: Any, what: str) -> None:
    if got is not None and pointee.dtype is not None and got != pointee.dtype:
        raise TypeError(f"ctx holds {got} ({what}), but the kernel's third parameter is "
                        f"{pointee.text}: it would read those bytes as {pointee.dtype}. Pass "
                        f"{_what_fits(pointee)}")


def _what_fits(pointee: _Pointee) -> str:
    if pointee.dtype is None:
        return "a buffer the kernel can read"
    return f"a contiguous numpy array of dtype {pointee.dtype}"


def _describe(ctx: Any) -> str:
    import numpy as np

    if isinstance(ctx, np.ndarray):
        return "numpy array"
    kind = type(ctx)
    module = "ctypes" if isinstance(ctx, (ctypes._SimpleCData, ctypes.Array, ctypes.Structure,
                                          ctypes.Union)) else kind.__module__
    return kind.__name__ if module == "builtins" else f"{module}.{kind.__name__}"
