"""The task ledger (python/shoal/_engine.py) over a fake transport, in one process.

FakeChannel has PoolChannel's verbs over deques; FakeEngine is a transport
of the ledger whose "worker processes" are threads of this process: each
takes frames off its slot's task ring one at a time, runs them, pushes one
Result/Failure frame per task and rings the doorbell. A worker "dies" when a
task raises Die (an exit with a code while it holds the task) or when the
ledger kills it (_kill: it stops once its current function returns, without
a result, as killed by SIGKILL). What this fake does is what every transport
(shared-memory rings, MPI) must do for the ledger; the ledger's code is the
real one, nothing of it is mocked.
"""

from __future__ import annotations

import functools
import itertools
import signal
import threading
import time
from collections import deque
from concurrent.futures import CancelledError

import pytest

from shoal import _core, _serialize
from shoal._engine import (BATCH, CALL, CONTROL, FAILURE, FUNCTION_DEF, INDIRECT, RESULT,
                           Engine)
from shoal._errors import BrokenPool, RemoteTraceback, TaskTimeout, WorkerLost

_here = threading.local()  # .worker: the FakeWorker running this thread


class Die(BaseException):
    """Raised by a task: its worker exits with `code`, holding the task."""

    def __init__(self, code: int = 3) -> None:
        super().__init__(code)
        self.code = code


class FakeChannel:
    """PoolChannel's verbs, in memory. `depth`: frames a task ring holds (a
    full ring makes the ledger keep tasks in its backlog)."""

    def __init__(self, slots: int, depth: int = 1024, max_payload: int = 1 << 20) -> None:
        self.max_payload = max_payload
        self.depth = depth
        self.cond = threading.Condition()
        self.tasks = [deque() for _ in range(slots)]
        self.results = [deque() for _ in range(slots)]
        self.current = [(0, 0)] * slots   # (task id or 0, start ns): slot_state
        self.took = [0] * slots           # average task ns: task_ns
        self.asleep = [False] * slots     # the worker waits for frames
        self.pids = [0] * slots
        self.bell = 0
        self.is_shutdown = False

    # ---- driver
    def push_tasks(self, slot: int, frames: list, start: int = 0) -> int:
        with self.cond:
            ring = self.tasks[slot]
            i = start
            while i < len(frames) and len(ring) < self.depth:
                ring.append(frames[i])
                i += 1
            self.cond.notify_all()
            return i

    def push_task(self, slot: int, tid: int, kind: int, flags: int, data: bytes) -> bool:
        return self.push_tasks(slot, [(tid, kind, flags, data)]) == 1

    def drain_slot(self, slot: int) -> list:
        with self.cond:
            out = list(self.results[slot])
            self.results[slot].clear()
            return out

    def drain_by_slot(self) -> list:
        with self.cond:
            out = [(i, list(r)) for i, r in enumerate(self.results) if r]
            for r in self.results:
                r.clear()
            return out

    def doorbell(self) -> int:
        return self.bell

    def ring_doorbell(self) -> None:
        with self.cond:
            self.bell += 1
            self.cond.notify_all()

    def wait_driver(self, seen: int, timeout: float | None, spin_us: float = 50.0) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: self.bell != seen or any(self.results), timeout)

    def pick_slot(self, max_queued: int, max_task_ns: int) -> int:
        """As PoolChannel::pick_slot: the first awake worker of short tasks
        with a short queue, else -1 - the least loaded slot."""
        least, least_load = 0, 1 << 62
        now = _core.monotonic_ns()
        for i in range(len(self.tasks)):
            queued = len(self.tasks[i])
            running, started = self.current[i]
            load = queued + (1 if running else 0)
            if load < least_load:
                least, least_load = i, load
            took = self.took[i]
            if self.asleep[i] or took == 0 or took >= max_task_ns or queued > max_queued:
                continue
            if running and now - started > 2 * took:
                continue
            return i
        return -1 - least

    def queued(self, slot: int) -> int:
        return len(self.tasks[slot])

    def task_ns(self, slot: int) -> int:
        return self.took[slot]

    def slot_state(self, slot: int) -> tuple:
        return self.current[slot]

    def reset_slot(self, slot: int) -> None:
        with self.cond:
            self.tasks[slot].clear()
            self.results[slot].clear()
            self.current[slot] = (0, 0)
            self.took[slot] = 0
            self.asleep[slot] = False

    def set_pid(self, slot: int, pid: int) -> None:
        self.pids[slot] = pid

    def shutdown(self) -> None:
        with self.cond:
            self.is_shutdown = True
            self.cond.notify_all()

    # ---- worker
    def take(self, slot: int, gone: threading.Event):
        """The next frame of slot's task ring; None on shutdown or a kill."""
        with self.cond:
            ring = self.tasks[slot]
            while not ring and not self.is_shutdown and not gone.is_set():
                self.asleep[slot] = True
                self.cond.wait(0.05)
            self.asleep[slot] = False
            if self.is_shutdown or gone.is_set():
                return None
            return ring.popleft()

    def push_result(self, slot: int, tid: int, kind: int, flags: int, data: bytes) -> None:
        with self.cond:
            self.results[slot].append((tid, kind, flags, data))
            self.bell += 1
            self.cond.notify_all()


