"""How shoal turns a Python object into bytes for another process and back.

Data flow of one object (a task's ``(fn, args)`` or its result)::

    sender                                            receiver
    ------                                            --------
    dumps(obj)
      pickle protocol 5 (C pickler)  --fails/__main__-->  cloudpickle
        | small buffers: inline in the pickle stream
        | buffers >= OUT_OF_BAND_THRESHOLD: buffer_callback
        v
      one SharedSegment per payload       <-- the ONE copy of big buffers
      (a recycled one if the arena has a        (into a recycled segment: just a memcpy)
       free one of the right size)
      Payload(.data = [marker][header][pickle],
              .segments = [that segment])  --- .data travels (ring) --->  loads(data)
      sender keeps the Payload alive                        attach segment by name (mapping
      until the receiver has loaded                           cached per name)
                                                            buffers = ctypes views on the mapping
                                                            pickle.loads(pickle, buffers)
                                                            (numpy arrays: views, no copy;
                                                             the mapping lives as long as they do)
                                                            adopt=True: unlink the name now
                                                            all rebuilt objects gone:
      Payload dropped: segment -> arena   <-- in_use word = 0 ---  finalizer
      (refilled only once in_use == 0;
       evicted/unlinked past the cache limit)

``shoal.shared.SharedArray`` never goes through the buffer callback: it pickles
by reference (segment name, offset, shape, strides, dtype), see ``shared.py``.

Wire format of ``Payload.data``:

* starts with ``0x80`` (the pickle PROTO opcode): the whole thing is a plain
  pickle, no header. This is the fast path of every small task.
* starts with ``b"S"``: ``S | u16 name length | name | u32 count | u8 p |
  (count + p) x (u64 offset, u64 length) | pickle if p == 0``. The buffers lie
  at those offsets in the one segment of that name; with ``p == 1`` the pickle
  stream itself is the last of them (``dumps(..., max_inline=...)``).

Cost: a small object costs one ``pickle.dumps`` plus one ``bytes.find`` (to
notice a reference to ``__main__``, which a fresh worker interpreter could not
resolve) plus the Payload object; ``loads`` of it costs one byte test plus
``pickle.loads``.
"""

from __future__ import annotations

import atexit
import ctypes
import io
import os
import pickle
import threading
import struct
import weakref
from types import FunctionType as _FunctionType

from ._errors import SerializationError, serialization_error

Any = object  # annotations only (typing costs a spawned worker's start 5 ms)

__all__ = ["Payload", "dumps", "loads", "OUT_OF_BAND_THRESHOLD", "clear_segment_cache",
           "trim_receiver_mappings"]

#: Buffers at least this large go out of band.
#: Measured here (python benchmarks/pool/bench_serialize.py, round trip of one
#: float64 array, median): 64 KiB 105 us in band vs 280 us out of band; 256 KiB
#: 402 vs 489; 1 MiB 1.37 vs 1.59 ms; 16 MiB 23.4 vs 24.2 ms. On this VM a
#: fresh shared segment costs ~1.3 ms/MiB to allocate and map (no huge pages
#: for shmem), so out of band never wins within one process; it wins when the
#: bytes would otherwise be copied through a ring twice more, and it keeps big
#: data off the rings (whose frames are limited). 256 KiB is where the extra
#: cost has fallen to ~20%.
OUT_OF_BAND_THRESHOLD = 256 * 1024

#: Offsets of buffers in the segment are aligned like malloc'd memory (and to
#: cache lines), so dtypes up to complex256 land aligned.
_ALIGN = 64

_PROTOCOL = 5
#: found in a pickle that references ``__main__`` or ``__mp_main__`` (the
#: script as multiprocessing's spawn children import it) by name
_MAIN = b"_main__"
_MAIN_NAMES = frozenset({"__main__", "__mp_main__"})
_OOB_MARKER = 0x53  # b"S"
_HEAD = struct.Struct("<H")
_COUNT = struct.Struct("<I")
_PAIR = struct.Struct("<QQ")

_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads


