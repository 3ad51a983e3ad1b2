"""MPI transport of the mpi backend: the same frames as the rings of the
processes backend (shoal/frame.hpp), many to one MPI message (a frame batch,
shoal/frame_batch.hpp, packed and checked in C++).

    root (rank 0)                                  serving rank r (slot r - 1)
    ------------                                   ---------------------------
    ledger ──push_tasks(slot, frames)──> outbox    Worker.serve (shoal._worker, unchanged)
    engine thread (the only one calling MPI):        next_tasks(): flush results, then wait
      pack_frames(outbox) ──Isend TASKS──────────>     (spin, then sleep: an idle rank
                                                        uses well under 1% of a core)
                                                       unpack_frames(message) -> frames
                                                     runs them; push_result() -> outbox
      inbox[slot] <── unpack_frames <──Recv RESULTS──  pack_frames(outbox), at the next wait,
      doorbell rung                                    when 1 MiB or 2 ms of results pile up
    drain_by_slot() <── inbox

    at the end: BYE to every serving rank; they leave serve() and finalize

Only one thread of a process calls MPI: the root's engine thread, the
serving rank's main thread (mpi4py, MPI's maintained binding, is the one
choke point that turns MPI errors into exceptions). MPI messages use a
duplicate of the communicator, so that shoal's tags never meet the user's.
"""

from __future__ import annotations

import os
import sys
import time

#: message tags on shoal's own communicator
TAG_TASKS, TAG_RESULTS, TAG_BYE, TAG_CANCEL = 7101, 7102, 7103, 7104
CONTROL = 6  # frame kind (shoal/frame.hpp)
#: results a serving rank keeps before it sends them anyway
FLUSH_BYTES = 1 << 20
FLUSH_SECONDS = 0.002
#: how long a waiting rank spins before it starts to sleep, and its longest sleep
SPIN_S = float(os.environ.get("SHOAL_MPI_SPIN_US", "2000")) * 1e-6
MAX_SLEEP_S = 0.001
#: ... and, idle for more than IDLE_S, its longest sleep then
IDLE_S, IDLE_SLEEP_S = 0.1, 0.01

LAUNCH_HINT = ("start the script with an MPI launcher, e.g.\n"
               "    mpirun -n 3 python -m shoal.mpi script.py      (3 ranks: the script on rank 0, "
               "2 serving)\n"
               "    srun python -m shoal.mpi script.py             (in a SLURM job)")


class MPIError(RuntimeError):
    """The mpi backend cannot run here (no MPI, no launcher, too few ranks,
    too low a thread level); the message says what to do."""


def _mpi():
    """mpi4py's MPI module, initialized (once, by whoever comes first: a user's
    own ``from mpi4py import MPI`` before shoal is fine)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - the test set-up installs it
        raise MPIError("backend='mpi' needs mpi4py (pip install \"shoal[mpi]\") and an MPI "
                       f"library (Open MPI or MPICH): {exc}") from exc
    except RuntimeError as exc:
        raise MPIError(f"MPI could not be initialized: {exc}\n{LAUNCH_HINT}") from exc
    return MPI


def check_thread_level(MPI) -> None:
    """The root's engine thread is not the thread that initialized MPI: it
    needs MPI_THREAD_SERIALIZED (one thread at a time, any thread)."""
    level = MPI.Query_thread()
    if level < MPI.THREAD_SERIALIZED:
        names = {MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE", MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED"}
        raise MPIError(
            f"this MPI library was initialized with {names.get(level, level)}; shoal's mpi "
            "backend calls MPI from one engine thread of the root and needs "
            "MPI_THREAD_SERIALIZED or more. If you import mpi4py yourself, do not lower "
            "mpi4py.rc.thread_level below 'serialized'.")


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher or srun."""
    env = os.environ
    return any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
                                  "MPI_LOCALNRANKS", "SLURM_STEP_ID"))


