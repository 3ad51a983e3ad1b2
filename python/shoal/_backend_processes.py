"""The process backend: Python callables on every core, through shared memory.

This module is the shared-memory transport of the task ledger
(python/shoal/_engine.py, which draws the data flow of a task and lists the
hooks): a PoolChannel in memfd control memory (one TaskRing and one result
ring per worker slot, a futex doorbell for the driver), worker processes
started by fork (the driver runs no thread yet), by the pool's fork server
(pools that recycle workers) or as fresh interpreters (python -m
shoal._worker) by the C++ WorkerSupervisor, which polls one pidfd per worker
and rings the doorbell on a death; kills through pidfds; frames over half a
ring in shared segments (INDIRECT); the cancel mark.

  driver (_engine.Engine)           chan: PoolChannel              worker process
  push_tasks/push_task ──────────> TaskRing[slot] ──────────────> next_tasks, handle
    (futex wake only if it sleeps)                                 set_current(task)
  drain_by_slot <───────────────── result ring[slot] <──────────── push_result
    (doorbell rung only if a driver thread sleeps on it)
  _take_exits <── WorkerSupervisor.take_exits (pidfds) + the fork server's reaps

  shutdown(cancel_futures=True): for tasks already on a ring (or taken, not
  started) the driver writes a cancel mark that each worker reads before
  starting a frame (see cancel_board): it answers a Control frame
  instead of running it.
"""

from __future__ import annotations

import os
import signal as _signal
import sys
import threading
import time
import weakref
from typing import Any, Callable

from . import _serialize
from ._backend import register
from ._engine import CONTROL, Engine, EngineBackend, _Slot

#: per-ring bytes (each worker has a task ring and a result ring)
RING_BYTES = 1 << 20


def _read_indirect(name: bytes) -> bytes:
    from . import _core

    seg = _core.SharedSegment.attach(name.decode())
    seg.adopt_name()
    seg.unlink()
    v = seg.view()
    n = int.from_bytes(bytes(v[:8]), "little")
    return bytes(v[8: 8 + n])


def _pidfd_kill(pidfd: int) -> None:
    """SIGKILL through a pidfd; nothing if the process has already gone."""
    try:
        _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
    except OSError:
        pass


def cancel_board(core: Any, workers: int) -> tuple:
    """The cancel mark: int64s in a shared segment that only the driver
    writes, in shutdown(cancel_futures=True); each worker reads them
    before it starts a Call or a Batch frame (python/shoal/_worker.py:
    Worker.handle). [0]: every task id up to it is cancelled, except
    [1 + slot]: the one task that slot's worker was to start next, which
    still runs (as the call queue's tasks do in concurrent.futures: its
    Future said running()). For a cancelled one the worker sends back a
    Control frame instead of running it. So the tasks waiting on a
    worker's ring, or taken off it but not started, are cancelled too,
    not only the backlog's. [1 + slot] is written before [0], so a worker
    that sees the new mark sees its exemption too (x86 keeps stores in
    order; elsewhere a worker could miss it and cancel that task as
    well). A memoryview over a mmap of the segment's file: neither side
    needs numpy for it. Returns (segment, mmap, int64 view), or (None,
    None, None) (no mark: ring-queued tasks run) if /dev/shm has no room
    for it."""
    import mmap

    size = 8 * (1 + workers)
    try:
        seg = core.SharedSegment.create(size)
        fd = os.open("/dev/shm" + seg.name, os.O_RDWR | os.O_CLOEXEC)
        try:
            cmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
    except Exception:  # noqa: BLE001 - ENOSPC and the like: the pool works without
        return None, None, None
    return seg, cmap, memoryview(cmap).cast("q")


def indirect_segment(core: Any, size: int) -> tuple:
    """A shared segment for a frame payload of size bytes sent by reference
    (INDIRECT): its length first (8 bytes), as shoal._worker._read_indirect
    reads it. Returns (segment, a view of the payload's bytes)."""
    seg = core.SharedSegment.create(8 + size)
    v = seg.view()
    v[:8] = memoryview(size.to_bytes(8, "little"))
    return seg, v[8: 8 + size]


