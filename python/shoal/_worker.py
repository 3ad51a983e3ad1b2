"""Entry point of a shoal worker process: ``python -m shoal._worker --slot I --driver PID``.

The pool's control memory arrives as descriptor 3 (see shoal/pool_channel.hpp).

    driver ──Control(init)──┐
    driver ──FunctionDef────┤   task ring of slot I    ┌─> run fn(*args)
    driver ──Call / Batch───┴──> next_tasks() ─────────┤   set_current(slot, task) before,
                                 (spin, then futex,    │   0 after (the driver reads it
                                  GIL released)        │   when this process dies)
    driver <── Result / Failure ── push_result() <─────┘   one frame per task

This process ignores SIGINT (Ctrl-C belongs to the driver) and dies with its
driver (PR_SET_PDEATHSIG, see guard_worker), removing the driver's shared
memory segments on its way out.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys

# Frame kinds and flags: shoal/frame.hpp.
FUNCTION_DEF, CALL, BATCH, RESULT, FAILURE, CONTROL = 1, 2, 3, 4, 5, 6
INDIRECT = 1
_SCALARS = frozenset({int, float, bool, complex, type(None)})
_pickle_dumps = pickle.dumps
#: how long an idle worker spins before it sleeps on the futex
_SPIN_US = float(os.environ.get("SHOAL_WORKER_SPIN_US", "50"))


class RemoteErrorStandIn(Exception):
    """Sent instead of an exception that cannot be pickled."""


def _read_indirect(data: bytes) -> bytes:
    from . import _core

    seg = _core.SharedSegment.attach(data.decode())
    try:
        n = int.from_bytes(bytes(seg.view()[:8]), "little")
        return bytes(seg.view()[8: 8 + n])
    finally:
        del seg


def _write_indirect(data: bytes) -> bytes:
    """Puts a payload too big for the ring in a segment; returns its name.
    The receiver unlinks it."""
    from . import _core

    seg = _core.SharedSegment.create(8 + len(data))
    v = seg.view()
    v[:8] = memoryview(len(data).to_bytes(8, "little"))
    v[8: 8 + len(data)] = memoryview(data)
    del v
    seg.release_name()
    return seg.name.encode()


def _open_cancel_mark(name: str):
    """The driver's cancel mark (see _Engine._cancel_board in
    _backend_processes.py), read-only; (0,) if it cannot be mapped."""
    import mmap

    try:
        fd = os.open("/dev/shm" + name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            return memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ)).cast("q")
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return (0,)


class Worker:
    #: tasks whose id is at most cancel_mark[0] are cancelled (not run),
    #: except the one named by cancel_mark[1 + slot]
    cancel_mark = (0,)

    def __init__(self, slot: int, driver: int, fd: int = 3, chan=None) -> None:
        from . import _core, _serialize

        self.slot = slot
        self.driver = driver
        self.core = _core
        self.serialize = _serialize
        # chan: the pool's rings (inherited as fd), or a channel attached
        # otherwise (an MPI rank serving its node leader's rings)
        self.chan = _core.PoolChannel.attach_fd(fd) if chan is None else chan
        self.limit = self.chan.max_payload // 2
        self.fns: dict[int, object] = {}
        self.done = 0
        self.dumps = _serialize.dumps
        self.monitored = False  # the driver's monitor gave us its rings (control)

    # ---------------------------------------------------------------- sending
    def send(self, task_id: int, kind: int, data: bytes) -> None:
        flags = 0
        if len(data) > self.limit:
            if self.monitored:  # the monitor records the result's size, not the name's
                self.chan.next_result_bytes(len(data))
            data = _write_indirect(data)
            flags = INDIRECT
        self.chan.push_result(self.slot, task_id, kind, flags, data)

    def send_failure(self, task_id: int, exc: BaseException, context: str | None = None) -> None:
        try:
            import traceback  # here: about 10 ms of every worker's start otherwise

            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except BaseException:  # noqa: BLE001 - e.g. MemoryError: the error still goes back
            tb = f"{type(exc).__qualname__}: {exc} (the worker could not format its traceback)"
        if context:
            tb = f"{context}\n{tb}"
        try:
            payload = self.serialize.dumps((exc, tb))
        except BaseException:  # noqa: BLE001 - the exception itself cannot travel
            stand_in = RemoteErrorStandIn(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
            payload = self.serialize.dumps((stand_in, tb))
        self.send(task_id, FAILURE, bytes(payload.data))
        payload.release_names()

    # ---------------------------------------------------------------- running
    def run_one(self, task_id: int, fn, args, kwargs) -> None:
        # The hot path of every task: keep it free of avoidable calls.
        chan, slot = self.chan, self.slot
        chan.set_current(slot, task_id)
        try:
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:  # noqa: BLE001 - SystemExit included: report, keep serving
            chan.set_current(slot, 0)
            self.send_failure(task_id, exc)
            self.done += 1
            return
        # Still "current" while the result is serialized: a crash there is this task's.
        if type(value) in _SCALARS:
            # Nothing out of band, no __main__ reference: a plain pickle.
            chan.push_result(slot, task_id, RESULT, 0, _pickle_dumps(value, 5))
            chan.set_current(slot, 0)
            self.done += 1
            return
        try:
            payload = self.dumps(value)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            chan.set_current(slot, 0)
            self.send_failure(task_id, exc, f"the result of task {task_id} could not be sent")
            self.done += 1
            return
        data = payload.data
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) > self.limit:
            try:
                self.send(task_id, RESULT, data)
            except OSError as exc:
                # No segment for the result (e.g. ENOSPC, /dev/shm full): the
                # caller gets the OSError; this worker serves on.
                chan.set_current(slot, 0)
                del payload, data
                self.send_failure(task_id, exc, f"the result of task {task_id} could not be sent")
                self.done += 1
                return
        else:
            chan.push_result(slot, task_id, RESULT, 0, data)
        # The driver loads results with adopt=True: it unlinks the segments and
        # takes over shoal.shared arrays the task created (the serializer's
        # Payload knows what it holds).
        payload.release_names()
        chan.set_current(slot, 0)
        self.done += 1

    def run_batch(self, fn, ids: list, items: list) -> None:
        """run_one for every item of a Batch frame, with the common case
        (a scalar result) inlined: this loop is the inner loop of map()."""
        chan, slot = self.chan, self.slot
        set_current, push, dumps = chan.set_current, chan.push_result, _pickle_dumps
        for tid, item in zip(ids, items):
            set_current(slot, tid)
            try:
                value = fn(item)
            except BaseException as exc:  # noqa: BLE001 - reported, the batch goes on
                chan.set_current(slot, 0)
                self.send_failure(tid, exc)
                continue
            if type(value) in _SCALARS:
                push(slot, tid, RESULT, 0, dumps(value, 5))
            else:
                self.run_one(tid, _Value(value), (), None)
                self.done -= 1  # counted below with the others
        chan.set_current(slot, 0)
        self.done += len(ids)

    def cancelled(self, task_id: int) -> bool:
        """task_id is at most the cancel mark: whether it is not the one task
        the driver let through."""
        mark = self.cancel_mark
        return len(mark) <= 1 + self.slot or mark[1 + self.slot] != task_id

    def skip(self, task_id: int) -> None:
        """Tells the driver that a cancelled task was not started."""
        self.chan.push_result(self.slot, task_id, CONTROL, 0, b"cancelled")
        self.done += 1

    def handle(self, task_id: int, kind: int, flags: int, data: bytes) -> None:
        if kind == CALL and task_id <= self.cancel_mark[0] and self.cancelled(task_id):
            self.skip(task_id)
            return
        if flags & INDIRECT:
            data = _read_indirect(data)
        if kind == CALL:
            try:
                fn_id, args, kwargs = self.serialize.loads(data)
                fn = self.fns[fn_id]
            except BaseException as exc:  # noqa: BLE001
                self.send_failure(task_id, exc, f"task {task_id} could not be loaded in the worker")
                return
            self.run_one(task_id, fn, args, kwargs)
        elif kind == BATCH:
            try:
                fn_id, ids, items = self.serialize.loads(data)
                fn = self.fns[fn_id]
            except BaseException as exc:  # noqa: BLE001
                try:
                    ids = self.serialize.loads(data)[1]
                except BaseException:  # noqa: BLE001 - nothing identifies the tasks
                    raise exc from None
                for tid in ids:
                    self.send_failure(tid, exc, f"task {tid} could not be loaded in the worker")
                return
            if ids[0] <= self.cancel_mark[0]:
                # Cancelled: at most its first task runs, if the driver let
                # it through (one task per worker, not a frame of them).
                if not self.cancelled(ids[0]):
                    self.run_batch(fn, ids[:1], items[:1])
                    ids = ids[1:]
                for tid in ids:
                    self.skip(tid)
                return
            self.run_batch(fn, ids, items)
        elif kind == FUNCTION_DEF:
            try:
                self.fns[task_id] = self.serialize.loads(data)
            except BaseException as exc:  # noqa: BLE001
                self.fns[task_id] = _Unloadable(exc)
        elif kind == CONTROL:
            self.control(self.serialize.loads(data))

    def control(self, msg: dict) -> None:
        if "forget" in msg:
            for fn_id in msg["forget"]:
                self.fns.pop(fn_id, None)
            return
        if msg.get("reset"):
            # A new pool on a long-lived worker (an MPI rank): its function
            # ids start over.
            self.fns.clear()
            self.done = 0
        if "sys_path" in msg:
            sys.path[:] = msg["sys_path"]
        if msg.get("inline"):
            # A worker of an MPI node: results go to a root that may be on
            # another node, so their buffers stay in band (no shared segment).
            self.dumps = self.serialize.dumps_in_band
        if msg.get("authkey"):
            _use_authkey(msg["authkey"])
        if msg.get("cancel"):
            self.cancel_mark = _open_cancel_mark(msg["cancel"])
        if msg.get("monitor"):
            # From now on push_result records each task in C++ (PoolChannel::
            # note_result): nothing changes on this loop's Python path.
            try:
                self.chan.attach_monitor(msg["monitor"][0], msg["monitor"][1], self.slot)
                self.monitored = True
            except Exception:  # noqa: BLE001 - the monitor never fails a job
                pass
        if msg.get("init") is not None:
            try:
                initializer, initargs = self.serialize.loads(msg["init"])
                initializer(*initargs)
            except BaseException as exc:  # noqa: BLE001 - the driver marks the pool broken
                self.send_failure(0, exc, "the pool's initializer raised")
                return
        if msg.get("init") is not None or not _capped_at_fork:
            _cap_native_threads()  # what the initializer (or this fresh interpreter) loaded
        self.send(0, CONTROL, b"ready")

    def serve(self, max_tasks: int = 0) -> None:
        chan, slot, driver = self.chan, self.slot, self.driver
        handle = self.handle
        while True:
            frames = chan.next_tasks(slot, 1.0, _SPIN_US)
            if chan.is_shutdown:
                return
            if not frames:
                if os.getppid() != driver:
                    return
                continue
            for task_id, kind, flags, data in frames:
                handle(task_id, kind, flags, data)
            # The driver never sends more than max_tasks tasks to one worker.
            if max_tasks and self.done >= max_tasks:
                return


class _Value:
    """A finished value run through run_one's result path."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __call__(self):
        return self.value