class Payload:
    """What :func:`dumps` returns.

    ``data``: the bytes to send. ``segments``: the shared-memory segments the
    receiver will attach. ``nbytes_out_of_band``: bytes that went through
    shared memory instead of ``data``. ``keepalive``: the ``shoal.shared``
    segments the pickle references (None if none).

    The sender keeps **this Payload** alive until the receiver has called
    :func:`loads` (keeping only ``.segments`` is not enough when
    ``keepalive`` is set: an array the user dropped after submitting would
    vanish before the worker attaches it). Dropping the Payload returns a big
    segment to the recycler (see ``_Arena``).
    """

    __slots__ = ("data", "segments", "nbytes_out_of_band", "keepalive", "__weakref__")

    def __init__(self, data: Any, segments: list, nbytes_out_of_band: int = 0,
                 keepalive: list | None = None) -> None:
        self.data = data
        self.segments = segments
        self.nbytes_out_of_band = nbytes_out_of_band
        #: shoal.shared segments referenced by the pickle (kept alive with the payload)
        self.keepalive = keepalive

    def release_names(self) -> None:
        """Hand the duty to unlink the out-of-band segments to the receiver,
        which must then call ``loads(data, adopt=True)``. For a sender that
        cannot know when the receiver has loaded (a worker returning a result).
        ``shoal.shared`` arrays this process created and the payload
        references are handed over too: a task may create one and return it."""
        for seg in self.segments:
            seg.release_name()
        for shared_seg in self.keepalive or ():
            if shared_seg.seg.owns_name:
                shared_seg.seg.release_name()

    def __repr__(self) -> str:
        return (f"Payload({len(self.data)} bytes inline, {len(self.segments)} segment(s), "
                f"{self.nbytes_out_of_band} bytes out of band)")


# --------------------------------------------------------------------- dumps

class _Collector:
    """buffer_callback of one dumps(): keeps big buffers for the segment."""

    __slots__ = ("buffers", "nbytes", "threshold")

    def __init__(self, threshold: int) -> None:
        self.buffers: list = []
        self.nbytes = 0
        self.threshold = threshold

    def __call__(self, pb: pickle.PickleBuffer) -> bool:
        # Returning True serializes the buffer in band; False keeps it for us.
        m = pb.raw()  # contiguous bytes view (numpy only offers contiguous buffers)
        n = m.nbytes
        if n < self.threshold:
            return True
        self.buffers.append(m)
        self.nbytes += n
        return False


def _describe(obj: Any, limit: int = 200) -> str:
    try:
        r = repr(obj)
    except Exception as exc:  # a repr that fails must not hide the real error
        r = f"<repr failed: {type(exc).__name__}>"
    if len(r) > limit:
        r = r[: limit - 3] + "..."
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__} {r}"


def _children(obj: Any, path: str):
    """(path, child) pairs to search for the object that cannot be pickled."""
    if isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield f"{path}[{i}]", x
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{path}[{k!r}]", v
    elif isinstance(obj, (set, frozenset)):
        for x in obj:
            yield f"{path}{{...}}", x
    else:
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict):
            for k, v in state.items():
                yield f"{path}.{k}", v
        # functions: the culprit is usually something they close over
        cells = getattr(obj, "__closure__", None)
        code = getattr(obj, "__code__", None)
        if cells and code is not None:
            for name, cell in zip(code.co_freevars, cells):
                try:
                    yield f"{path}.<closure {name}>", cell.cell_contents
                except ValueError:  # empty cell
                    pass


def _picklable(obj: Any) -> bool:
    from . import _byvalue

    try:
        _byvalue.dumps(obj, _PROTOCOL, buffer_callback=lambda b: False)
        return True
    except Exception:
        return False


def _culprit(obj: Any, path: str = "obj", depth: int = 0) -> tuple[str, Any]:
    """The innermost object under ``obj`` that cannot be pickled (error path only)."""
    if depth < 8:
        for child_path, child in _children(obj, path):
            if not _picklable(child):
                return _culprit(child, child_path, depth + 1)
    return path, obj


def _fail(obj: Any, exc: BaseException) -> SerializationError:
    try:
        path, bad = _culprit(obj)
    except Exception:  # pragma: no cover - the search itself must never mask the error
        path, bad = "obj", obj
    where = "" if path == "obj" else f" (at {path})"
    return serialization_error(f"cannot serialize {_describe(bad)}{where}: "
                               f"{type(exc).__name__}: {exc}", type(exc))


def _cloudpickle_dumps(obj: Any, callback: Any) -> bytes:
    from . import _byvalue

    return _byvalue.dumps(obj, _PROTOCOL, callback)


