"""numpy arrays in shared memory that travel between processes by reference.

    >>> import shoal, numpy as np
    >>> a = shoal.shared.zeros((4, 1000))            # lives in a shared segment
    >>> with shoal.Pool(2) as pool:
    ...     pool.map(fill_row, [(a, i) for i in range(4)])   # tasks write a[i] in place
    >>> a.sum()                                       # the driver sees their writes

Data flow::

    driver (creator)                                 worker (receiver)
    ----------------                                 -----------------
    zeros(shape) -> _Segment (owns the name)
      SharedArray  ----- view/slice keeps _Segment alive
    pickle(a[2:5]) = (name, byte offset, shape, strides, dtype, writeable)
                   -------------------------------------->  _rebuild(...)
                                                             _ATTACHED[name]: mapped once,
                                                             reused by later tasks
                                                             np.ndarray over the mapping
                                                             (same memory: writes are seen
                                                              by the driver)
    last driver-side array collected -> unlink(name)    cached mappings whose name is gone
                                                        are dropped at the next miss

A SharedArray and every view or slice of it pickle by reference, with any
pickler (shoal's, multiprocessing's, plain ``pickle``). Arrays that numpy
computes from them (``a + 1``, ``a.copy()``, ``np.concatenate``) are ordinary
ndarrays in private memory.
"""

from __future__ import annotations

import operator
import os
import threading
import weakref
from typing import Any

import numpy as np

from . import _core, _serialize

__all__ = ["SharedArray", "empty", "zeros", "full", "copy", "trim_mappings", "SegmentGone"]


class SegmentGone(FileNotFoundError):
    """The shared segment a SharedArray refers to no longer exists (its creator
    dropped the array or exited before the receiver attached it)."""


class _Segment:
    """One mapped segment. Alive while any array over it is alive; the creator's
    instance unlinks the name when collected (the SharedSegment destructor)."""

    __slots__ = ("seg", "name", "address", "size", "buf", "__weakref__")

    def __init__(self, seg: Any) -> None:
        self.seg = seg
        self.name = seg.name
        self.address = seg.address
        self.size = seg.size
        self.buf = seg.view()  # uint8 view; keeps `seg` (the mapping) alive


# Segments this process created, by name: a reference coming back (a worker
# returns a slice) resolves to the creator's own mapping. Weak: the arrays own them.
_CREATED: "weakref.WeakValueDictionary[str, _Segment]" = weakref.WeakValueDictionary()
# Segments this process attached, by name: strong, so that a worker that runs
# 1000 tasks over one array maps it once. Entries whose name was unlinked (the
# creator let go) are dropped at the next miss or by trim_mappings().
_ATTACHED: dict[str, _Segment] = {}
_MAX_ATTACHED = 64
_LOCK = threading.Lock()


class _Tracker(threading.local):
    """While shoal's dumps() runs in this thread, the segments referenced by
    the pickle are collected so the Payload keeps them alive in flight."""

    def __init__(self) -> None:
        self.stack: list = []
        # > 0 while loads(..., adopt=True) runs: references to segments that
        # the sender handed over (Payload.release_names) are adopted.
        self.adopting = 0


_TRACKER = _Tracker()
_serialize._tracker = _TRACKER


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"shoal.shared: not a numpy dtype: {dtype!r}") from exc
    if dt.hasobject:
        raise TypeError(f"shoal.shared: dtype {dt} holds Python objects, whose pointers "
                        "mean nothing in another process; use a numeric or fixed-size dtype")
    return dt


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(operator.index(s) for s in shape)
    except TypeError as exc:
        raise TypeError(f"shoal.shared: shape must be an int or a tuple of ints, got {shape!r}") \
            from exc
    if any(s < 0 for s in shape):
        raise ValueError(f"shoal.shared: negative dimension in shape {shape}")
    return shape