class _Unloadable:
    """Stands in for a function that could not be unpickled in the worker:
    every task using it fails with the original error."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __call__(self, *args, **kwargs):
        raise self.exc


def _use_authkey(key: bytes) -> None:
    """Makes the driver's multiprocessing authkey this process's, so that
    Manager proxies in tasks authenticate (multiprocessing's children inherit
    it; a spawned worker has a random one). Importing multiprocessing costs a
    worker's start about 40 ms, so a worker that has not imported it yet gets
    the key when (if ever) it does."""
    proc = sys.modules.get("multiprocessing.process")
    if proc is not None:
        proc.current_process().authkey = key
        return
    for finder in sys.meta_path:
        if isinstance(finder, _AuthkeyOnImport):
            finder.key = key
            return
    sys.meta_path.insert(0, _AuthkeyOnImport(key))


class _AuthkeyOnImport:
    """A meta-path finder that lets ``multiprocessing.process`` load as usual,
    then sets the authkey it holds."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def find_spec(self, name, path=None, target=None):
        if name != "multiprocessing.process":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run, key = spec.loader.exec_module, self.key

        def exec_module(module) -> None:
            run(module)
            module.current_process().authkey = key

        spec.loader.exec_module = exec_module
        return spec


_capped_at_fork = False  # run_forked capped what the driver had loaded