# Functions and classes that must travel by value (defined in __main__, a
# notebook, lambdas, closures) are cloudpickled once per object and the bytes
# reused: the sender keeps fn -> (blob, names of its globals, their ids); the
# receiver keeps blob -> rebuilt object. A task f(i) with f in __main__ then
# costs a cache lookup, not a cloudpickle run. A global the function uses that
# is rebound (x = ...) invalidates the entry and the new blob overwrites that
# name in the receiver; one mutated in place in the driver is not seen (as
# with any function a worker imports by name: it sees its own globals). In the
# receiver the rebuilt functions of one module share one namespace (see
# _byvalue.py): what an initializer sets there, the tasks see.
_BY_VALUE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()
_REBUILT: dict = {}
_REBUILT_MAX = 256


def _global_ids(fn: Any, names: tuple) -> tuple:
    g = getattr(fn, "__globals__", None)
    if g is None or not names:
        return ()
    return tuple(id(g.get(n)) for n in names)


class _Blob:
    """Stands for a function/class in a pickle: rebuilt from its cloudpickle
    bytes by the receiver. ``mains``: how often b"__main__" occurs in them."""

    __slots__ = ("blob", "mains", "names", "ids")

    def __init__(self, blob: bytes, names: tuple, ids: tuple) -> None:
        self.blob = blob
        self.mains = blob.count(_MAIN)
        self.names = names
        self.ids = ids

    def __reduce__(self) -> Any:
        return _from_blob, (self.blob,)


def _blob_ref(obj: Any) -> _Blob:
    ref = _BY_VALUE.get(obj)
    if ref is not None and (not ref.names or _global_ids(obj, ref.names) == ref.ids):
        return ref
    from . import _byvalue

    code = getattr(obj, "__code__", None)
    names = tuple(code.co_names) if code is not None else ()
    changed = _byvalue.changed_names(obj) if code is not None else ()
    ref = _Blob(_byvalue.dumps(obj, _PROTOCOL, changed=changed), names,
                _global_ids(obj, names))
    try:
        _BY_VALUE[obj] = ref
    except TypeError:  # not weak-referenceable: no cache
        pass
    return ref


def _from_blob(blob: bytes) -> Any:
    """Runs in the receiver: the object a by-value blob stands for (cached)."""
    obj = _REBUILT.get(blob)
    if obj is None:
        obj = _pickle_loads(blob)
        if len(_REBUILT) >= _REBUILT_MAX:
            _REBUILT.pop(next(iter(_REBUILT)))
        _REBUILT[blob] = obj
    return obj


def _needs_value(obj: Any) -> bool:
    """A function or class that a fresh interpreter could not import by name."""
    if not isinstance(obj, (_FunctionType, type)):
        return False
    if getattr(obj, "__module__", None) in _MAIN_NAMES:
        return True
    q = getattr(obj, "__qualname__", "")
    return "<" in q  # <lambda>, <locals>


class _ByValuePickler(pickle.Pickler):
    """The C pickler, except that functions/classes from __main__, lambdas and
    closures go by value (cached cloudpickle bytes)."""

    def reducer_override(self, obj: Any) -> Any:
        if _needs_value(obj):
            return _from_blob, (_blob_ref(obj).blob,)
        return NotImplemented


def _by_value_dumps(obj: Any, callback: Any) -> bytes:
    f = io.BytesIO()
    _ByValuePickler(f, _PROTOCOL, buffer_callback=callback).dump(obj)
    return f.getvalue()


