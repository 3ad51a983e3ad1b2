"""MPI transport of the mpi backend: the root talks to one leader per node;
a node's cores are reached through the processes backend's shared-memory
rings (shoal/pool_channel.hpp), never through MPI.

    root (rank 0)                    leader of node k                 the node's workers
    -------------                    (lowest serving rank on it)      -------------------
    ledger (Engine): one slot        _mpi_node.Leader: one thread     shoal._worker.Worker,
      per worker of every node         (its main thread) calls MPI      unchanged, on ring j:
    RootChannel.push_tasks(slot) ──>  TASKS: one message, a frame      processes the leader
      outbox[leader]: per local        batch (frame_batch.hpp) of      spawned for the node's
      slot j a run of frames           per-slot batches ──> push_tasks free cores, and the
    engine thread (the only one        (j, frames) onto ring j ──────> node's other ranks,
      calling MPI on the root):                                        which serve the rings
      credit: CREDIT messages        <── drain_by_slot: results of     through the leader's
      in flight per leader             every ring, per slot, + one     memfd (/proc/pid/fd)
    inbox[slot] <── RESULTS <───────   status frame (queues, task
    doorbell rung                      times, deaths), flushed when
                                       1 MiB or 2 ms pile up or a
                                       worker idles

Nodes come from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED); SHOAL_MPI_NODE_SIZE=m
cuts each node's serving ranks into virtual nodes of m ranks (so the
root-leader-worker path runs on one machine). A leader spawns
SHOAL_MPI_LEADER_WORKERS worker processes (default: its CPUs less the node's
other serving ranks, at least 1): a worker process that dies is reported to
the root like a processes-backend worker (WorkerLost, retries) and replaced.

Functions, arguments and results are pickled in band (the root and a
leader may be on different nodes: no shared segment crosses). Only one
thread of a process calls MPI (mpi4py, MPI's maintained binding, is the one
choke point that turns MPI errors into exceptions); messages use a duplicate
of the user's communicator, so that shoal's tags never meet the user's.
"""

from __future__ import annotations

import itertools
import os
import pickle
import struct
import sys
import time

#: message tags on shoal's own communicator
TAG_TASKS, TAG_RESULTS, TAG_BYE, TAG_CANCEL, TAG_BULK = 7101, 7102, 7103, 7104, 7105
#: frame kinds (shoal/frame.hpp)
CALL, BATCH, RESULT, CONTROL = 2, 3, 4, 6
#: A frame payload at least this big travels as an MPI message of its own
#: (TAG_BULK, sent straight from the pickle's bytes; the leader receives it
#: into the shared segment its worker reads): its outer frame is a Call
#: frame whose payload is BULK_HEADER (slot's frame: task id, kind, flags,
#: size). Arguments whose buffers went out of band (shoal/_serialize.py:
#: a shared segment on the root) send that segment's used bytes instead,
#: straight from its mapping: the Call frame's payload then goes on with
#: the frame's own (the segment's name, the buffers' offsets, the pickle),
#: and the leader receives the bytes into a segment of its own and renames.
BULK_BYTES = 1 << 19
BULK_HEADER = struct.Struct("<QQQQ")
#: The frames of a message between the root and a leader: a Control frame
#: is a command (root -> leader) or a status (leader -> root), a pickled
#: dict; a Batch / Result frame's task id is a local slot, its payload
#: that slot's frames (a frame batch); a Call frame announces a bulk one.
#: messages in flight to a leader before the root keeps further frames
#: back, to send them as one message when the leader reports
CREDIT = 2
#: ... unless this many frames wait
CREDIT_FRAMES = 512
#: results a serving rank keeps before it sends them anyway
FLUSH_BYTES = 1 << 20
FLUSH_SECONDS = 0.002
#: how long a waiting rank spins before it starts to sleep, and its longest sleep
SPIN_S = float(os.environ.get("SHOAL_MPI_SPIN_US", "2000")) * 1e-6
MAX_SLEEP_S = 0.001
#: ... and, idle for more than IDLE_S, its longest sleep then
IDLE_S, IDLE_SLEEP_S = 0.1, 0.01
#: ... and, idle for more than LONG_IDLE_S (tasks of a second or more, or
#: none), its longest sleep then: at most 2% on a result's latency
LONG_IDLE_S, LONG_IDLE_SLEEP_S = 1.0, 0.02


