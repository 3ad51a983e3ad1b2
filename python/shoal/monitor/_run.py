"""The in-memory form of one monitor file: what the reader (``_file.py``) builds
and every report (summary, verdicts, HTML, PNG, trace) reads.

This module is the contract between the recording side (C++ rings and sampler,
the file writer, the reader) and the reporting side. Times are nanoseconds
since ``meta["start_ns"]`` on the writer's CLOCK_MONOTONIC, -1 where unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# outcome of one task attempt
OK, RAISED, LOST, TIMED_OUT, CANCELLED, RETRIED = range(6)
OUTCOMES = ("ok", "raised", "lost", "timed out", "cancelled", "retried")

#: one row per task attempt (a retried task has a RETRIED row, then its last)
TASK_DTYPE = np.dtype([
    ("task", "<u8"),       # task id, unique within (rank of the driver) one run
    ("submit", "<i8"),     # when the caller submitted it (driver clock)
    ("start", "<i8"),      # when a worker began it, -1 if it never began
    ("end", "<i8"),        # when it ended (result, failure, loss, cancel), -1 if never
    ("fn", "<u4"),         # index into Run.functions
    ("worker", "<u4"),     # index into Run.workers (0xFFFFFFFF: none)
    ("rank", "<u4"),       # MPI rank of the worker's node, 0 off MPI
    ("bytes_in", "<u8"),   # pickled arguments
    ("bytes_out", "<u8"),  # pickled result or failure
    ("outcome", "u1"),     # OK, RAISED, ...
    ("attempt", "u1"),     # 0 for the first
])

#: one row per worker that ever ran (a replaced worker is a new row)
WORKER_DTYPE = np.dtype([
    ("worker", "<u4"),     # equals its index
    ("rank", "<u4"),
    ("pid", "<i8"),        # 0 for a thread of the threads backend
    ("tid", "<i8"),        # OS thread id for threads, 0 for processes
    ("started", "<i8"),
    ("ended", "<i8"),      # -1 while alive at the end of the file
])

#: always-on per-worker counters, exact even when task records were dropped
COUNTER_DTYPE = np.dtype([
    ("worker", "<u4"),
    ("tasks", "<u8"),
    ("busy_ns", "<u8"),
    ("hist", "<u8", (40,)),  # task durations: bucket k counts [2^k, 2^(k+1)) ns
])

#: the sampler's per-worker rows (10 Hz)
WORKER_SAMPLE_DTYPE = np.dtype([
    ("t", "<i8"),
    ("worker", "<u4"),
    ("cpu_ns", "<u8"),     # the worker's process (or thread) CPU time so far
    ("rss", "<u8"),        # bytes; for threads, the driver's
])

#: the sampler's system rows (10 Hz)
SYSTEM_SAMPLE_DTYPE = np.dtype([
    ("t", "<i8"),
    ("procs_running", "<u4"),   # /proc/stat procs_running
    ("shm_bytes", "<u8"),       # shoal's /dev/shm segments
    ("mem_current", "<u8"),     # cgroup memory.current (0 if unknown)
    ("mem_peak", "<u8"),        # cgroup memory.peak or the largest current seen
])

GPU_SAMPLE_DTYPE = np.dtype([
    ("t", "<i8"),
    ("gpu", "<u4"),
    ("util", "<f4"),       # percent
    ("mem_used", "<u8"),
    ("mem_total", "<u8"),
])

#: one row per parallel_for / parallel_reduce call and thread of it
NATIVE_DTYPE = np.dtype([
    ("call", "<u4"),
    ("start", "<i8"),
    ("end", "<i8"),
    ("thread", "<u4"),
    ("busy_ns", "<u8"),
])


@dataclass
class Run:
    """Everything one monitor file says.

    meta keys (all present, None where unknown): version, start_ns (monotonic),
    start_unix (float seconds), end_ns (wall end, monotonic since start_ns),
    command (str), argv (list), cwd, host, pid, backend names seen (list),
    allocation (dict of shoal.allocation() fields), cpus_given (int),
    cpu_ids (list of the cores the job may use), memory_limit (bytes),
    thread_pools (threadpoolctl's info list), thread_env (the thread-count
    variables the user set), sample_hz, gpu_note (why GPU
    samples are absent, e.g. "no NVIDIA GPU"), gpus (list of names).
    """

    meta: dict
    tasks: np.ndarray = field(default_factory=lambda: np.empty(0, TASK_DTYPE))
    functions: list = field(default_factory=list)
    workers: np.ndarray = field(default_factory=lambda: np.empty(0, WORKER_DTYPE))
    counters: np.ndarray = field(default_factory=lambda: np.empty(0, COUNTER_DTYPE))
    #: per-core busy fraction: core_t[i] is the time of row i of core_busy
    core_t: np.ndarray = field(default_factory=lambda: np.empty(0, "<i8"))
    core_busy: np.ndarray = field(default_factory=lambda: np.empty((0, 0), "<f4"))
    core_ids: list = field(default_factory=list)
    worker_samples: np.ndarray = field(default_factory=lambda: np.empty(0, WORKER_SAMPLE_DTYPE))
    system_samples: np.ndarray = field(default_factory=lambda: np.empty(0, SYSTEM_SAMPLE_DTYPE))
    gpu_samples: np.ndarray = field(default_factory=lambda: np.empty(0, GPU_SAMPLE_DTYPE))
    native: np.ndarray = field(default_factory=lambda: np.empty(0, NATIVE_DTYPE))
    #: task records that did not fit their ring (the counters still hold them)
    dropped: int = 0
    #: why the file ended early ("" for a clean end): a cut tail, a crash
    truncated: str = ""