def dumps(obj: Any, *, threshold: int = OUT_OF_BAND_THRESHOLD,
          max_inline: int | None = None) -> Payload:
    """Serialize ``obj`` for another process; see the module docstring.

    ``threshold``: buffers of at least this many bytes go out of band.
    ``max_inline``: if the pickle stream itself would be longer (a list of a
    million floats has no buffer to take out), it goes into the segment too,
    so ``len(Payload.data)`` stays small (a few hundred bytes): for a channel
    with a size limit per message.

    Raises :class:`shoal.SerializationError` naming the object that cannot be
    pickled (type and truncated repr), chained to the original error.
    """
    collector = _Collector(threshold)
    # shoal.shared registers its tracker when imported; without it no
    # SharedArray exists and there is nothing to keep alive.
    stack = _tracker.stack if _tracker is not None else None
    if stack is not None:
        stack.append([])
        depth = len(stack)
    try:
        try:
            target, allowed = obj, 0
            if type(obj) is tuple and obj and _needs_value(obj[0]):
                # The engine's (fn, args, ...) with fn from __main__/a lambda:
                # its cached bytes stand in for it and the C pickler does the rest.
                ref = _blob_ref(obj[0])
                target, allowed = (ref,) + obj[1:], ref.mains
            data = _pickle_dumps(target, _PROTOCOL, buffer_callback=collector)
            if _MAIN in data and (not allowed or data.count(_MAIN) > allowed):
                # Something is pickled by reference to __main__ or __mp_main__
                # (a function or class defined in a script or notebook): a
                # fresh worker has a different __main__, so send it by value. A false positive
                # (the string "__main__" in the data) only costs the slow path.
                raise pickle.PicklingError("reference to __main__")
        except Exception:
            collector = _Collector(threshold)
            if stack is not None:
                stack[depth - 1] = []
            try:
                try:
                    data = _by_value_dumps(obj, collector)
                except RecursionError:
                    raise
                except Exception:
                    # Something else only cloudpickle can do (its dispatch table
                    # covers more than functions and classes): the slow way.
                    collector = _Collector(threshold)
                    if stack is not None:
                        stack[depth - 1] = []
                    data = _cloudpickle_dumps(obj, collector)
            except RecursionError as exc:
                raise SerializationError(
                    f"cannot serialize {_describe(obj)}: too deeply nested ({exc})") from exc
            except Exception as exc:
                raise _fail(obj, exc) from exc
    finally:
        if stack is not None:
            refs = stack[depth - 1] or None
            del stack[depth - 1:]
        else:
            refs = None
    if not collector.buffers and (max_inline is None or len(data) <= max_inline):
        return Payload(data, [], 0, refs)
    return _out_of_band(data, collector.buffers, collector.nbytes, refs,
                        max_inline is not None and len(data) > max_inline)


# ----------------------------------------------------- the segment recycler
# A fresh segment costs ~1.3 ms/MiB here to allocate and map (page faults in
# the sender, and again in the receiver), ten times the copy itself. So the
# sender recycles the segments of dropped payloads, and receivers keep their
# mappings: a second 64 MiB array sent to the same worker costs one memcpy.
#
# Safety: the first 64 bytes of a segment hold a u64 `in_use` word.
#   written by the sender: 1 just before it (re)fills the segment;
#   written by the receiver: 0 once every object rebuilt over the buffers is
#     gone (a finalizer on the ctypes objects exporting them);
#   read by the sender: it refills only a segment whose word is 0.
# The receiver's last read of the buffers precedes its store of 0 and the
# sender's load of 0 precedes its refill (x86 keeps loads before later stores;
# in practice the two are milliseconds apart). A payload loaded twice, or
# never, keeps the word at 1 and its segment is only ever unlinked.

_HEADER = 64
RECYCLE_MIN = 1 << 20          # smaller segments are cheap enough to make anew
#: free segments a sender keeps (and mappings a receiver keeps), in bytes;
#: SHOAL_SEGMENT_CACHE_BYTES=0 turns recycling off.
ARENA_MAX_BYTES = int(os.environ.get("SHOAL_SEGMENT_CACHE_BYTES", 1 << 30))
ARENA_MAX_SEGMENTS = 32
RECEIVER_MAX_MAPPINGS = 32


def _word(seg: Any) -> Any:
    import numpy as np

    return np.ndarray((1,), dtype=np.uint64, buffer=seg.view(), offset=0)