def worker_env(caps: dict) -> list[str]:
    """The environment of a spawned worker (python -m shoal._worker): this
    process's, the library thread caps, and this very shoal on its path."""
    env = dict(os.environ)
    env.update(caps)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in
                                        env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return [f"{k}={v}" for k, v in env.items()]


class _ServerGone(OSError):
    """The fork server died, closed its end or stopped answering."""


class _ForkServer:
    """The driver's end of a pool's fork server (python/shoal/_worker.py:
    run_fork_server, which describes the protocol). Plain pipes: the socket
    module's import alone took 6 ms of a 15 ms pool start. Used under the
    engine's lock only."""

    def __init__(self, pid: int, req_fd: int, rep_fd: int) -> None:
        self.pid = pid
        self.req_fd = req_fd
        self.rep_fd = rep_fd   # non-blocking
        self.buf = b""
        self.exits: list[tuple[int, int]] = []  # (pid, exit code or -signal) not handed out yet

    def _send(self, op: int, a: int) -> None:
        import struct

        os.write(self.req_fd, struct.pack("qqq", op, a, 0))

    def _records(self, wait_s: float) -> list[tuple[int, int, int]]:
        """Records that have arrived; waits up to wait_s for the first."""
        import select
        import struct

        from ._worker import ZY_RECORD

        if wait_s > 0 and len(self.buf) < ZY_RECORD:
            p = select.poll()
            p.register(self.rep_fd, select.POLLIN)
            p.poll(int(wait_s * 1000))
        while True:
            try:
                data = os.read(self.rep_fd, 64 * ZY_RECORD)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                if len(self.buf) < ZY_RECORD:
                    raise _ServerGone("the pool's fork server has gone")
                break
            self.buf += data
            if len(data) < 64 * ZY_RECORD:
                break
        out = []
        while len(self.buf) >= ZY_RECORD:
            out.append(struct.unpack_from("qqq", self.buf))
            self.buf = self.buf[ZY_RECORD:]
        return out

    def fork(self, slot: int) -> tuple[int, int]:
        """A new worker for slot: (pid, pidfd). _ServerGone if the server has
        died or does not answer; OSError if it could not fork this time."""
        from ._worker import ZY_ADOPTED, ZY_EXITED, ZY_FAILED, ZY_FORK, ZY_FORKED

        try:
            self._send(ZY_FORK, slot)
        except OSError as exc:  # EPIPE: it has gone
            raise _ServerGone("the pool's fork server has gone") from exc
        deadline = time.monotonic() + 30.0  # it answers in about a millisecond
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _ServerGone("the pool's fork server did not answer")
            for op, a, b in self._records(left):
                if op == ZY_EXITED:
                    self.exits.append((a, b))
                elif op == ZY_FAILED:
                    raise OSError(a, f"the pool's fork server could not fork: {os.strerror(a)}")
                elif op == ZY_FORKED:
                    # Not reaped before ADOPTED: the pid still names our worker.
                    pidfd = os.pidfd_open(a)
                    try:
                        self._send(ZY_ADOPTED, a)
                    except OSError as exc:
                        os.close(pidfd)
                        raise _ServerGone("the pool's fork server has gone") from exc
                    return a, pidfd

    def take_exits(self) -> list[tuple[int, int]]:
        """Deaths of its workers reported since the last call."""
        from ._worker import ZY_EXITED

        try:
            for op, a, b in self._records(0):
                if op == ZY_EXITED:
                    self.exits.append((a, b))
        except _ServerGone:
            pass  # its own death comes from the supervisor
        out, self.exits = self.exits, []
        return out

    def close(self, quit: bool = True) -> None:
        from ._worker import ZY_QUIT

        if quit:
            try:
                self._send(ZY_QUIT, 0)
            except OSError:
                pass
        for fd in (self.req_fd, self.rep_fd):
            try:
                os.close(fd)
            except OSError:
                pass


def _authkey() -> bytes:
    """The driver's multiprocessing authkey: a worker that unpickles a
    ``multiprocessing.Manager`` proxy connects to the manager with it, as
    multiprocessing's own children do (they inherit it)."""
    from multiprocessing import process

    return bytes(process.current_process().authkey)