def _cap_native_threads() -> None:
    # The env (OMP_NUM_THREADS, ...) caps libraries loaded later; threadpoolctl
    # caps the ones the initializer already loaded (importing it costs 20 ms of
    # worker start, so only when a BLAS/OpenMP user is there).
    # A worker forked from a numpy driver has OpenBLAS loaded and nothing else
    # of the kind: its C API caps it in microseconds.
    # Each library gets the count its own variables give in this worker's env:
    # the driver's thread_caps() for those the user left alone, the user's own
    # otherwise (allocation.thread_caps).
    if "SHOAL_NUM_THREADS" not in os.environ or \
            not any(m in sys.modules for m in ("numpy", "scipy", "torch", "sklearn")):
        return
    from .allocation import library_threads, library_variable

    try:
        from . import _openblas

        n = library_threads("OPENBLAS_NUM_THREADS")
        if n is not None and _openblas.cap(n):
            return
    except Exception:  # noqa: BLE001 - threadpoolctl below, then
        pass
    try:
        from threadpoolctl import ThreadpoolController

        for lib in ThreadpoolController().lib_controllers:
            n = library_threads(library_variable(lib.user_api, lib.internal_api))
            if n is not None:
                lib.set_num_threads(n)
    except Exception:  # noqa: BLE001 - capping is best effort
        pass