class _Arena:
    """Sender side: free segments of dropped payloads, newest last."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list = []  # (seg, in_use word view)
        self.nbytes = 0

    def take(self, size: int) -> tuple | None:
        with self.lock:
            for i in range(len(self.free) - 1, -1, -1):
                seg, word = self.free[i]
                if size <= seg.size <= 2 * size and word[0] == 0:
                    del self.free[i]
                    self.nbytes -= seg.size
                    return seg, word
        return None

    def give(self, seg: Any, word: Any) -> None:
        # Only a segment whose name we still own can be refilled: after
        # release_names() the receiver adopts (unlinks) it.
        if not seg.owns_name or seg.size < RECYCLE_MIN or seg.size > ARENA_MAX_BYTES:
            return
        evicted = []
        with self.lock:
            self.free.append((seg, word))
            self.nbytes += seg.size
            while self.nbytes > ARENA_MAX_BYTES or len(self.free) > ARENA_MAX_SEGMENTS:
                old, _ = self.free.pop(0)
                self.nbytes -= old.size
                evicted.append(old)
        for old in evicted:
            old.unlink()

    def clear(self) -> int:
        with self.lock:
            free, self.free, self.nbytes = self.free, [], 0
        for seg, _ in free:
            seg.unlink()
        return len(free)


_ARENA = _Arena()
# Receiver side: segments mapped by name (kept while their name exists).
_MAPPED: dict = {}
_MAPPED_LOCK = threading.Lock()


def trim_receiver_mappings() -> int:
    """Drop this receiver's mappings of segments whose name is gone (their
    memory is freed once nothing here uses it). Returns how many."""
    with _MAPPED_LOCK:
        gone = [k for k in _MAPPED if not os.path.exists("/dev/shm" + k)]
        for name in gone:
            del _MAPPED[name]
    return len(gone)


def clear_segment_cache() -> int:
    """Unlink the sender's free segments and drop the receiver's mappings of
    segments whose name is gone. Returns how many were released."""
    return _ARENA.clear() + trim_receiver_mappings()


atexit.register(_ARENA.clear)


def _attach(name: str) -> Any:
    seg = _MAPPED.get(name)
    if seg is not None:
        return seg
    from . import _core

    with _MAPPED_LOCK:
        for old in [k for k in _MAPPED if not os.path.exists("/dev/shm" + k)]:
            del _MAPPED[old]
        seg = _core.SharedSegment.attach(name)
        if seg.size >= RECYCLE_MIN and ARENA_MAX_BYTES > 0:
            # Only segments a sender may recycle are worth keeping mapped.
            total = seg.size + sum(m.size for m in _MAPPED.values())
            while _MAPPED and (len(_MAPPED) >= RECEIVER_MAX_MAPPINGS or total > ARENA_MAX_BYTES):
                total -= _MAPPED.pop(next(iter(_MAPPED))).size
            _MAPPED[name] = seg
        return seg


def _release(word: Any, seg: Any) -> None:
    # Every object over the buffers is gone: the sender may refill.
    word[0] = 0


def release_segment(seg: Any) -> None:
    """What a receiver's _release does, for a sender that forwards a
    segment's bytes (the mpi transport): its buffers are not in use here."""
    _release(_word(seg), seg)


def is_out_of_band(data: Any) -> bool:
    """Whether a payload's buffers lie in a shared segment (wire format above)."""
    return len(data) > 3 and data[0] == _OOB_MARKER


def out_of_band_extent(data: Any) -> tuple[str, int]:
    """(segment name, bytes of the segment the payload uses) of an
    out-of-band payload: what a transport that cannot share the segment
    must carry along."""
    (n,) = _HEAD.unpack_from(data, 1)
    name = bytes(data[3: 3 + n]).decode()
    pos = 3 + n
    (count,) = _COUNT.unpack_from(data, pos)
    pos += _COUNT.size
    count += data[pos]  # (+1 when the pickle stream is in the segment too)
    pos += 1
    end = _HEADER
    for _ in range(count):
        off, length = _PAIR.unpack_from(data, pos)
        pos += _PAIR.size
        end = max(end, off + length)
    return name, end


def out_of_band_renamed(data: Any, name: str) -> bytes:
    """The same out-of-band payload over a copy of its segment named ``name``."""
    (n,) = _HEAD.unpack_from(data, 1)
    new = name.encode()
    return bytes((_OOB_MARKER,)) + _HEAD.pack(len(new)) + new + bytes(data[3 + n:])