class _Engine(Engine):
    """One process pool: the ledger (Engine) over a PoolChannel, its workers
    and their supervisor."""

    def __init__(self, workers: int, initializer: Callable | None, initargs: tuple,
                 max_tasks_per_worker: int | None, retries: int, ring_bytes: int) -> None:
        from . import _core

        _core.sweep_orphan_segments()
        self.caps = self._thread_caps(workers)  # first: its warning may be an error (-W error)
        super().__init__(_core.PoolChannel.create(workers, ring_bytes), workers, initializer,
                         initargs, max_tasks_per_worker, retries)
        self.cancel_seg = self.cancel_map = None
        self.cancel_mark = self._cancel_board()  # before the first worker is announced
        self.server: _ForkServer | None = None
        self.remote: dict[int, int] = {}  # pid -> pidfd of workers the fork server started
        self.pending_exits: list = []     # theirs, when the server died (see _fork_server_died)
        if _can_fork():
            # The driver runs no thread yet (checked): forking is safe and
            # skips an interpreter start per worker. A pool that recycles its
            # workers (max_tasks_per_worker) gets a fork server too, forked
            # first (it sleeps until it is asked, and the workers' forks then
            # leave the driver's pages shared once, not twice): its
            # replacements are forked from it in about a millisecond, instead
            # of fresh interpreters (about 50 ms of CPU each here). Other
            # pools do without: the server would cost their start about 2 ms
            # (the fork, and reaping it at the end) for deaths that are rare.
            # SHOAL_FORK_SERVER=1 gives every fork pool one, =0 none.
            want = os.environ.get("SHOAL_FORK_SERVER", "auto")
            if (want == "1" or (want == "auto" and max_tasks_per_worker)) and \
                    hasattr(os, "pidfd_open"):
                try:
                    self.server = self._fork_server(max_tasks_per_worker or 0)
                except OSError:
                    self.server = None
            # Each worker is announced at once, so the first can be ready
            # while the next is forked.
            try:
                for s in self.slots:
                    s.pid = self._fork_worker(s.index, max_tasks_per_worker or 0)
                    self._announce(s)
            except BaseException:
                # Not yet under a supervisor: end and reap the ones forked.
                helpers = [self.server.pid] if self.server is not None else []
                for pid in [s.pid for s in self.slots if s.pid] + helpers:
                    try:
                        os.kill(pid, _signal.SIGKILL)
                        os.waitpid(pid, 0)
                    except OSError:
                        pass
                if self.server is not None:
                    self.server.close(quit=False)
                raise
        self.sup = _core.WorkerSupervisor(self.chan)
        self._env: list[str] | None = None  # spawned workers' environment, on first use
        self.argv_base = [sys.executable, "-m", "shoal._worker", "--driver", str(os.getpid())]
        if max_tasks_per_worker:
            self.argv_base += ["--max-tasks", str(int(max_tasks_per_worker))]
        try:
            if self.server is not None:  # first: close() reaps what the supervisor has
                self.sup.adopt(-1, self.server.pid)  # slot -1: see _fork_server_died
            for s in self.slots:
                if s.pid == 0:
                    self._start_worker(s)
                else:
                    self.sup.adopt(s.index, s.pid)
        except BaseException:
            self.close(0)
            raise
        if self.server is None:
            # Then the supervisor is the only source of exits (pending_exits
            # fill only when a fork server dies): each pass calls its C method
            # itself, without the Python frame of _take_exits around it.
            self._take_exits = self.sup.take_exits
        _ENGINES.add(self)
        self._start_collector()

    # ------------------------------------------------------------ workers
    @staticmethod
    def _thread_caps(workers: int) -> dict:
        """The variables each worker gets: library threads = allocation CPUs //
        workers (the count default_workers() uses: SLURM, cgroup quota), for
        each library whose count the user did not set; a count the user set
        is left as it is, with one warning if it oversubscribes."""
        from .allocation import thread_caps, warn_thread_caps

        caps = thread_caps(workers)
        warn_thread_caps(caps)
        return caps.env

    def _fork_child(self, body: Callable[[set], int]) -> int:
        """Forks a child that runs body(signal mask to restore) and exits with
        its code, never returning here. SIGINT stays blocked across the fork
        until the child ignores it and has left the terminal's process group:
        a Ctrl-C now must not kill it."""
        old_mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
        try:
            pid = os.fork()
        except BaseException:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
            raise
        if pid == 0:
            from ._worker import exit_with

            def child() -> int:
                if self.server is not None:
                    self.server.close(quit=False)  # this process's copies of its pipes
                return body(old_mask)

            exit_with(child)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old_mask)
        return pid

    def _fork_worker(self, slot: int, max_tasks: int) -> int:
        # Imported here, once, rather than by every child after the fork.
        from . import _openblas, _worker  # noqa: F401

        fd, driver, caps = self.chan.fd, os.getpid(), self.caps
        return self._fork_child(
            lambda mask: _worker.run_forked(slot, driver, fd, max_tasks, caps, mask))

    def _fork_server(self, max_tasks: int) -> _ForkServer:
        """Forks the pool's fork server (the driver runs no other thread)."""
        from . import _worker

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        fd, driver, caps = self.chan.fd, os.getpid(), self.caps

        def serve(mask: set) -> int:
            os.close(req_w)
            os.close(rep_r)
            return _worker.run_fork_server(driver, req_r, rep_w, fd, max_tasks, caps, mask)

        try:
            pid = self._fork_child(serve)
        except BaseException:
            for x in (req_r, req_w, rep_r, rep_w):
                os.close(x)
            raise
        os.close(req_r)
        os.close(rep_w)
        os.set_blocking(rep_r, False)
        return _ForkServer(pid, req_w, rep_r)

    def _fork_server_died(self) -> None:
        """Its workers die with it (their parent-death signal): make sure of
        it, wait until they are gone, and record them as killed, for the next
        pass. Later replacements are fresh interpreters. Lock held."""
        server, self.server = self.server, None
        if server is not None:
            self.sup.signal(server.pid, _signal.SIGKILL)  # if it still lives, stuck
            server.close(quit=False)
        self.pending_exits.extend(self._reap_remote(0.0))
        self.chan.ring_doorbell()

    def _reap_remote(self, grace: float) -> list[tuple[int, int, int, int]]:
        """Waits up to grace seconds for the fork server's workers to exit,
        SIGKILLs the rest and waits for them; returns their exits as the
        supervisor would (see _remote_exited), each as killed by SIGKILL.
        Lock held."""
        import select

        if not self.remote:
            return []
        deadline = time.monotonic() + grace
        poller = select.poll()
        for pfd in self.remote.values():
            poller.register(pfd, select.POLLIN)
        pending = set(self.remote.values())
        killed = False
        while pending:
            left = deadline - time.monotonic()
            if left <= 0 and not killed:
                for pfd in pending:
                    _pidfd_kill(pfd)
                killed = True
                deadline = time.monotonic() + 10.0
                continue
            if left <= 0:
                break  # unkillable (uninterruptible sleep): give up waiting
            for fd, _ in poller.poll(max(1, int(left * 1000))):
                pending.discard(fd)
                poller.unregister(fd)
        ends = [self._remote_exited(pid, -_signal.SIGKILL) for pid in list(self.remote)]
        return [e for e in ends if e is not None]

    def _remote_exited(self, pid: int, code: int) -> tuple[int, int, int, int] | None:
        """A fork-server worker has ended (code: its exit code, or -signal):
        its pidfd is closed, and its exit returned as the supervisor reports
        one, (slot, pid, code, signal); None if no slot runs it any more."""
        pfd = self.remote.pop(pid, None)
        if pfd is not None:
            os.close(pfd)
        for s in self.slots:
            if s.pid == pid:
                return (s.index, pid, max(code, 0), max(-code, 0))
        return None

    def _kill(self, pid: int) -> None:
        """SIGKILL to a worker (through its pidfd: no pid-reuse race)."""
        pfd = self.remote.get(pid)
        if pfd is None:
            self.sup.signal(pid, _signal.SIGKILL)
        else:
            _pidfd_kill(pfd)

    def _start_worker(self, s: _Slot) -> None:
        # Caller holds the lock (or is the constructor).
        self._reset_slot(s)
        if self.server is not None:
            try:
                pid, pfd = self.server.fork(s.index)
            except _ServerGone:
                self._fork_server_died()
            except OSError:
                pass  # it could not fork this time (EAGAIN...): spawn this one
            else:
                self.remote[pid] = pfd
                s.pid = pid
                self._announce(s)
                if self.server.exits:  # deaths read while waiting: the next pass takes them
                    self.chan.ring_doorbell()
                return
        if self._env is None:
            self._env = worker_env(self.caps)
        s.pid = self.sup.spawn(s.index, self.argv_base + ["--slot", str(s.index)], self._env,
                               self.chan.fd)
        self._announce(s)

    def _cancel_board(self) -> Any:
        """The cancel mark (see cancel_board); None if /dev/shm has no room."""
        self.cancel_seg, self.cancel_map, mark = cancel_board(self.core, self.workers)
        return mark

    def _announce(self, s: _Slot) -> None:
        """The first frame a new worker reads: sys.path, the initializer and
        the cancel mark's segment."""
        self.chan.set_pid(s.index, s.pid)
        msg = {"sys_path": list(sys.path), "init": self.init_data, "authkey": _authkey(),
               "cancel": None if self.cancel_seg is None else self.cancel_seg.name}
        if self.mon is not None:
            # The worker records into its slot's ring of the monitor's segment.
            msg["monitor"] = (self.mon.segment, self.mon.pool)
            self.mon.worker_started(s.index, s.pid)
        self.chan.push_tasks(s.index, [(0, CONTROL, 0, _serialize.dumps(msg).data)])

    def _indirect(self, data: bytes):
        seg, v = indirect_segment(self.core, len(data))
        v[:] = memoryview(data)
        del v
        return seg.name.encode(), seg

    def _load_indirect(self, ref: bytes) -> bytes:
        return _read_indirect(ref)

    def _take_exits(self) -> list:
        """The supervisor's exits, and the fork server's for the workers it
        forked (slot -1 in the supervisor's: the server itself died). Lock held.
        Only for a pool with a fork server: see __init__."""
        exits = self.sup.take_exits()
        if self.server is not None or self.pending_exits:
            exits = list(exits)
            if self.server is not None:
                for pid, code in self.server.take_exits():
                    end = self._remote_exited(pid, code)
                    if end is not None:
                        exits.append(end)
                if any(slot < 0 for slot, _, _, _ in exits):
                    self._fork_server_died()  # its workers' exits: pending_exits
            exits += self.pending_exits
            self.pending_exits = []
        return exits

    def _sweep_dead(self, pids: list) -> None:
        # Segments a dead worker created and no frame refers to any more
        # (it died between creating and sending): its results are loaded.
        for pid in pids:
            self.core.sweep_segments_of(pid)

    def _write_cancel_mark(self, upto: int, exempt: dict) -> None:
        mark = self.cancel_mark
        if mark is not None:
            for slot, tid in exempt.items():
                mark[1 + slot] = tid  # before [0]: see _cancel_board
            mark[0] = upto

    def _stop_workers(self, grace: float) -> None:
        with self.lock:
            self._reap_remote(grace)
            if self.server is not None:
                self.server.close()  # it leaves; the supervisor reaps it
                self.server = None
        self.sup.stop(grace)

    def _release_transport(self) -> None:
        if self.cancel_mark is not None:
            self.cancel_mark.release()
            self.cancel_map.close()
            self.cancel_mark = self.cancel_map = self.cancel_seg = None  # unlinks it


