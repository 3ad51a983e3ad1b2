"""The serving side of the mpi backend: a node's leader and the ranks that
serve its rings (the data flow: shoal/_mpi_transport.py).

    leader (one thread: the main one; the only caller of MPI here)
      loop:
        Iprobe/Recv from the root ── TASKS: per local slot j a frame batch ──>
          push_tasks(j) onto ring j (kept back while the ring is full;
          payloads over half a ring go in a shared segment, INDIRECT)
        commands: adopt (a new pool's worker token), spawn (a replacement
          worker process), kill; TAG_CANCEL: the node's cancel mark
        drain_by_slot() ── results, per slot ──> one RESULTS message, with a
          status frame: per slot (frames received, frames on its ring, task
          time), messages taken (the root's credit), deaths (the
          supervisor's pidfds: slot, code, signal, the task it ran)
        waits: spins 2 ms after the last activity, then sleeps on the rings'
          doorbell (a result or a death wakes it at once; the root's
          messages are polled every 1 ms, every 10 ms after 0.1 s idle, 20 ms
          after 1 s)

    the node's other ranks: shoal._worker.Worker on ring j of the leader's
      PoolChannel (its memfd through /proc/<leader>/fd), as a worker process
      of the processes backend runs; they call no MPI until the job ends
"""

from __future__ import annotations

import os
import pickle
import signal as _signal
import sys
import time

from . import _mpi_transport as _t
from ._backend_processes import RING_BYTES, cancel_board, indirect_segment, worker_env

CONTROL = 6
INDIRECT = 1
#: variables by which Open MPI, MPICH (Hydra) and PMIx tell a process it is a rank
_LAUNCHER_VARS = ("OMPI_", "PMIX_", "PMI_", "OPAL_", "HYDRA_", "HYDI_", "MPI_LOCAL")


def serve(comm, layout: "_t.Layout", node_comm) -> int:
    """Runs on every serving rank until the root says goodbye."""
    role = layout.role(comm.Get_rank())
    if role[0] == "leader":
        leader = Leader(comm, layout, role[1], node_comm)
        try:
            leader.run()
        finally:
            leader.close()
        return 0
    return serve_ring(node_comm, role[2])


def serve_ring(node_comm, j: int) -> int:
    """A rank that is a worker of its node's leader: ring j of the leader's
    channel, until the leader shuts it down."""
    from . import _core, _worker

    pid, fd = node_comm.bcast(None, root=0)
    myfd = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    chan = _core.PoolChannel.attach_fd(myfd)  # (it owns myfd)
    # (driver: this rank's parent, the launcher's daemon, as serve() checks it)
    _worker.Worker(j, os.getppid(), chan=chan).serve()
    return 0