class FakeWorker:
    """One worker "process": a thread serving one slot until it dies."""

    def __init__(self, engine: "FakeEngine", slot: int, pid: int) -> None:
        self.engine = engine
        self.chan = engine.chan
        self.slot = slot
        self.pid = pid
        self.killed = threading.Event()
        self.fns: dict = {}
        self.done = 0
        self.thread = threading.Thread(target=self.serve, name=f"fake-worker-{pid}", daemon=True)
        self.thread.start()

    def send(self, tid: int, kind: int, data: bytes) -> None:
        flags = 0
        if len(data) > self.chan.max_payload // 2:
            data, flags = self.engine.store_blob(data), INDIRECT
        self.chan.push_result(self.slot, tid, kind, flags, data)

    def send_failure(self, tid: int, exc: BaseException) -> None:
        self.send(tid, FAILURE, bytes(_serialize.dumps((exc, f"in fake worker {self.pid}")).data))

    def serve(self) -> None:
        _here.worker = self
        try:
            while True:
                frame = self.chan.take(self.slot, self.killed)
                if frame is None:
                    break
                self.handle(*frame)
                max_tasks = self.engine.max_tasks
                if max_tasks and self.done >= max_tasks:
                    self.engine.exited(self, 0, 0)  # recycled, as a real one exits
                    return
        except Die as d:
            self.engine.exited(self, d.code, 0)
            return
        if self.killed.is_set():
            self.engine.exited(self, 0, signal.SIGKILL)

    def cancelled(self, tid: int) -> bool:
        upto, exempt = self.engine.mark
        return tid <= upto and exempt.get(self.slot) != tid

    def handle(self, tid: int, kind: int, flags: int, data: bytes) -> None:
        if flags & INDIRECT:
            data = self.engine.blobs.pop(data)
        if kind == CONTROL:
            msg = _serialize.loads(data)
            if "forget" in msg:
                for fn_id in msg["forget"]:
                    self.fns.pop(fn_id, None)
                return
            if msg.get("init") is not None:
                try:
                    initializer, initargs = _serialize.loads(msg["init"])
                    initializer(*initargs)
                except Exception as exc:  # noqa: BLE001
                    self.send_failure(0, exc)
                    return
            self.send(0, CONTROL, b"ready")
        elif kind == FUNCTION_DEF:
            self.fns[tid] = _serialize.loads(data)
        elif kind == CALL:
            if self.cancelled(tid):
                self.send(tid, CONTROL, b"cancelled")
                return
            fn_id, args, kwargs = _serialize.loads(data)
            self.run(tid, self.fns[fn_id], args, kwargs or {})
        elif kind == BATCH:
            fn_id, ids, items = _serialize.loads(data)
            for tid, item in zip(ids, items):
                if self.cancelled(tid):
                    self.send(tid, CONTROL, b"cancelled")
                else:
                    self.run(tid, self.fns[fn_id], (item,), {})

    def run(self, tid: int, fn, args: tuple, kwargs: dict) -> None:
        chan, slot = self.chan, self.slot
        start = _core.monotonic_ns()
        chan.current[slot] = (tid, start)
        try:
            value = fn(*args, **kwargs)
        except Die:
            raise  # the worker dies holding the task
        except Exception as exc:  # noqa: BLE001
            if not self.killed.is_set():
                self.send_failure(tid, exc)
        else:
            if not self.killed.is_set():  # killed: no result, ever
                self.send(tid, RESULT, bytes(_serialize.dumps(value).data))
        took = _core.monotonic_ns() - start
        chan.took[slot] = took if chan.took[slot] == 0 else (7 * chan.took[slot] + took) // 8
        chan.current[slot] = (0, 0)
        self.done += 1