#: Every live engine, so that a child forked from the driver can disown them.
_ENGINES: "weakref.WeakSet[_Engine]" = weakref.WeakSet()


def _disown_in_child() -> None:
    """Runs in every child forked from a driver (shoal's own workers, a
    multiprocessing fork Process, a user's os.fork()). The engines, their
    threads and their workers are the parent's: mark them stopped and broken,
    so that the child's exit hooks, finalizers and gc leave them alone (they
    used to tell the parent's workers to stop, and to join threads that do
    not exist here) and any use raises BrokenPool."""
    if not _ENGINES:
        return
    from . import _core

    _core.set_leak_warnings(False)  # they stay alive, abandoned, until this child ends
    for engine in list(_ENGINES):
        # Locks a parent thread held at the fork stay held here: new ones.
        engine.lock = threading.Lock()
        engine.cv_lock = threading.Lock()
        engine.cv = threading.Condition(engine.cv_lock)
        engine.stopped = True
        engine.closing = True
        engine.thread = None  # the parent's collector (its target would keep a cycle)
        # The fork server and its workers' pidfds are the parent's to use:
        # close this process's copies, without a word to the server.
        server, engine.server = engine.server, None
        if server is not None:
            server.close(quit=False)
        for pfd in engine.remote.values():
            try:
                os.close(pfd)
            except OSError:
                pass
        engine.remote = {}
        engine.disowned = True
        engine.broken = RuntimeError(f"it belongs to process {engine.owner_pid}, and this "
                                     f"process ({os.getpid()}) was forked from it")