def longest_sleep(idle: float) -> float:
    """How long a waiting engine may sleep, idle for ``idle`` seconds."""
    if idle < IDLE_S:
        return MAX_SLEEP_S
    return IDLE_SLEEP_S if idle < LONG_IDLE_S else LONG_IDLE_SLEEP_S

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


def say_bye(comm, layout: "Layout") -> None:
    """Tells every leader to stop its node's workers and leave."""
    MPI = _mpi()
    reqs = [comm.Isend([b"", MPI.BYTE], dest=node.leader, tag=TAG_BYE) for node in layout.nodes]
    MPI.Request.Waitall(reqs)


class Node:
    """One node (or virtual node) of the job: its serving ranks, the first
    of which leads; its worker slots are ``spawned`` processes of the leader
    (local slots 0..spawned-1), then the other ranks (one slot each)."""

    __slots__ = ("index", "ranks", "host", "spawned")

    def __init__(self, index: int, ranks: list, host: str, spawned: int) -> None:
        self.index, self.ranks, self.host, self.spawned = index, ranks, host, spawned

    @property
    def leader(self) -> int:
        return self.ranks[0]

    @property
    def slots(self) -> int:
        return self.spawned + len(self.ranks) - 1

    def describe(self, j: int) -> str:
        if j < self.spawned:
            return f"worker process {j} of rank {self.leader} on {self.host}"
        return f"rank {self.ranks[1 + j - self.spawned]} on {self.host}"


class Layout:
    """Where the workers of an MPI job are, the same on every rank (computed
    from one allgather). ``slots``: (node, local slot) for every worker,
    interleaved across nodes, so that a pool of fewer workers spreads."""

    def __init__(self, root: int, nodes: list) -> None:
        self.root = root
        self.nodes = nodes
        per = [[(n, j) for j in range(n.slots)] for n in nodes]
        self.slots = [x for row in itertools.zip_longest(*per) for x in row if x is not None]

    def role(self, rank: int) -> tuple:
        """("root",), ("leader", node) or ("ring", node, local slot)."""
        if rank == self.root:
            return ("root",)
        for n in self.nodes:
            if rank == n.leader:
                return ("leader", n)
            if rank in n.ranks:
                return ("ring", n, n.spawned + n.ranks.index(rank) - 1)
        raise AssertionError(f"rank {rank} is in no node")