class FakeEngine(Engine):
    """The ledger over FakeChannel: the hooks of the module docstring."""

    def __init__(self, workers: int = 2, *, depth: int = 1024, retries: int = 0,
                 max_tasks: int | None = None, initializer=None, initargs: tuple = (),
                 max_payload: int = 1 << 20) -> None:
        super().__init__(FakeChannel(workers, depth, max_payload), workers, initializer,
                         initargs, max_tasks, retries)
        self.exit_lock = threading.Lock()
        self.exits: list = []
        self.procs: dict[int, FakeWorker] = {}
        self.next_pid = itertools.count(1000)
        self.blobs: dict[bytes, bytes] = {}
        self.mark: tuple = (0, {})
        self.swept: list[int] = []
        for s in self.slots:
            self._start_worker(s)
        self._start_collector()

    def exited(self, worker: FakeWorker, code: int, sig: int) -> None:
        with self.exit_lock:
            self.exits.append((worker.slot, worker.pid, code, sig))
        self.chan.ring_doorbell()

    def store_blob(self, data: bytes) -> bytes:
        ref = b"blob-%d" % next(self.next_pid)
        self.blobs[ref] = data
        return ref

    # ---- the hooks
    def _take_exits(self) -> list:
        with self.exit_lock:
            out, self.exits = self.exits, []
        return out

    def _start_worker(self, s) -> None:
        self._reset_slot(s)
        s.pid = next(self.next_pid)
        self.chan.set_pid(s.index, s.pid)
        msg = {"init": self.init_data}
        self.chan.push_tasks(s.index, [(0, CONTROL, 0, bytes(_serialize.dumps(msg).data))])
        self.procs[s.pid] = FakeWorker(self, s.index, s.pid)

    def _kill(self, pid: int) -> None:
        self.procs[pid].killed.set()

    def _indirect(self, data: bytes) -> tuple:
        return self.store_blob(data), None

    def _load_indirect(self, ref: bytes) -> bytes:
        return self.blobs.pop(ref)

    def _sweep_dead(self, pids: list) -> None:
        self.swept.extend(pids)

    def _write_cancel_mark(self, upto: int, exempt: dict) -> None:
        self.mark = (upto, dict(exempt))

    def _stop_workers(self, grace: float) -> None:
        for w in list(self.procs.values()):
            w.killed.set()
        for w in list(self.procs.values()):
            if w.thread is not threading.current_thread():
                w.thread.join(grace + 1.0)


# ---------------------------------------------------------------- task bodies
def add(a, b):
    return a + b


def square(x):
    return x * x


def boom(x):
    raise ValueError(f"boom {x}")


def wait_for(gate: str, value):
    """Blocks until the test opens gate (a module-level Event by name), or
    its worker is killed."""
    while not _GATES[gate].wait(0.01):
        if _here.worker.killed.is_set():
            return None
    return value


_GATES: dict[str, threading.Event] = {}
_DEATHS: dict[str, int] = {}


def die_first(key: str, times: int, value):
    """Kills its worker the first `times` calls for key, then returns value."""
    n = _DEATHS.get(key, 0)
    if n < times:
        _DEATHS[key] = n + 1
        raise Die(3)
    return value


def die_on(key: str, item):
    """Kills its worker at item 3, the first time for key."""
    if item == 3 and key not in _DEATHS:
        _DEATHS[key] = 1
        raise Die(5)
    return item * 10


def hang():
    """Runs until its worker is killed."""
    _here.worker.killed.wait(30)
    return "not killed"


@pytest.fixture
def engines():
    made = []

    def make(*args, **kwargs) -> FakeEngine:
        eng = FakeEngine(*args, **kwargs)
        made.append(eng)
        return eng

    yield make
    for eng in made:
        eng.terminate()  # returns at once if the collector is closing it already
        assert eng.stopped
        for w in eng.procs.values():
            w.thread.join(5)
            assert not w.thread.is_alive(), f"fake worker {w.pid} outlived its pool"


@pytest.fixture
def gate():
    name = f"gate-{len(_GATES)}"
    _GATES[name] = threading.Event()
    yield name
    _GATES[name].set()