class RankChannel:
    """The worker side of the MPI transport, with the verbs of PoolChannel
    that shoal._worker.Worker uses: a serving rank runs the processes
    backend's worker loop unchanged over it."""

    #: a result bigger than this would go through a shared segment on a ring;
    #: over MPI it goes in the message itself
    max_payload = 1 << 62

    def __init__(self, comm, root: int = 0) -> None:
        self.MPI = _mpi()
        self.comm = comm
        self.root = root
        self.out: list = []
        self.out_bytes = 0
        self.first_out = 0.0
        self.is_shutdown = False
        self.took = 0  # task frames taken since the last flush
        self.took_msgs = 0  # ... and messages
        self.started = 0    # monotonic ns the running task started (0: none)
        self.task_ns = 0    # moving average of its tasks' times
        self.last_message = 0.0  # when the root's latest message came
        # shutdown(cancel_futures=True): tasks up to cancel_upto are skipped,
        # but cancel_exempt (the root's TAG_CANCEL messages, see CancelMark)
        self.cancel_upto = 0
        self.cancel_exempt = 0
        self.cancel_polled = 0.0
        self.mark = CancelMark(self)
        self.status = self.MPI.Status()

    # -------------------------------------------------------- results
    def push_result(self, slot: int, task_id: int, kind: int, flags: int, data: bytes) -> bool:
        if not self.out:
            self.first_out = time.monotonic()
        self.out.append((task_id, kind, flags, data))
        self.out_bytes += len(data) + 24
        if self.out_bytes >= FLUSH_BYTES or time.monotonic() - self.first_out >= FLUSH_SECONDS:
            self.flush()
        return True

    def flush(self) -> None:
        if not self.out and not self.took_msgs:
            return
        from . import _core

        if self.took:  # how many task frames this rank has taken (the root's queued())
            self.out.append((0, CONTROL, 0, TAKEN + self.took.to_bytes(8, "little")
                             + self.took_msgs.to_bytes(8, "little")
                             + self.task_ns.to_bytes(8, "little")))
            self.took = self.took_msgs = 0
        msg = _core.pack_frames(self.out)
        self.out, self.out_bytes = [], 0
        self.comm.Send([msg, self.MPI.BYTE], dest=self.root, tag=TAG_RESULTS)

    def poll_cancel(self) -> None:
        """Takes the root's cancel messages (at most every 100 us)."""
        now = time.monotonic()
        if now - self.cancel_polled < 0.0001:
            return
        self.cancel_polled = now
        st = self.status
        while self.comm.Iprobe(source=self.root, tag=TAG_CANCEL, status=st):
            buf = bytearray(16)
            self.comm.Recv([buf, self.MPI.BYTE], source=self.root, tag=TAG_CANCEL)
            self.cancel_upto = int.from_bytes(buf[:8], "little")
            self.cancel_exempt = int.from_bytes(buf[8:], "little")

    def set_current(self, slot: int, task_id: int) -> None:
        # What the root needs of it: how long tasks take here (a moving
        # average, 1/8 to the newest, as a ring's worker slot keeps), which
        # sizes how many calls it queues for this rank (Engine._room).
        now = time.monotonic_ns()
        if task_id:
            self.started = now
        elif self.started:
            took = now - self.started
            self.task_ns = took if not self.task_ns else self.task_ns + (took - self.task_ns) // 8
            self.started = 0

    def ring_doorbell(self) -> None:
        pass

    # -------------------------------------------------------- tasks
    def next_tasks(self, slot: int, timeout: float | None, spin_us: float = 0.0) -> list:
        """Sends the results kept so far, then waits up to ``timeout`` seconds
        for the root's next message: its frames, or [] (timeout, BYE)."""
        self.flush()
        comm, st, root = self.comm, self.status, self.root
        deadline = None if timeout is None else time.monotonic() + timeout
        sleep = 0.00005
        while not comm.Iprobe(source=root, tag=self.MPI.ANY_TAG, status=st):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            idle = now - self.last_message
            if idle < SPIN_S:
                os.sched_yield()  # spin, but let a process that has work run first
            else:
                time.sleep(sleep)
                sleep = min(sleep * 2, MAX_SLEEP_S if idle < IDLE_S else IDLE_SLEEP_S)
        self.last_message = time.monotonic()
        tag = st.Get_tag()
        if tag == TAG_CANCEL:
            self.cancel_polled = 0.0
            self.poll_cancel()
            return []  # (the worker loop asks again)
        n = st.Get_count(self.MPI.BYTE)
        buf = bytearray(n)
        comm.Recv([buf, self.MPI.BYTE], source=root, tag=tag)
        if tag == TAG_BYE:
            self.is_shutdown = True
            return []
        from . import _core

        frames = _core.unpack_frames(bytes(buf))
        self.took += sum(1 for f in frames if f[0])
        self.took_msgs += 1
        return frames


class CancelMark:
    """What shoal._worker.Worker reads as its cancel mark (the processes
    backend maps a shared segment there): [0] the highest cancelled task id,
    [1 + slot] the one task let through; here from the root's messages."""

    __slots__ = ("chan",)

    def __init__(self, chan: RankChannel) -> None:
        self.chan = chan

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, i: int) -> int:
        self.chan.poll_cancel()
        return self.chan.cancel_upto if i == 0 else self.chan.cancel_exempt


def serve(comm, root: int = 0) -> int:
    """Runs on every serving rank until the root says goodbye: the
    processes backend's worker loop over a RankChannel."""
    from . import _worker

    chan = RankChannel(comm, root)
    worker = _worker.Worker(comm.Get_rank(), os.getppid(), chan=chan)
    worker.dumps = _inline_dumps
    worker.cancel_mark = chan.mark
    worker.serve()
    chan.flush()
    return 0