def leader_workers(cpus: int, node_ranks: int) -> int:
    """How many worker processes a leader spawns: SHOAL_MPI_LEADER_WORKERS,
    else the CPUs it may use less the node's other serving ranks (each of
    which is a worker itself), at least 1 (the leader's own core: it only
    routes frames, and sleeps while it waits)."""
    env = os.environ.get("SHOAL_MPI_LEADER_WORKERS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise MPIError(f"SHOAL_MPI_LEADER_WORKERS={env!r} is not a number of workers") from None
        if n < 0:
            raise MPIError(f"SHOAL_MPI_LEADER_WORKERS={env!r} must be 0 or more")
        if n == 0 and node_ranks == 1:
            n = 1  # a node of one rank needs a worker
        return n
    return max(1, cpus - (node_ranks - 1))


def discover(comm, root: int) -> tuple:
    """Collective over comm: (Layout, communicator of this rank's node or
    None on the root). Physical nodes from MPI_Comm_split_type(SHARED);
    SHOAL_MPI_NODE_SIZE cuts them into virtual ones."""
    MPI = _mpi()
    rank = comm.Get_rank()
    shared = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    phys = shared.allreduce(rank, op=MPI.MIN)  # a node's name: its lowest rank
    shared.Free()
    from .allocation import default_workers

    table = comm.allgather((phys, os.uname().nodename, default_workers()))
    env = os.environ.get("SHOAL_MPI_NODE_SIZE", "").strip()
    try:
        size = int(env) if env else 0
    except ValueError:
        raise MPIError(f"SHOAL_MPI_NODE_SIZE={env!r} is not a number of ranks") from None
    groups: dict = {}
    for r, (p, _, _) in enumerate(table):
        if r != root:
            groups.setdefault(p, []).append(r)
    nodes = []
    for p in sorted(groups):
        ranks = groups[p]
        step = size if size > 0 else len(ranks)
        for i in range(0, len(ranks), step):
            part = ranks[i:i + step]
            host, cpus = table[part[0]][1], table[part[0]][2]
            nodes.append(Node(len(nodes), part, host, leader_workers(cpus, len(part))))
    layout = Layout(root, nodes)
    role = layout.role(rank)
    color = MPI.UNDEFINED if role[0] == "root" else role[1].index
    node_comm = comm.Split(color, key=rank)
    return layout, (None if node_comm == MPI.COMM_NULL else node_comm)




class RootChannel:
    """The root side of the MPI transport, with PoolChannel's verbs for the
    task ledger: slot i is ``layout.slots[i]``, a worker of some node. The
    ledger's threads only touch the out- and inboxes (under one lock); the
    engine thread moves them over MPI, one message per leader at a time."""

    max_payload = 1 << 62
    fd = -1

    def __init__(self, comm, layout: Layout, slots: int) -> None:
        import threading

        self.MPI = _mpi()
        self.comm = comm
        self.layout = layout
        self.where = layout.slots[:slots]                  # slot -> (node, local slot)
        self.slots = len(self.where)
        self.leaders = sorted({n.leader for n, _ in self.where})
        self.lead_of = {r: i for i, r in enumerate(self.leaders)}
        self.slot_at = {(n.leader, j): i for i, (n, j) in enumerate(self.where)}
        self.lock = threading.Lock()
        self.cv = threading.Condition(threading.Lock())
        self.bell = 0
        self.wake = threading.Event()        # new frames for the engine thread
        self.asleep = False                  # it waits on wake (set before its last look)
        # per leader: entries [j, frames] (a run of slot j's frames) or
        # (j, command dict), in the order the ledger pushed them
        self.out: list[list] = [[] for _ in self.leaders]
        self.out_frames = [0] * len(self.leaders)
        self.inbox: list[list] = [[] for _ in range(self.slots)]
        self.pushed = [0] * self.slots       # frames pushed, per slot
        self.received = [0] * self.slots     # ... and received by the leader, as it last said
        self.on_ring = [0] * self.slots      # ... of which not taken by the worker yet
        self.task_times = [0] * self.slots   # the workers' average task times, ns
        self.in_flight = [0] * len(self.leaders)  # messages not reported taken (engine thread)
        self.exits: list = []                # (slot, token, code, signal) not taken yet
        self.died_running = [0] * self.slots  # the task a dead worker ran (slot_state)
        self.notes: dict = {}                # token -> where the worker was, for messages
        self.stopping = False
        self.error: BaseException | None = None
        self.messages = [0, 0]               # sent, received (for benchmarks)
        self.message_cpu_ns = 0              # engine thread CPU packing, sending, receiving
        self.cancels: list = []              # (leader, upto, {j: exempt}) for the engine thread
        self.thread = threading.Thread(target=self._engine, name="shoal-mpi", daemon=True)
        self.thread.start()

    # ---------------------------------------------------- the ledger's verbs
    def _append(self, slot: int, frames) -> None:
        # lock held
        node, j = self.where[slot]
        li = self.lead_of[node.leader]
        box = self.out[li]
        if box and type(box[-1]) is list and box[-1][0] == j:
            box[-1][1].extend(frames)
        else:
            box.append([j, list(frames)])
        self.out_frames[li] += len(frames)
        self.pushed[slot] += len(frames)

    def push_tasks(self, slot: int, frames: list, start: int = 0) -> int:
        part = frames[start:] if start else frames
        with self.lock:
            self._append(slot, part)
        if self.asleep:
            self.wake.set()
        return len(frames)

    def push_task(self, slot: int, task_id: int, kind: int, flags: int, data: bytes) -> bool:
        with self.lock:
            self._append(slot, ((task_id, kind, flags, data),))
        if self.asleep:  # (a spinning engine thread sees the frame by itself)
            self.wake.set()
        return True

    def command(self, slot: int, cmd: dict) -> None:
        """A command for the leader of slot's node about its local slot."""
        node, j = self.where[slot]
        with self.lock:
            self.out[self.lead_of[node.leader]].append((j, cmd))
            if "adopt" in cmd or "spawn" in cmd:
                # the leader counts this slot's frames anew from here
                self.pushed[slot] = self.received[slot] = self.on_ring[slot] = 0
        self.wake.set()

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

    def take_exits(self) -> list:
        with self.lock:
            out, self.exits = self.exits, []
        return out

    def queued(self, slot: int) -> int:
        # frames on the way or waiting at the leader + on the worker's ring
        return max(0, self.pushed[slot] - self.received[slot] + self.on_ring[slot])

    def pick_slot(self, max_queued: int, max_task_ns: int) -> int:
        loads = [self.queued(i) for i in range(self.slots)]
        return -1 - loads.index(min(loads))

    def task_ns(self, slot: int) -> int:
        # Until a worker has reported, its tasks count as long ones: the
        # ledger then queues one call per worker (not CALL_DEPTH), so that
        # the first long tasks of a map are spread as the workers free up.
        return self.task_times[slot] or UNKNOWN_TASK_NS

    def slot_state(self, slot: int) -> tuple[int, int]:
        # What a worker runs is known here only when it has died (its
        # leader says so with the death).
        return self.died_running[slot], 0

    def describe(self, slot: int) -> str:
        node, j = self.where[slot]
        return node.describe(j)

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
        """Workers skip the tasks up to ``upto`` they have not started, but
        ``exempt[slot]`` (shutdown(cancel_futures=True))."""
        per: dict = {r: {} for r in self.leaders}
        for slot, tid in exempt.items():
            node, j = self.where[slot]
            per[node.leader][j] = tid
        with self.lock:
            self.cancels += [(r, upto, ex) for r, ex in per.items()]
        self.wake.set()

    def reset_slot(self, slot: int) -> None:
        self.died_running[slot] = 0

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

    def _message(self, entries: list) -> tuple:
        """(the TASKS message, the bulk payloads that follow it in order, as
        (bytes, segment or None))."""
        from . import _core, _serialize

        pack = _core.pack_frames
        outer, bulks = [], []
        for e in entries:
            if type(e) is not list:
                outer.append((e[0], CONTROL, 0, pickle.dumps(e[1], 5)))
                continue
            j, frames = e
            run = []
            for f in frames:
                data = f[3]
                oob = f[1] in (CALL, BATCH) and _serialize.is_out_of_band(data)
                if not oob and len(data) < BULK_BYTES:
                    run.append(f)
                    continue
                if run:
                    outer.append((j, BATCH, 0, pack(run)))
                    run = []
                if oob:
                    name, extent = _serialize.out_of_band_extent(data)
                    seg = _core.SharedSegment.attach(name)
                    outer.append((j, CALL, 0, BULK_HEADER.pack(f[0], f[1], f[2], extent) + data))
                    bulks.append((seg.view()[:extent], seg))
                else:
                    outer.append((j, CALL, 0, BULK_HEADER.pack(f[0], f[1], f[2], len(data))))
                    bulks.append((data, None))
            if run:
                outer.append((j, BATCH, 0, pack(run)))
        return pack(outer), bulks

    def _status(self, leader: int, st: dict) -> None:
        """A leader's status frame (engine thread)."""
        li = self.lead_of.get(leader)
        if li is not None:
            self.in_flight[li] = max(0, self.in_flight[li] - st.get("m", 0))
        for j, received, on_ring, task_ns in st.get("q", ()):
            slot = self.slot_at.get((leader, j))
            if slot is not None:
                self.received[slot], self.on_ring[slot] = received, on_ring
                if task_ns:
                    self.task_times[slot] = task_ns
        exits = []
        for j, token, code, sig, running, where in st.get("x", ()):
            slot = self.slot_at.get((leader, j))
            if slot is not None:
                self.died_running[slot] = running
                self.notes[token] = where
                exits.append((slot, token, code, sig))
        if exits:
            with self.lock:
                self.exits += exits

    def _loop(self) -> None:
        from . import _core, _serialize

        MPI, comm = self.MPI, self.comm
        unpack = _core.unpack_frames
        st = MPI.Status()
        sends: list = []   # (request, message) until the send completes
        idle_since = time.monotonic()
        sleep = 0.00005
        while True:
            busy = False
            with self.lock:
                # A leader with CREDIT messages in hand gets the frames
                # queued since as one message when it reports: under load
                # the messages grow, an idle node gets a frame at once.
                outs = [(li, box) for li, box in enumerate(self.out)
                        if box and (self.in_flight[li] < CREDIT
                                    or self.out_frames[li] >= CREDIT_FRAMES)]
                for li, _ in outs:
                    self.out[li] = []
                    self.out_frames[li] = 0
                    self.in_flight[li] += 1
                cancels, self.cancels = self.cancels, []
            for rank, upto, exempt in cancels:
                msg = pickle.dumps((upto, exempt), 5)
                sends.append((comm.Isend([msg, MPI.BYTE], dest=rank, tag=TAG_CANCEL), msg))
            if outs:
                t0 = time.thread_time_ns()
            for li, entries in outs:
                msg, bulks = self._message(entries)
                dest = self.leaders[li]
                sends.append((comm.Isend([msg, MPI.BYTE], dest=dest, tag=TAG_TASKS), msg))
                for data, seg in bulks:
                    sends.append((comm.Isend([data, MPI.BYTE], dest=dest, tag=TAG_BULK),
                                  (data, seg)))
                self.messages[0] += 1 + len(bulks)
                busy = True
            if outs:
                self.message_cpu_ns += time.thread_time_ns() - t0
            if sends:
                left = []
                for s in sends:
                    if not s[0].Test():
                        left.append(s)
                    elif type(s[1]) is tuple and s[1][1] is not None:
                        # A segment's bytes are on their way: the ledger's
                        # payload may recycle it (the word the receiver of a
                        # segment clears, see shoal/_serialize.py).
                        _serialize.release_segment(s[1][1])
                sends = left
            got = False
            while comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_RESULTS, status=st):
                if not got:  # (timed only when a message is there, not on every idle pass)
                    t0 = time.thread_time_ns()
                src = st.Get_source()
                buf = bytearray(st.Get_count(MPI.BYTE))
                comm.Recv([buf, MPI.BYTE], source=src, tag=TAG_RESULTS)
                self.messages[1] += 1
                # (from a node this pool does not use, an earlier pool's late
                # results: read through all the same, bulk messages included,
                # which would otherwise be taken for a later message's; its
                # slots are not in slot_at, its status changes nothing)
                for j, kind, flags, data in unpack(bytes(buf)):
                    if kind == CONTROL:
                        self._status(src, pickle.loads(data))
                        continue
                    if kind == CALL:  # a bulk frame: its payload is the next TAG_BULK message
                        tid, k, fl, size = BULK_HEADER.unpack(data)
                        big = bytearray(size)
                        comm.Recv([big, MPI.BYTE], source=src, tag=TAG_BULK)
                        self.messages[1] += 1
                        frames = [(tid, k, fl, bytes(big))]
                        del big
                    else:
                        frames = unpack(data)
                    slot = self.slot_at.get((src, j))
                    if slot is None:
                        continue
                    with self.lock:
                        self.inbox[slot].extend(frames)
                got = True
            if got:
                self.message_cpu_ns += time.thread_time_ns() - t0
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
            sleep = min(sleep * 2, longest_sleep(idle))


#: what task_ns() says of a worker that has not reported a task time yet
UNKNOWN_TASK_NS = 10_000_000