class SharedArray(np.ndarray):
    """An ndarray whose memory is a shared segment; it and its views pickle
    by reference. Create with :func:`empty`, :func:`zeros`, :func:`full`,
    :func:`copy`."""

    _shoal_seg: _Segment | None = None

    def __array_finalize__(self, obj: Any) -> None:
        # Views and slices share the parent's memory: inherit its segment.
        if obj is not None:
            self._shoal_seg = getattr(obj, "_shoal_seg", None)

    # New arrays computed by numpy are plain ndarrays in private memory.
    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        inputs = tuple(x.view(np.ndarray) if isinstance(x, SharedArray) else x for x in inputs)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(x.view(np.ndarray) if isinstance(x, SharedArray) else x
                                  for x in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            # In-place (out=): hand back the caller's own arrays.
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        result = super().__array_function__(func, types, args, kwargs)
        return _plain_if_private(result)

    def __array_wrap__(self, arr: Any, context: Any = None, return_scalar: bool = False) -> Any:
        if return_scalar and arr.ndim == 0:
            return arr[()]
        return _plain_if_private(arr)

    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        # Advanced indexing (arrays, lists, masks) copies into private memory.
        if type(result) is SharedArray and _is_advanced(key):
            return result.view(np.ndarray)
        return result

    def copy(self, order: str = "C") -> np.ndarray:  # type: ignore[override]
        return self.view(np.ndarray).copy(order=order)

    def astype(self, *args: Any, **kwargs: Any) -> np.ndarray:  # type: ignore[override]
        return self.view(np.ndarray).astype(*args, **kwargs)

    def __copy__(self) -> np.ndarray:
        return self.copy()

    def __deepcopy__(self, memo: Any) -> np.ndarray:
        return self.copy()

    @property
    def segment_name(self) -> str | None:
        """The name of the shared segment under this array (None if private)."""
        seg = self._shoal_seg
        return None if seg is None else seg.name

    def _byte_offset(self) -> int | None:
        """Offset of element 0 in the segment, or None if the memory is not
        (entirely) in it."""
        seg = self._shoal_seg
        if seg is None:
            return None
        start = self.__array_interface__["data"][0] - seg.address
        if self.size == 0:
            return start if 0 <= start <= seg.size else None
        lo = hi = start
        for n, st in zip(self.shape, self.strides):
            if st >= 0:
                hi += (n - 1) * st
            else:
                lo += (n - 1) * st
        hi += self.itemsize
        if lo < 0 or hi > seg.size:
            return None
        return start

    def __reduce_ex__(self, protocol: int) -> Any:
        offset = self._byte_offset()
        if offset is None:  # not in shared memory: an ordinary array, by value
            return self.view(np.ndarray).__reduce_ex__(protocol)
        seg = self._shoal_seg
        stack = _TRACKER.stack
        if stack:
            stack[-1].append(seg)
        return (_rebuild, (seg.name, offset, self.shape, self.strides, self.dtype,
                           bool(self.flags.writeable)))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)


def _is_advanced(key: Any) -> bool:
    if isinstance(key, tuple):
        return any(isinstance(k, (np.ndarray, list)) for k in key)
    return isinstance(key, (np.ndarray, list))


def _plain_if_private(result: Any) -> Any:
    if isinstance(result, SharedArray) and result._byte_offset() is None:
        return result.view(np.ndarray)
    if isinstance(result, tuple):
        return tuple(_plain_if_private(r) for r in result)
    if isinstance(result, list):
        return [_plain_if_private(r) for r in result]
    return result


def _segment_for(name: str, adopt: bool = False) -> _Segment:
    seg = _CREATED.get(name)
    if seg is not None:
        return seg
    seg = _ATTACHED.get(name)
    if seg is not None and not adopt:
        return seg
    with _LOCK:
        seg = _ATTACHED.get(name)
        if seg is not None and not adopt:
            return seg
        if seg is None:
            _prune_locked()
            try:
                seg = _Segment(_core.SharedSegment.attach(name))
            except OSError as exc:
                raise SegmentGone(
                    f"shoal.shared: segment {name} is gone (the process that created the "
                    "array dropped it or exited before this process attached it)") from exc
        if adopt:
            # A task created this array and returned it: its worker handed the
            # name over, so this process now owns it like one it created
            # (unlinked when its last array here is collected).
            _ATTACHED.pop(name, None)
            seg.seg.adopt_name()
            _CREATED[name] = seg
        else:
            _ATTACHED[name] = seg
        return seg


