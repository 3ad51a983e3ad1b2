"""PLACEHOLDER serialization seam (plain cloudpickle, no out-of-band buffers).

The data helper's version (pickle protocol 5, out-of-band buffers in shared
memory, SerializationError naming the object) replaces this file at merge; the
contract below is what the process engine relies on:

    payload = dumps(obj) -> Payload(.data bytes, .segments list, .nbytes_out_of_band int)
    obj = loads(data, *, adopt=False)
"""

from __future__ import annotations

import pickle
from typing import Any

from ._errors import SerializationError


class Payload:
    __slots__ = ("data", "segments", "nbytes_out_of_band")

    def __init__(self, data: bytes, segments: list | None = None, nbytes_out_of_band: int = 0):
        self.data = data
        self.segments = segments or []
        self.nbytes_out_of_band = nbytes_out_of_band

    def release_names(self) -> None:
        for seg in self.segments:
            seg.release_name()


def dumps(obj: Any) -> Payload:
    try:
        data = pickle.dumps(obj, 5)
        if b"__main__" in data:
            raise pickle.PicklingError("reference to __main__")
    except Exception:
        import cloudpickle

        try:
            data = cloudpickle.dumps(obj, 5)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {type(obj).__qualname__} {obj!r:.200}: "
                f"{type(exc).__name__}: {exc}") from exc
    return Payload(data)


def loads(data: Any, *, adopt: bool = False) -> Any:
    return pickle.loads(data)