def _out_of_band(data: bytes, buffers: list, nbytes: int, refs: list | None,
                 pickle_too: bool) -> Payload:
    import numpy as np

    from . import _core

    if pickle_too:  # the pickle stream itself goes last into the segment
        buffers = buffers + [memoryview(data)]
    offsets = []
    pos = _HEADER
    for m in buffers:
        offsets.append(pos)
        pos += -(-m.nbytes // _ALIGN) * _ALIGN
    reused = _ARENA.take(pos)
    if reused is None:
        # Only the header's memory now: the buffers get theirs from write()
        # (which reports a full /dev/shm as OSError), unzeroed. The gaps
        # between buffers are under _ALIGN bytes, so every page ends up
        # written: a later refill of this segment through the mapping (the
        # recycler) never touches a page without memory (that would be a
        # SIGBUS on a full /dev/shm, not an OSError).
        seg = _core.SharedSegment.create(pos, _HEADER)
        word = _word(seg)
    else:
        seg, word = reused
    try:
        word[0] = 1
        if reused is None:
            # Fresh pages, filled through the file: no page fault per 4 KiB
            # in this process (twice as fast as a copy through the mapping).
            for off, m in zip(offsets, buffers):
                seg.write(off, m)
        else:
            dst = seg.view()
            for off, m in zip(offsets, buffers):
                dst[off: off + m.nbytes] = np.frombuffer(m, dtype=np.uint8)
            del dst
        name = seg.name.encode()
        head = [bytes((_OOB_MARKER,)), _HEAD.pack(len(name)), name,
                _COUNT.pack(len(offsets) - pickle_too), bytes((pickle_too,))]
        head += [_PAIR.pack(off, m.nbytes) for off, m in zip(offsets, buffers)]
        if not pickle_too:
            head.append(data)
        out = b"".join(head)
    except BaseException:
        seg.unlink()
        raise
    payload = Payload(out, [seg], nbytes + (len(data) if pickle_too else 0), refs)
    if seg.size >= RECYCLE_MIN:
        weakref.finalize(payload, _ARENA.give, seg, word).atexit = False
    return payload


# --------------------------------------------------------------------- loads

def dumps_in_band(obj: Any) -> Payload:
    """dumps() keeping every buffer in the pickle: for a receiver that
    cannot map this node's shared segments (the mpi backend)."""
    return dumps(obj, threshold=1 << 62)


def loads(data: Any, *, adopt: bool = False) -> Any:
    """Rebuild the object that :func:`dumps` serialized into ``data``.

    Out-of-band buffers come back as views on the shared mapping (no copy);
    the mapping lives as long as any of them. ``adopt=True``: this receiver
    takes over the segment's name and unlinks it right after mapping (the
    sender called ``Payload.release_names()``).
    """
    if adopt and _tracker is None and (data[0] == _OOB_MARKER or b"shoal.shared" in data):
        # The result may hold a shoal.shared array handed over by its creator:
        # the module must be loaded to adopt it (it registers _tracker).
        from . import shared  # noqa: F401
    if adopt and _tracker is not None:
        _tracker.adopting += 1
        try:
            return _loads(data, True)
        finally:
            _tracker.adopting -= 1
    return _loads(data, adopt)


def _loads(data: Any, adopt: bool) -> Any:
    if data[0] != _OOB_MARKER:
        return _pickle_loads(data)
    mv = memoryview(data)
    (n,) = _HEAD.unpack_from(mv, 1)
    name = bytes(mv[3: 3 + n]).decode()
    pos = 3 + n
    (count,) = _COUNT.unpack_from(mv, pos)
    pos += _COUNT.size
    pickle_too = mv[pos]
    pos += 1
    if adopt:
        from . import _core

        seg = _core.SharedSegment.attach(name)
        # Mapped: the name is no longer needed, and removing it now means no
        # crash from here on can leak it.
        seg.unlink()
    else:
        seg = _attach(name)
    size = seg.size
    base = seg.address
    word = _word(seg)
    pins = []
    for _ in range(count + pickle_too):
        off, length = _PAIR.unpack_from(mv, pos)
        pos += _PAIR.size
        if off < _HEADER or off + length > size:
            raise SerializationError(
                f"corrupt payload: buffer [{off}, {off + length}) outside segment {name} "
                f"of {size} bytes")
        # A ctypes array exports each buffer: whatever numpy (or anyone)
        # rebuilds over it keeps it, and so the finalizer below, alive. The
        # finalizer holds `seg`, so the mapping outlives every such object.
        pins.append((ctypes.c_ubyte * length).from_address(base + off))
    _Countdown(len(pins), word, seg, pins)
    stream = pins.pop() if pickle_too else mv[pos:]
    return _pickle_loads(stream, buffers=pins)


class _Countdown:
    """Calls _release(word, seg) once all of `pins` have been collected."""

    __slots__ = ("left", "word", "seg", "lock")

    def __init__(self, n: int, word: Any, seg: Any, pins: list) -> None:
        self.left = n
        self.word = word
        self.seg = seg
        self.lock = threading.Lock()
        if n == 0:
            _release(word, seg)
        for p in pins:
            weakref.finalize(p, self.one_gone).atexit = False

    def one_gone(self) -> None:
        with self.lock:
            self.left -= 1
            last = self.left == 0
        if last:
            _release(self.word, self.seg)


# ------------------------------------------------ shoal.shared reference tracking

#: set by shoal.shared when imported: a thread-local with a ``stack`` of lists
#: into which SharedArray.__reduce_ex__ puts the segments a pickle references.
_tracker: Any = None