def exit_with(body) -> None:
    """In a freshly forked child: runs body() and leaves with the code it
    returns, or with 70 and the traceback on stderr if it raised, never
    returning and without the parent's exit handlers."""
    code = 70
    try:
        code = body()
    except BaseException:  # noqa: BLE001 - report, then leave without cleanup
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _leave_driver_state(sigmask: set, own_group: bool = True) -> None:
    """First steps of a process forked from the driver (a worker, the fork
    server): none of the driver's objects is ever collected here (a collected
    SharedSegment copy would unlink the driver's segment), the driver's fault
    handler is off, Ctrl-C in a terminal reaches only the driver."""
    import gc

    gc.freeze()
    try:
        import faulthandler

        faulthandler.disable()  # the driver's (e.g. pytest's): not this process's business
    except Exception:  # noqa: BLE001
        pass
    if own_group:
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)  # the driver blocked SIGINT to fork


def run_forked(slot: int, driver: int, fd: int, max_tasks: int, env: dict,
               sigmask: set = frozenset(), parent: int = 0) -> int:
    """Worker body in a child forked from a single-threaded driver, or from
    the pool's fork server (parent: its pid), without exec."""
    _leave_driver_state(sigmask, own_group=not parent)  # the server has its own group
    os.environ.update(env)
    from . import _core

    _core.guard_worker(driver, parent)
    # BLAS inherited from the driver is capped now, while the driver is still
    # busy forking; after the announce only an initializer can add more.
    global _capped_at_fork
    _cap_native_threads()
    _capped_at_fork = True
    Worker(slot, driver, fd).serve(max_tasks)
    return 0


