"""Generic map over a backend's ``submit``: chunking, ordering, timeouts.

Backends with a faster path override ``Backend.map``; this is the reference
behaviour they must match.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any, Callable, Iterable, Iterator


def run_chunk(fn: Callable, chunk: list) -> list:
    """Runs in the worker: one task applies fn to every item of a chunk."""
    return [fn(x) for x in chunk]


def time_left(deadline: float | None) -> float | None:
    """Seconds left before a map's monotonic deadline (None: no limit);
    raises TimeoutError once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("map() timed out")
    return left


def auto_chunksize(n_items: int | None, workers: int) -> int:
    """Chunks small enough to balance load (about 4 per worker), large enough
    that per-task overhead vanishes. Unknown length: a moderate fixed size."""
    if n_items is None:
        return 64
    if n_items == 0:
        return 1
    return max(1, -(-n_items // (4 * max(1, workers))))


#: guided chunks only for maps of at least this many items per worker
GUIDED_MIN_ITEMS = 32


def use_guided(n_items: int, workers: int) -> bool:
    """Whether a map of n_items (a sequence that can be sliced, no chunk
    size given) is cut into guided_chunks: large enough, and not turned off
    with SHOAL_GUIDED=0."""
    return n_items >= GUIDED_MIN_ITEMS * max(1, workers) and \
        os.environ.get("SHOAL_GUIDED", "1") != "0"


def guided_chunks(seq: Any, n: int, workers: int) -> Iterator[Any]:
    """Slices of seq whose sizes shrink as the map goes (guided scheduling,
    as OpenMP's schedule(guided)): each is a 1/(4 x workers) share of the
    items not handed out yet, between n/(32 x workers) and n/(4 x workers).
    The first ones are as large as auto_chunksize's, so their overhead is the
    same; the last ones are 8 times smaller, so a worker that a busy
    neighbour slowed down, or that drew costlier items, holds up the end of
    the map by a small chunk instead of a quarter of its share."""
    w = max(1, workers)
    smallest = max(1, -(-n // (32 * w)))
    i = 0
    while i < n:
        size = max(smallest, -(-(n - i) // (4 * w)))
        yield seq[i: i + size]
        i += size


class GuardedSource:
    """The items of a user's iterable for a lazy map. An exception the
    iterable raises ends the items and is kept: the map yields the results of
    the items before it, then raises it (as ``multiprocessing.Pool.imap``
    does), instead of losing those results."""

    __slots__ = ("it", "error")

    def __init__(self, iterable: Iterable) -> None:
        self.it = iter(iterable)
        self.error: BaseException | None = None

    def __iter__(self) -> "GuardedSource":
        return self

    def __next__(self) -> Any:
        if self.error is not None:
            raise StopIteration
        try:
            return next(self.it)
        except StopIteration:
            raise
        except Exception as exc:  # noqa: BLE001 - raised by raise_error, in its place
            self.error = exc
            raise StopIteration from None

    def raise_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc


def chunked(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def map_via_submit(backend: Any, fn: Callable, iterable: Iterable, *,
                   chunksize: int | None, ordered: bool,
                   timeout: float | None, eager: bool = False) -> Iterator[Any]:
    """eager: submit every chunk now, before returning (Executor.map's
    contract); otherwise a bounded window, filled as results are taken."""
    if chunksize is None:
        try:
            n = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            n = None
        chunksize = auto_chunksize(n, backend.workers)
    if chunksize < 1:
        raise ValueError(f"chunksize must be >= 1, got {chunksize}")
    deadline = None if timeout is None else time.monotonic() + timeout
    # Keep a bounded window in flight so an endless iterable does not exhaust memory.
    window = float("inf") if eager else max(2 * backend.workers, 8)
    source = GuardedSource(iterable)
    chunks = chunked(source, chunksize)
    pending: deque = deque()

    def fill() -> None:
        while len(pending) < window:
            chunk = next(chunks, None)
            if chunk is None:
                return
            pending.append(backend.submit(run_chunk, (fn, chunk)))

    def remaining() -> float | None:
        return time_left(deadline)

    if eager:
        try:
            fill()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return _results(pending, fill, ordered, remaining, source)


def _result_or_cancel(fut: Any, timeout: float | None) -> Any:
    """fut.result(timeout), cancelling fut if that raises (a timeout). The
    future is no local of the caller's frame, which ends up in the traceback
    of the exception the future holds (concurrent.futures does the same)."""
    try:
        try:
            return fut.result(timeout)
        except BaseException:
            fut.cancel()
            raise
    finally:
        del fut


def _next_done(pending: deque, timeout: float | None) -> Any:
    """The first of pending (in order) that is done, taken out of it."""
    done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
    if not done:
        raise TimeoutError("map() timed out")
    fut = next(f for f in pending if f in done)
    pending.remove(fut)
    return fut


def _results(pending: deque, fill: Callable, ordered: bool,
             remaining: Callable, source: GuardedSource) -> Iterator[Any]:
    try:
        fill()
        while pending:
            left = remaining()  # first: past the deadline, every future is still in pending
            if ordered:
                part = _result_or_cancel(pending.popleft(), left)
            else:
                part = _result_or_cancel(_next_done(pending, left), None)
            fill()
            yield from part
            part = None
        source.raise_error()  # the user's iterable raised after these items
    finally:
        for fut in pending:
            fut.cancel()