def _name_exists(name: str) -> bool:
    return os.path.exists("/dev/shm" + name)


def _prune_locked() -> None:
    for name in [n for n in _ATTACHED if not _name_exists(n)]:
        del _ATTACHED[name]
    while len(_ATTACHED) >= _MAX_ATTACHED:
        del _ATTACHED[next(iter(_ATTACHED))]


def trim_mappings() -> int:
    """Drop cached mappings of segments whose creator has let go (their memory
    is freed once no array here uses them). Workers call this when idle.
    Returns how many were dropped."""
    with _LOCK:
        before = len(_ATTACHED)
        for name in [n for n in _ATTACHED if not _name_exists(n)]:
            del _ATTACHED[name]
        dropped = before - len(_ATTACHED)
    return dropped + _serialize.trim_receiver_mappings()


def _rebuild(name: str, offset: int, shape: tuple, strides: tuple, dtype: np.dtype,
             writeable: bool) -> SharedArray:
    seg = _segment_for(name, _TRACKER.adopting > 0)
    arr = np.ndarray.__new__(SharedArray, shape, dtype, buffer=seg.buf, offset=offset,
                             strides=strides)
    arr._shoal_seg = seg
    if not writeable:
        arr.flags.writeable = False
    return arr


# ------------------------------------------------------------------ creators

def empty(shape: Any, dtype: Any = np.float64, order: str = "C") -> SharedArray:
    """A new array in shared memory (contents zero: fresh shared pages are)."""
    shape = _check_shape(shape)
    dt = _check_dtype(dtype)
    if order not in ("C", "F"):
        raise ValueError(f"shoal.shared: order must be 'C' or 'F', got {order!r}")
    nbytes = dt.itemsize
    for s in shape:
        nbytes *= s
    seg = _Segment(_core.SharedSegment.create(max(nbytes, 1)))
    _CREATED[seg.name] = seg
    arr = np.ndarray.__new__(SharedArray, shape, dt, buffer=seg.buf, offset=0, order=order)
    arr._shoal_seg = seg
    return arr


def zeros(shape: Any, dtype: Any = np.float64, order: str = "C") -> SharedArray:
    """A new zero-filled array in shared memory."""
    # A new segment is zero-filled by the kernel: nothing to write.
    return empty(shape, dtype, order)


def full(shape: Any, fill_value: Any, dtype: Any = None, order: str = "C") -> SharedArray:
    """A new array in shared memory filled with ``fill_value``."""
    if dtype is None:
        dtype = np.asarray(fill_value).dtype
    arr = empty(shape, dtype, order)
    arr.view(np.ndarray).fill(fill_value)
    return arr


def copy(array: Any, order: str = "K") -> SharedArray:
    """A copy of ``array`` (anything numpy accepts) in shared memory."""
    src = np.asarray(array)
    if order == "K":
        order = "F" if (src.flags.f_contiguous and not src.flags.c_contiguous) else "C"
    arr = empty(src.shape, src.dtype, order)
    if src.nbytes >= 1 << 16 and (src.flags.c_contiguous if order == "C"
                                  else src.flags.f_contiguous):
        # Into the fresh pages through the file (SharedSegment.write): no
        # page fault per 4 KiB here, 1.5x faster than a copy through the
        # mapping. empty() still reserves the memory first: an array made so
        # is read 5-10% faster by the workers than one whose pages the writes
        # allocated (measured), and it is read many times.
        arr._shoal_seg.seg.write(0, src.reshape(-1, order="A").view(np.uint8))
    else:
        np.copyto(arr.view(np.ndarray), src)
    return arr