os.register_at_fork(after_in_child=_disown_in_child)


def _can_fork() -> bool:
    """Fork only a driver that runs no other thread, from its main thread (a
    forked worker's parent-death signal follows the thread that forked it).
    C threads count too, except two kinds that hold no lock a child could
    need and that the child abandons: OpenBLAS's pthreads, which its own fork
    handler stops (a numpy driver must not pay an interpreter start per
    worker for them), and the idle workers of shoal's native-loop pools
    (named "shoal-pool"; a forked child builds its own, ThreadPool::global).
    A threads-backend pool that was not joined keeps the driver from forking:
    its threads run Python. SHOAL_START=spawn disables forking."""
    if os.environ.get("SHOAL_START", "auto") == "spawn":
        return False
    threads_backend = sys.modules.get("shoal._backend_threads")
    if threads_backend is not None and threads_backend.threads_running():
        return False
    if threading.current_thread() is not threading.main_thread() or \
            threading.active_count() != 1:
        return False
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return False
    extra = len(tids) - 1
    if extra == 0:
        return True
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/comm", "rb") as fh:
                # (and the monitor's sampler, shoal/sampler.hpp: syscalls and
                # its own mutexes, which a child never touches)
                if fh.read().rstrip(b"\n") in (b"shoal-pool", b"shoal-monitor"):
                    extra -= 1
        except OSError:
            pass  # a thread that ended meanwhile
    if extra == 0:
        return True
    from . import _openblas

    return extra <= _openblas.fork_safe_threads()