# ---------------------------------------------------------------- tests
def test_submit_results_and_remote_failures(engines):
    eng = engines(2)
    futs = [eng.submit(add, (i, 1), None, None) for i in range(2000)]
    assert [f.result(10) for f in futs] == [i + 1 for i in range(2000)]
    assert eng.submit(add, ("a", "b"), None, None).result(10) == "ab"
    assert eng.submit(add, (), {"a": [1], "b": [2]}, None).result(10) == [1, 2]
    fut = eng.submit(boom, (7,), None, None)
    with pytest.raises(ValueError, match="boom 7") as info:
        fut.result(10)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert not eng.tasks and not eng.backlog
    assert all(not s.tasks for s in eng.slots)
    assert all(s.ready for s in eng.slots)  # each answered its announcement


@pytest.mark.parametrize("chunksize", [1, 7, None])
@pytest.mark.parametrize("ordered", [True, False])
def test_map_with_chunks(engines, chunksize, ordered):
    eng = engines(3)
    out = list(eng.map(square, range(1000), chunksize, ordered, 30.0))
    if not ordered:
        out.sort()
    assert out == [x * x for x in range(1000)]
    # An iterator (no len, no slices) and map_list's chunks of result lists.
    assert list(eng.map(square, iter(range(100)), 9, True, 30.0)) == [x * x for x in range(100)]
    parts = [p for chunk in eng.map(square, range(500), chunksize, True, None, chunks=True)
             for p in chunk]
    assert [x for p in parts for x in p] == [x * x for x in range(500)]
    assert not eng.tasks and not eng.backlog


def test_map_item_failures_and_eager_maps(engines):
    eng = engines(2)
    it = eng.map(boom, [1, 2], 1, True, 30.0)
    with pytest.raises(ValueError, match="boom 1"):
        next(it)
    it.close()
    assert list(eng.map(square, list(range(50)), 4, True, 30.0, eager=True)) == \
        [x * x for x in range(50)]
    assert eng.wait_until(lambda: not eng.tasks, 10.0)


def test_backlog_when_the_rings_are_full(engines, gate):
    eng = engines(2, depth=2)
    futs = [eng.submit(wait_for, (gate, i), None, None) for i in range(40)]
    held = [len(s.tasks) for s in eng.slots]
    assert sum(held) <= 2 * 2 + 2  # at most a full ring each (+ the task taken)
    assert len(eng.backlog) >= 40 - sum(held)
    pending = [f for f in futs if not f.running() and not f.done()]
    assert len(pending) >= 30  # backlogged futures are PENDING: cancellable
    assert pending[-1].cancel()
    it = eng.map(square, range(200), 1, True, 30.0)  # map items wait behind them
    _GATES[gate].set()
    assert list(it) == [x * x for x in range(200)]
    assert [f.result(10) for f in futs[:-1]] == list(range(39))
    assert futs[-1].cancelled()
    assert eng.wait_until(lambda: not eng.tasks and not eng.backlog, 10.0)


def test_a_death_requeues_its_queued_tasks_and_retries_the_one_it_held(engines):
    eng = engines(1, retries=2)
    first_pid = eng.slots[0].pid
    dying = eng.submit(die_first, ("twice", 2, "survived"), None, None)
    others = [eng.submit(add, (i, 0), None, None) for i in range(20)]
    assert dying.result(10) == "survived"
    assert [f.result(10) for f in others] == list(range(20))
    assert dying.attempts == 2
    assert eng.slots[0].pid != first_pid  # replaced, on the same slot
    assert eng.wait_until(lambda: len(eng.swept) == 2, 5.0)
    assert first_pid in eng.swept
    # Past its retries a task fails with WorkerLost naming the exit.
    lost = eng.submit(die_first, ("thrice", 3, "never"), None, None)
    with pytest.raises(WorkerLost, match=r"exited with code 3 while running task") as info:
        lost.result(10)
    assert info.value.exitcode == 3
    assert eng.submit(add, (1, 1), None, None).result(10) == 2


@pytest.mark.parametrize("chunksize", [1, 4])
def test_a_death_in_a_map_reruns_only_that_task(engines, chunksize):
    eng = engines(2, retries=1)
    fn = functools.partial(die_on, f"retried-{chunksize}")
    assert list(eng.map(fn, range(100), chunksize, True, 30.0)) == [x * 10 for x in range(100)]
    assert len(eng.procs) == 3  # one replacement
    eng0 = engines(2, retries=0)
    fn = functools.partial(die_on, f"lost-{chunksize}")
    it = eng0.map(fn, range(10), chunksize, True, 30.0)
    before = 3 if chunksize == 1 else 0  # items 0-3 are one task of 4
    assert [next(it) for _ in range(before)] == [0, 10, 20][:before]
    with pytest.raises(WorkerLost, match="exited with code 5"):
        next(it)