def _inline_dumps(obj):
    # A result's big buffers stay in the message: the root may be on
    # another node, where this rank's shared segments do not exist.
    from . import _serialize

    return _serialize.dumps(obj, threshold=sys.maxsize)


#: a CONTROL frame of task id 0 whose payload starts so carries (three u64
#: after it) how many task frames and messages the rank has taken since its
#: previous one (the root's queued() count and its credit) and its average
#: task time in ns (the root's task_ns()); the root's channel consumes it
#: what task_ns() says of a rank that has not reported a task time yet
UNKNOWN_TASK_NS = 10_000_000
#: messages in flight to a rank (the one it works on, the next one ready)
#: before the root keeps further frames back, to send them as one
CREDIT = 2
#: ... unless this many frames wait
CREDIT_FRAMES = 512
TAKEN = b"\x00shoal-taken"


def say_bye(comm, root: int = 0) -> None:
    """Tells every serving rank of comm to leave serve()."""
    MPI = _mpi()
    reqs = [comm.Isend([b"", MPI.BYTE], dest=r, tag=TAG_BYE)
            for r in range(comm.Get_size()) if r != root]
    MPI.Request.Waitall(reqs)


class RootChannel:
    """The root side of the MPI transport, with PoolChannel's verbs for the
    task ledger: slot i is serving rank ``ranks[i]``. The ledger's threads
    only touch the out- and inboxes (under one lock); the engine thread moves
    them over MPI."""

    max_payload = 1 << 62
    fd = -1

    def __init__(self, comm, root: int, slots: int) -> None:
        import threading

        self.MPI = _mpi()
        self.comm = comm
        self.ranks = [r for r in range(comm.Get_size()) if r != root][:slots]
        self.slot_of = {r: i for i, r in enumerate(self.ranks)}
        self.slots = len(self.ranks)
        self.lock = threading.Lock()
        self.cv = threading.Condition(threading.Lock())
        self.bell = 0
        self.wake = threading.Event()        # new frames for the engine thread
        self.asleep = False                  # it waits on wake (set before its last look)
        self.out: list[list] = [[] for _ in self.ranks]
        self.inbox: list[list] = [[] for _ in self.ranks]
        self.pushed = [0] * self.slots       # task frames pushed, per slot
        self.taken = [0] * self.slots        # ... and taken by the rank
        self.in_flight = [0] * self.slots    # messages sent, not yet taken (engine thread)
        self.task_times = [0] * self.slots   # the ranks' average task times, ns
        self.stopping = False
        self.error: BaseException | None = None
        self.messages = [0, 0]               # sent, received (for benchmarks)
        self.cancels: list = []              # (rank, upto, exempt) for the engine thread
        self.thread = threading.Thread(target=self._engine, name="shoal-mpi", daemon=True)
        self.thread.start()

    # ---------------------------------------------------- the ledger's verbs
    def push_tasks(self, slot: int, frames: list, start: int = 0) -> int:
        part = frames[start:] if start else frames
        with self.lock:
            self.out[slot].extend(part)
            self.pushed[slot] += sum(1 for f in part if f[0])
        if self.asleep:
            self.wake.set()
        return len(frames)

    def push_task(self, slot: int, task_id: int, kind: int, flags: int, data: bytes) -> bool:
        with self.lock:
            self.out[slot].append((task_id, kind, flags, data))
            if task_id:
                self.pushed[slot] += 1
        if self.asleep:  # (a spinning engine thread sees the frame by itself)
            self.wake.set()
        return True

    def drain_by_slot(self) -> list:
        with self.lock:
            out = [(i, box) for i, box in enumerate(self.inbox) if box]
            for i, _ in out:
                self.inbox[i] = []
        return out

    def drain_slot(self, slot: int) -> list:
        with self.lock:
            box, self.inbox[slot] = self.inbox[slot], []
        return box

    def queued(self, slot: int) -> int:
        # (an earlier pool's frames taken late count here too: never below 0)
        return max(0, self.pushed[slot] - self.taken[slot])

    def pick_slot(self, max_queued: int, max_task_ns: int) -> int:
        loads = [self.queued(i) for i in range(self.slots)]
        return -1 - loads.index(min(loads))

    def task_ns(self, slot: int) -> int:
        # Until a rank has reported, its tasks count as long ones: the ledger
        # then queues one call per rank (not CALL_DEPTH), so that the first
        # long tasks of a map are spread as the ranks free up, not cut into
        # a fixed share per rank up front.
        return self.task_times[slot] or UNKNOWN_TASK_NS

    def slot_state(self, slot: int) -> tuple[int, int]:
        return 0, 0  # what a rank runs is not mirrored here

    def doorbell(self) -> int:
        return self.bell

    def ring_doorbell(self) -> None:
        with self.cv:
            self.bell += 1
            self.cv.notify_all()

    def wait_driver(self, seen: int, timeout: float | None, spin_us: float = 0.0) -> None:
        with self.cv:
            if self.bell == seen:
                self.cv.wait(timeout)

    def cancel(self, upto: int, exempt: dict) -> None:
        """Serving ranks skip the tasks up to ``upto`` they have not started,
        but ``exempt[slot]`` (shutdown(cancel_futures=True))."""
        with self.lock:
            self.cancels += [(self.ranks[i], upto, exempt.get(i, 0)) for i in range(self.slots)]
        self.wake.set()

    def reset_slot(self, slot: int) -> None:
        pass

    def set_pid(self, slot: int, pid: int) -> None:
        pass

    def shutdown(self) -> None:
        """Stops the engine thread once everything pushed has been sent."""
        self.stopping = True
        self.wake.set()
        if self.thread.is_alive():
            import threading

            if threading.current_thread() is not self.thread:
                self.thread.join()

    # ---------------------------------------------------- the engine thread
    def _engine(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - the ledger's waiters must hear of it
            self.error = exc
            import traceback

            print(f"shoal: the mpi backend's engine thread failed:\n{traceback.format_exc()}",
                  file=sys.stderr)
            self.ring_doorbell()

    def _loop(self) -> None:
        from . import _core

        MPI, comm = self.MPI, self.comm
        pack, unpack = _core.pack_frames, _core.unpack_frames
        st = MPI.Status()
        sends: list = []   # (request, message) until the send completes
        idle_since = time.monotonic()
        sleep = 0.00005
        while True:
            busy = False
            with self.lock:
                # A rank with CREDIT messages in hand gets the frames queued
                # since as one message when it takes one: under load the
                # messages grow, an idle rank gets a frame at once.
                outs = [(i, box) for i, box in enumerate(self.out)
                        if box and (self.in_flight[i] < CREDIT or len(box) >= CREDIT_FRAMES)]
                for i, _ in outs:
                    self.out[i] = []
                    self.in_flight[i] += 1
                cancels, self.cancels = self.cancels, []
            for rank, upto, exempt in cancels:
                msg = upto.to_bytes(8, "little") + exempt.to_bytes(8, "little")
                sends.append((comm.Isend([msg, MPI.BYTE], dest=rank, tag=TAG_CANCEL), msg))
            for i, frames in outs:
                msg = pack(frames)
                sends.append((comm.Isend([msg, MPI.BYTE], dest=self.ranks[i], tag=TAG_TASKS),
                              msg))
                self.messages[0] += 1
                busy = True
            if sends:
                sends = [s for s in sends if not s[0].Test()]
            got = False
            while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_RESULTS, status=st):
                src = st.Get_source()
                buf = bytearray(st.Get_count(MPI.BYTE))
                comm.Recv([buf, MPI.BYTE], source=src, tag=TAG_RESULTS)
                self.messages[1] += 1
                slot = self.slot_of.get(src)
                if slot is None:
                    continue  # a rank this pool does not use: an earlier pool's late results
                frames = unpack(bytes(buf))
                if frames and frames[-1][0] == 0 and frames[-1][3][:len(TAKEN)] == TAKEN:
                    counts = frames.pop()[3]
                    n = len(TAKEN)
                    self.taken[slot] += int.from_bytes(counts[n:n + 8], "little")
                    self.in_flight[slot] = max(  # (an earlier pool's late counts too)
                        0, self.in_flight[slot] - int.from_bytes(counts[n + 8:n + 16], "little"))
                    self.task_times[slot] = int.from_bytes(counts[n + 16:n + 24], "little")
                with self.lock:
                    self.inbox[slot].extend(frames)
                got = True
            if got:
                self.ring_doorbell()
                busy = True
            if busy:
                idle_since = time.monotonic()
                sleep = 0.00005
                continue
            if self.stopping and not sends:
                with self.lock:
                    if not any(self.out):
                        return
                continue
            # Idle: spin a little (a result is often microseconds away), then
            # sleep in growing steps; new frames to send wake it at once.
            idle = time.monotonic() - idle_since
            if idle < SPIN_S:
                os.sched_yield()
                continue
            self.asleep = True
            with self.lock:
                pending = any(self.out) or self.cancels
            if not pending:
                self.wake.wait(sleep)
            self.asleep = False
            self.wake.clear()
            sleep = min(sleep * 2, MAX_SLEEP_S if idle < IDLE_S else IDLE_SLEEP_S)