def _finalize(engine: _Engine) -> None:
    # Garbage collection or interpreter exit without close(): no worker and
    # no segment may outlive the pool.
    try:
        engine.terminate()
    except Exception:  # noqa: BLE001 - finalizers must not raise
        pass


@register
class ProcessBackend(EngineBackend):
    """Workers are forked or fresh interpreters started by the C++ supervisor,
    on shared-memory rings (the Pool/Executor entry points: EngineBackend)."""

    name = "processes"

    def __init__(self, workers: int, *, initializer: Callable | None = None,
                 initargs: tuple = (), max_tasks_per_worker: int | None = None,
                 retries: int = 0, ring_bytes: int = RING_BYTES) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError(f"max_tasks_per_worker must be >= 1, got {max_tasks_per_worker}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        super().__init__(workers, initializer=initializer, initargs=initargs,
                         max_tasks_per_worker=max_tasks_per_worker, retries=retries)
        self._engine = _Engine(workers, initializer, initargs, max_tasks_per_worker, retries,
                               ring_bytes)
        self._finalizer = weakref.finalize(self, _finalize, self._engine)

    @property
    def helper_pids(self) -> list[int]:
        """Its other processes: the fork server, if it has one."""
        server = self._engine.server
        return [server.pid] if server is not None else []