def test_time_limit_kills_and_replaces_the_worker(engines):
    eng = engines(2)
    pid_before = {s.pid for s in eng.slots}
    t0 = time.monotonic()
    fut = eng.submit(hang, (), None, 0.2)
    with pytest.raises(TaskTimeout, match="ran past its time limit of 0.2 s"):
        fut.result(10)
    assert 0.2 <= time.monotonic() - t0 < 5.0
    assert {s.pid for s in eng.slots} != pid_before
    assert eng.submit(add, (2, 3), None, 1.0).result(10) == 5  # a limit it keeps
    assert not eng.timed


def test_cancel_running_and_cancel_backlogged(engines, gate):
    eng = engines(1, depth=1)
    running = eng.submit(hang, (), None, None)
    queued = eng.submit(wait_for, (gate, 1), None, None)  # on the ring (depth 1)
    backlogged = eng.submit(wait_for, (gate, 2), None, None)
    assert eng.wait_until(lambda: eng.chan.slot_state(0)[0] == running.id, 5.0)
    assert backlogged in eng.backlog and backlogged.cancel()
    assert eng.cancel_running(running)
    with pytest.raises(CancelledError):
        running.result(10)
    assert eng.slots[0].pid in eng.procs and not eng.procs[eng.slots[0].pid].killed.is_set()
    _GATES[gate].set()
    assert queued.result(10) == 1  # requeued from the killed worker, run by its replacement
    assert backlogged.cancelled()
    assert eng.wait_until(lambda: not eng.tasks, 5.0)


def test_shutdown_cancel_futures_cancels_queued_tasks(engines, gate):
    eng = engines(2, depth=4)
    futs = [eng.submit(wait_for, (gate, i), None, None) for i in range(30)]
    assert eng.wait_until(lambda: all(eng.chan.slot_state(i)[0] for i in range(2)), 5.0)
    eng.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError, match="after shutdown"):
        eng.submit(add, (1, 2), None, None)
    _GATES[gate].set()
    assert eng.wait_until(lambda: all(f.done() for f in futs), 10.0)
    ran = [f for f in futs if not f.cancelled()]
    # Each worker's running task and the one it was to start next, no more.
    assert 2 <= len(ran) <= 4
    assert all(f.result(0) == futs.index(f) for f in ran)
    # The collector closes it once no task is left (while no thread is in
    # wait_until: it stays out of a waiting thread's way).
    deadline = time.monotonic() + 10.0
    while not eng.stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    assert eng.stopped and eng.chan.is_shutdown


def test_shutdown_waits_then_stops_everything(engines):
    eng = engines(2)
    futs = [eng.submit(square, (i,), None, None) for i in range(100)]
    eng.shutdown(wait=True, cancel_futures=False)
    assert [f.result(0) for f in futs] == [i * i for i in range(100)]
    assert eng.stopped and eng.chan.is_shutdown
    assert not any(w.thread.is_alive() for w in eng.procs.values())


def test_terminate_fails_what_is_left_and_a_failing_initializer_breaks(engines, gate):
    eng = engines(1)
    fut = eng.submit(wait_for, (gate, 0), None, None)
    eng.terminate()
    with pytest.raises(BrokenPool, match="terminated"):
        fut.result(5)
    bad = engines(2, initializer=boom, initargs=(9,))
    with pytest.raises(BrokenPool, match="initializer raised ValueError: boom 9"):
        bad.submit(add, (1, 2), None, None).result(10)
    with pytest.raises(BrokenPool):
        bad.submit(add, (1, 2), None, None)


def test_oversize_frames_go_indirect_both_ways_and_workers_recycle(engines):
    eng = engines(2, max_payload=4096, max_tasks=5)
    big = "x" * 10_000
    assert eng.submit(add, (big, "y"), None, None).result(10) == big + "y"
    assert [eng.submit(square, (i,), None, None).result(10) for i in range(30)] == \
        [i * i for i in range(30)]
    assert len(eng.procs) >= 2 + 30 // 5 - 1  # budgets ran out: replaced
    assert not eng.blobs