class Leader:
    """One node's router between the root's messages and its workers' rings."""

    def __init__(self, comm, layout, node, node_comm) -> None:
        from . import _core
        from .allocation import thread_caps

        self.MPI = _t._mpi()
        self.core = _core
        self.comm, self.root, self.node = comm, layout.root, node
        self.n = node.slots
        _core.sweep_orphan_segments()
        self.chan = _core.PoolChannel.create(self.n, RING_BYTES)
        self.limit = self.chan.max_payload // 2
        self.sup = _core.WorkerSupervisor(self.chan)
        node_comm.bcast((os.getpid(), self.chan.fd), root=0)  # to serve_ring on the others
        self.cancel_seg, self.cancel_map, self.mark = cancel_board(_core, self.n)
        # The workers it spawns are not ranks: without the launcher's
        # variables, a task that imports mpi4py there gets an MPI of its own
        # (a singleton), not a failed attempt to join the job.
        self.env = [kv for kv in worker_env(thread_caps(self.n).env)
                    if not kv.startswith(_LAUNCHER_VARS)]
        self.argv = [sys.executable, "-m", "shoal._worker", "--driver", str(os.getpid())]
        self.pids = [0] * self.n          # spawned workers' pids (0: none, or a rank)
        self.tokens = [0] * self.n        # the root's name for each slot's worker
        self.received = [0] * self.n      # frames from the root, per slot (since adopt)
        self.pending: list[list] = [[] for _ in range(self.n)]  # not on the ring yet
        self.keep: list[dict] = [{} for _ in range(self.n)]  # task id -> segment (INDIRECT)
        self.exits: list = []
        self.taken_msgs = 0
        self.last_sent = 0.0
        for j in range(node.spawned):
            self._spawn(j)
        for j in range(node.spawned, self.n):
            self._announce(j)

    # ---------------------------------------------------------- workers
    def _announce(self, j: int) -> None:
        from . import _serialize

        msg = {"sys_path": list(sys.path), "inline": True,
               "cancel": None if self.cancel_seg is None else self.cancel_seg.name}
        self.chan.push_tasks(j, [(0, CONTROL, 0, _serialize.dumps(msg).data)])

    def _spawn(self, j: int) -> None:
        self.chan.reset_slot(j)
        self.pending[j] = []
        self.keep[j] = {}
        pid = self.sup.spawn(j, self.argv + ["--slot", str(j)], self.env, self.chan.fd)
        self.pids[j] = pid
        self.chan.set_pid(j, pid)
        self._announce(j)

    def _command(self, j: int, cmd: dict) -> None:
        if "adopt" in cmd:  # a new pool: its name for this worker
            self.tokens[j] = cmd["adopt"]
            self.received[j] = 0
            if j < self.node.spawned and self.pids[j] == 0:
                self._spawn(j)  # it died between pools
        elif "spawn" in cmd:  # a replacement for a worker that died
            self.tokens[j] = cmd["spawn"]
            self.received[j] = 0
            if j < self.node.spawned:
                if self.pids[j]:
                    self.sup.signal(self.pids[j], _signal.SIGKILL)
                self._spawn(j)
        elif "kill" in cmd:
            if j < self.node.spawned and self.pids[j]:
                self.sup.signal(self.pids[j], _signal.SIGKILL)

    def _fit(self, j: int, frames: list) -> list:
        """Payloads over half a ring go in a shared segment (INDIRECT),
        kept until the task's result comes back."""
        limit = self.limit
        if not any(len(f[3]) > limit for f in frames):
            return frames
        out = []
        for tid, kind, flags, data in frames:
            if len(data) > limit:
                seg, v = indirect_segment(self.core, len(data))
                v[:] = memoryview(data)
                del v
                self.keep[j][tid] = seg
                out.append((tid, kind, flags | INDIRECT, seg.name.encode()))
            else:
                out.append((tid, kind, flags, data))
        return out

    def _bulk_in(self, j: int, header: bytes) -> tuple:
        """A bulk frame from the root: its payload, the next TAG_BULK
        message, received straight into the segment the worker reads."""
        n = _t.BULK_HEADER.size
        tid, kind, flags, size = _t.BULK_HEADER.unpack_from(header)
        if len(header) > n:  # arguments out of band: the root's segment's bytes
            # A recycled segment when one is free (the serializer's arena: a
            # fresh one costs ~1.3 ms/MiB of page faults here, and again in
            # the worker, which keeps its mapping of a recycled one).
            from . import _serialize

            got = _serialize._ARENA.take(size)
            if got is None:
                seg = self.core.SharedSegment.create(size)
                got = (seg, _serialize._word(seg))
            seg = got[0]
            v = seg.view()[:size]
            self.comm.Recv([v, self.MPI.BYTE], source=self.root, tag=_t.TAG_BULK)
            del v
            self.keep[j][tid] = got  # back to the arena with the task's result
            data = _serialize.out_of_band_renamed(header[n:], seg.name)
            return (tid, kind, flags, data)
        seg, v = indirect_segment(self.core, size)
        self.comm.Recv([v, self.MPI.BYTE], source=self.root, tag=_t.TAG_BULK)
        del v
        self.keep[j][tid] = seg
        return (tid, kind, flags | INDIRECT, seg.name.encode())

    def _results(self, j: int, frames: list, outer: list, bulks: list) -> None:
        """A slot's result frames for the root, as outer frames: small ones
        in one batch; a payload in a shared segment as a bulk message sent
        from the segment itself. Segments of finished tasks dropped."""
        keep = self.keep[j]
        if keep:
            from . import _serialize

            for f in frames:
                ref = keep.pop(f[0], None)
                if type(ref) is tuple:  # refilled once the worker's objects are gone
                    _serialize._ARENA.give(*ref)
        pack = self.core.pack_frames
        if not any(f[2] & INDIRECT for f in frames):
            outer.append((j, _t.RESULT, 0, pack(frames)))
            return
        run = []
        for tid, kind, flags, data in frames:
            if not flags & INDIRECT:
                run.append((tid, kind, flags, data))
                continue
            if run:
                outer.append((j, _t.RESULT, 0, pack(run)))
                run = []
            seg = self.core.SharedSegment.attach(data.decode())
            seg.adopt_name()  # the worker released it to its reader: unlinked once sent
            v = seg.view()
            size = int.from_bytes(bytes(v[:8]), "little")
            outer.append((j, _t.CALL, 0, _t.BULK_HEADER.pack(tid, kind, flags & ~INDIRECT, size)))
            bulks.append((v[8: 8 + size], seg))
        if run:
            outer.append((j, _t.RESULT, 0, pack(run)))

    def _deaths(self, out: list) -> None:
        for j, pid, code, sig in self.sup.take_exits():
            if j < 0 or j >= self.n or self.pids[j] != pid:
                continue
            running, _ = self.chan.slot_state(j)
            frames = self.chan.drain_slot(j)  # what it sent before it died goes first
            if frames:
                out.append((j, frames))
            self.pids[j] = 0
            self.core.sweep_segments_of(pid)
            self.exits.append((j, self.tokens[j], code, sig, running,
                               f"pid {pid}, {self.node.describe(j)}"))

    def _idle_slot(self) -> bool:
        chan = self.chan
        for j in range(self.n):
            if not self.pending[j] and chan.queued(j) == 0 and chan.slot_state(j)[0] == 0:
                return True
        return False

    # ---------------------------------------------------------- the loop
    def run(self) -> None:
        MPI, comm, root, chan = self.MPI, self.comm, self.root, self.chan
        pack, unpack = self.core.pack_frames, self.core.unpack_frames
        st = MPI.Status()
        out: list = []        # (j, frames) for the root
        out_bytes = 0
        first_out = 0.0
        last_activity = time.monotonic()
        sleep = 0.00005
        sends: list = []
        while True:
            busy = False
            while comm.Iprobe(source=root, tag=MPI.ANY_TAG, status=st):
                tag = st.Get_tag()
                buf = bytearray(st.Get_count(MPI.BYTE))
                comm.Recv([buf, MPI.BYTE], source=root, tag=tag)
                busy = True
                if tag == _t.TAG_BYE:
                    MPI.Request.Waitall([s[0] for s in sends])
                    return
                if tag == _t.TAG_CANCEL:
                    upto, exempt = pickle.loads(bytes(buf))
                    if self.mark is not None:
                        for j, tid in exempt.items():
                            self.mark[1 + j] = tid  # before [0]: see cancel_board
                        self.mark[0] = upto
                    continue
                self.taken_msgs += 1
                for j, kind, flags, data in unpack(bytes(buf)):
                    if kind == CONTROL:
                        self._command(j, pickle.loads(data))
                        continue
                    frames = [self._bulk_in(j, data)] if kind == _t.CALL else unpack(data)
                    self.received[j] += len(frames)
                    if kind != _t.CALL:
                        frames = self._fit(j, frames)
                    if self.pending[j]:
                        self.pending[j].extend(frames)
                    else:
                        i = chan.push_tasks(j, frames)
                        if i < len(frames):
                            self.pending[j] = frames[i:]
            for j in range(self.n):
                if self.pending[j]:
                    i = chan.push_tasks(j, self.pending[j])
                    if i:
                        self.pending[j] = self.pending[j][i:]
                        busy = True
            for j, frames in chan.drain_by_slot():
                if not out:
                    first_out = time.monotonic()
                out.append((j, frames))
                out_bytes += sum(len(f[3]) for f in frames) + 24 * len(frames)
                busy = True
            self._deaths(out)
            now = time.monotonic()
            if self.exits or (out and (out_bytes >= _t.FLUSH_BYTES
                                       or now - first_out >= _t.FLUSH_SECONDS
                                       or self._idle_slot())) \
                    or (self.taken_msgs and now - self.last_sent >= _t.FLUSH_SECONDS):
                status = {"m": self.taken_msgs, "x": self.exits,
                          "q": [(j, self.received[j], len(self.pending[j]) + chan.queued(j),
                                 chan.task_ns(j)) for j in range(self.n)]}
                outer: list = []
                bulks: list = []
                for j, frames in out:
                    self._results(j, frames, outer, bulks)
                outer.append((0, CONTROL, 0, pickle.dumps(status, 5)))
                msg = pack(outer)
                sends.append((comm.Isend([msg, MPI.BYTE], dest=root, tag=_t.TAG_RESULTS), msg))
                for view, seg in bulks:
                    sends.append((comm.Isend([view, MPI.BYTE], dest=root, tag=_t.TAG_BULK),
                                  (view, seg)))
                out, out_bytes, self.exits, self.taken_msgs = [], 0, [], 0
                self.last_sent = now
            if sends:
                sends = [s for s in sends if not s[0].Test()]
            if busy:
                last_activity = now
                sleep = 0.00005
                continue
            idle = now - last_activity
            if idle < _t.SPIN_S:
                os.sched_yield()
                continue
            if chan.any_result():
                continue
            # Sleep on the rings' doorbell: a result or a death ends it at once.
            chan.wait_driver(chan.doorbell(), sleep, 0.0)
            sleep = min(sleep * 2, _t.longest_sleep(idle))

    def close(self) -> None:
        """The job's end: every worker leaves (rank workers return to their
        script's end), the spawned ones are reaped, segments go."""
        self.chan.shutdown()
        try:
            self.sup.stop(2.0)
        except Exception:  # noqa: BLE001
            pass
        self.keep = []  # (their segments unlinked)
        if self.mark is not None:
            self.mark.release()
            self.cancel_map.close()
            self.mark = self.cancel_map = self.cancel_seg = None