# ---- the pool's fork server ----
#
# Forked from the driver with the pool's first workers, while the driver runs
# no other thread. It forks the replacement workers (after a death, a time
# limit, max_tasks_per_worker), so that they start in about a millisecond
# instead of an interpreter start, and without forking the driver, which by
# then runs the pool's threads. Two pipes, records of three signed 64-bit
# integers (24 bytes: a pipe write that small is atomic):
#   driver -> server  (FORK, slot, 0)       fork a worker for slot
#                     (ADOPTED, pid, 0)     the driver has its pidfd now
#                     (QUIT, 0, 0)          leave (the pool is closing)
#   server -> driver  (FORKED, pid, 0)
#                     (FAILED, errno, 0)
#                     (EXITED, pid, exit code or -signal)   after reaping it
# A worker is reaped only once the driver has said ADOPTED: until then its pid
# cannot be reused, so the driver's pidfd_open names the right process. Every
# EXITED also rings the pool's doorbell, so that a driver asleep in a wait
# notices the death at once. The server dies with the driver (guard_worker),
# and its workers with it (their parent-death signal).
ZY_FORK, ZY_ADOPTED, ZY_QUIT, ZY_FORKED, ZY_FAILED, ZY_EXITED = 1, 2, 3, 4, 5, 6
ZY_RECORD = 24


def run_fork_server(driver: int, req_fd: int, rep_fd: int, chan_fd: int, max_tasks: int,
                    env: dict, sigmask: set = frozenset()) -> int:
    from . import _core

    # Nothing else until the first request: the pool is starting on every
    # core now. SIGINT stays blocked (the driver blocked it to fork) until
    # _leave_driver_state ignores it.
    _core.guard_worker(driver)
    first = os.read(req_fd, 64 * ZY_RECORD)
    if len(first) < 8 or int.from_bytes(first[:8], "little", signed=True) != ZY_FORK:
        return 0  # the driver has gone, or the pool closes before it needed us
    import select
    import struct

    _leave_driver_state(sigmask)
    try:  # what a worker needs for a function from __main__: imported once, here
        import cloudpickle  # noqa: F401
    except ImportError:
        pass
    chan = _core.PoolChannel.attach_fd(os.dup(chan_fd))  # (it closes the one it gets)
    me = os.getpid()
    kids: dict[int, int] = {}   # pidfd -> pid, workers alive or not reaped yet
    adopted: set[int] = set()   # pids the driver has a pidfd of
    dead: set[int] = set()      # pids that ended before the driver adopted them
    poller = select.poll()
    poller.register(req_fd, select.POLLIN)
    pending = first

    def send(op: int, a: int, b: int = 0) -> None:
        os.write(rep_fd, struct.pack("qqq", op, a, b))

    def reap(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        adopted.discard(pid)
        send(ZY_EXITED, pid, os.waitstatus_to_exitcode(status))
        chan.ring_doorbell()

    try:
        while True:
            while len(pending) >= ZY_RECORD:
                op, a, _b = struct.unpack_from("qqq", pending)
                pending = pending[ZY_RECORD:]
                if op == ZY_ADOPTED:
                    adopted.add(a)
                    if a in dead:
                        dead.discard(a)
                        reap(a)
                    continue
                if op != ZY_FORK:
                    return 0  # QUIT
                try:
                    pid = os.fork()
                except OSError as exc:
                    send(ZY_FAILED, exc.errno or 0)
                    continue
                if pid == 0:  # the new worker: never returns from here
                    def work(slot: int = a) -> int:
                        for fd in (req_fd, rep_fd, *kids):
                            os.close(fd)
                        return run_forked(slot, driver, chan_fd, max_tasks, env, sigmask, me)

                    exit_with(work)
                pidfd = os.pidfd_open(pid)
                kids[pidfd] = pid
                poller.register(pidfd, select.POLLIN)
                send(ZY_FORKED, pid)
            for fd, _ in poller.poll():
                if fd == req_fd:
                    data = os.read(req_fd, 64 * ZY_RECORD)
                    if not data:
                        return 0  # the driver has gone
                    pending += data
                    continue
                pid = kids.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                if pid in adopted:
                    reap(pid)
                else:
                    dead.add(pid)
    except BrokenPipeError:
        return 0


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = dict(zip(argv[0::2], argv[1::2]))
    slot, driver = int(args["--slot"]), int(args["--driver"])
    from . import _core

    _core.guard_worker(driver)
    Worker(slot, driver).serve(int(args.get("--max-tasks", 0)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
