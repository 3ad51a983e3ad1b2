"""What the job monitor costs (the recording side: shoal/monitor/, shoal/event_ring.hpp,
shoal/sampler.hpp, shoal/monitor_file.hpp).

    .venv/bin/python benchmarks/monitor/bench_monitor.py [--quick] [--out FILE]

Rows (goals from issue 11):
  record call             RingWriter.record from Python (the threads backend's
                          per-task call), median ns, less an empty C call
  worker push_result      a worker's result push with the monitor attached vs not
                          (the processes backend's whole per-task recording cost:
                          PoolChannel::note_result, a clock read and a ring write)
  map on/off              map(f, range(N), chunksize=1) throughput, goal >= 97%
  submit on/off           N submits + results, goal >= 97%
  sampler CPU idle        % of one core at 10 Hz with 2 workers to sample, goal <= 0.5%
  sampler CPU per task    the sampler thread's CPU during the map, per task
  file size               the map's monitor file, bytes per task; 1 M tasks <= 32 MB

On/off runs alternate (off, on, off, on, ...) and each side's median is used:
on a shared machine, load drifts between runs more than the monitor costs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time

import shoal
from shoal import _core


def f(x):
    return x


def _median_ns_per_call(fn, n: int, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        ts.append((time.perf_counter_ns() - t0) / n)
    return statistics.median(ts)


def bench_record_call(tmp: str, n: int, repeats: int) -> tuple[float, float]:
    s = _core.MonitorSampler(os.path.join(tmp, "rec.shoal"), 10.0, [], 1 << 12)
    s.add_rings(1, 1, False)
    w = s.thread_writer(1, 0)
    rec, clock = w.record, _core.monotonic_ns

    def with_record(k: int) -> None:
        for i in range(k):
            rec(i, 0, 0, 0)  # a full ring drops: the same cost as a kept record, counted

    def empty(k: int) -> None:
        for i in range(k):
            clock()

    sub = s.pool_log(1).submit

    def with_submit(k: int) -> None:
        for i in range(k):
            sub(i, 1, 100)
        s.tick()  # (timed: the sampler's share of a submit record, written to the file)

    got = _median_ns_per_call(with_record, n, repeats)
    base = _median_ns_per_call(empty, n, repeats)
    submit = _median_ns_per_call(with_submit, n, repeats)
    s.stop("{}")
    return got, base, submit


def bench_push_result(tmp: str, n: int, repeats: int) -> tuple[float, float]:
    """One worker's per-task calls (set_current, push_result, set_current 0)
    on a real PoolChannel, the result ring drained between rounds."""
    cap = 32768  # the default ring (SHOAL_MONITOR_RING)
    n = min(n, cap)
    s = _core.MonitorSampler(os.path.join(tmp, "push.shoal"), 10.0, [], cap)
    seg = s.add_rings(1, 1, True)
    chans = {}
    for on in (False, True):
        ch = _core.PoolChannel.create(1, 1 << 22)
        if on:
            ch.attach_monitor(seg, 1, 0)
        chans[on] = ch
    data = b"\x80\x05K\x01."

    def run(ch, k: int) -> None:
        cur, push, drain = ch.set_current, ch.push_result, ch.drain_slot
        for i in range(1, k + 1):
            cur(0, i)
            push(0, i, 4, 0, data)
            cur(0, 0)
            if not i & 4095:
                drain(0)  # (the driver's part, ~1% of the loop)
        drain(0)

    # A first lap of the ring, so that its pages are mapped in this process
    # (a worker faults them in once, on its first lap).
    run(chans[True], cap)
    s.tick()
    times: dict = {False: [], True: []}
    for k in range(repeats):  # off and on alternate; the sampler drains between, untimed
        for on in ((False, True) if k % 2 == 0 else (True, False)):
            t0 = time.perf_counter_ns()
            run(chans[on], n)
            times[on].append((time.perf_counter_ns() - t0) / n)
            s.tick()
    res = {on: statistics.median(v) for on, v in times.items()}
    s.stop("{}")
    return res[False], res[True]


#: every on/off pair measured, for the results file (load drifts: see the docstring)
PAIRS: dict[str, list] = {}


def _alternate(run_off, run_on, repeats: int, name: str = "") -> tuple[float, float]:
    off, on = [], []
    for k in range(repeats):
        if k % 2:  # off first, then on first: neither side always follows the other
            on.append(run_on())
            off.append(run_off())
        else:
            off.append(run_off())
            on.append(run_on())
    if name:
        PAIRS[name] = list(zip(off, on))
    return statistics.median(off), statistics.median(on)


def bench_map(tmp: str, n: int, repeats: int) -> dict:
    out: dict = {}
    path = os.path.join(tmp, "map.shoal")

    def once(monitor: bool) -> float:
        mon = shoal.monitor(path).start() if monitor else None
        try:
            with shoal.Pool(2) as pool:
                pool.map(f, range(1000), chunksize=1)  # workers up and warm
                s = mon.session.sampler if mon is not None else None
                c0 = s.thread_cpu_ns if s is not None else 0
                t0 = time.perf_counter()
                pool.map(f, range(n), chunksize=1)
                dt = time.perf_counter() - t0
        finally:
            if mon is not None:
                mon.stop()
        if mon is not None:
            out["sampler_ns_per_task"] = (mon.session.sampler.thread_cpu_ns - c0) / n
            out["file_bytes"] = os.path.getsize(path)
        return dt

    off, on = _alternate(lambda: once(False), lambda: once(True), repeats, "map")
    out["off_s"], out["on_s"] = off, on
    run = shoal.monitor.load(path)
    out["tasks_in_file"] = len(run.tasks)
    out["dropped"] = run.dropped
    return out


def bench_submit(tmp: str, n: int, repeats: int) -> tuple[float, float, float, float]:
    """Wall time of n submits and their results, and the driver process's CPU
    time for them (every thread of it: the caller, the collector, the
    sampler), which the neighbours' load disturbs less than the wall time."""
    path = os.path.join(tmp, "submit.shoal")
    cpu: dict = {False: [], True: []}

    def once(monitor: bool) -> float:
        mon = shoal.monitor(path).start() if monitor else None
        try:
            with shoal.Executor(2) as ex:
                ex.submit(f, 0).result()
                t0, c0 = time.perf_counter(), time.process_time()
                futs = [ex.submit(f, i) for i in range(n)]
                for fut in futs:
                    fut.result()
                cpu[monitor].append(time.process_time() - c0)
                return time.perf_counter() - t0
        finally:
            if mon is not None:
                mon.stop()

    off, on = _alternate(lambda: once(False), lambda: once(True), repeats, "submit")
    return off, on, statistics.median(cpu[False]), statistics.median(cpu[True])


def bench_sampler_idle(tmp: str, seconds: float) -> float:
    with shoal.monitor(os.path.join(tmp, "idle.shoal")) as mon:
        with shoal.Pool(2) as pool:
            pool.map(f, range(10), chunksize=1)
            s = mon.session.sampler
            time.sleep(0.3)
            c0, t0 = s.thread_cpu_ns, time.perf_counter()
            time.sleep(seconds)
            c1, t1 = s.thread_cpu_ns, time.perf_counter()
    return (c1 - c0) / 1e9 / (t1 - t0) * 100


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args(argv)
    q = args.quick
    n_map = 20_000 if q else 1_000_000
    n_submit = 2_000 if q else 20_000
    repeats = 1 if q else 5
    lines = []

    def row(name: str, value: str, goal: str = "", verdict: str = "") -> None:
        line = f"{name:<34} {value:>28}  {goal:<14} {verdict}"
        lines.append(line)
        print(line, flush=True)

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"shoal monitor benchmark ({'quick' if q else 'full'}), {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    lines.append(f"host {os.uname().nodename}, {len(os.sched_getaffinity(0))} CPUs, "
                 f"load at start {os.getloadavg()[0]:.2f}, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    with tempfile.TemporaryDirectory() as tmp:
        got, base, submit = bench_record_call(tmp, 20_000 if q else 500_000, 3 if q else 7)
        row("record call (threads backend)", f"{got:.0f} ns (a C call reading the clock: {base:.0f})")
        row("driver submit record + its write", f"{submit:.0f} ns")
        off, on = bench_push_result(tmp, 16_384, 5 if q else 41)
        row("worker per-task calls off / on", f"{off:.0f} / {on:.0f} ns (+{on - off:.0f})")
        m = bench_map(tmp, n_map, repeats)
        ratio = m["off_s"] / m["on_s"]
        row(f"map {n_map:,} chunksize=1 on/off", f"{ratio * 100:.1f}% ({n_map / m['on_s']:,.0f} vs "
            f"{n_map / m['off_s']:,.0f}/s)", ">= 97%", verdict(ratio >= 0.97))
        row("  tasks in the file, dropped", f"{m['tasks_in_file']:,}, {m['dropped']:,}")
        per_task = m["file_bytes"] / n_map
        row("file size", f"{m['file_bytes'] / 2**20:.1f} MiB, {per_task:.1f} B/task",
            "1 M <= 32 MB", verdict(per_task * 1e6 <= 32e6))
        row("sampler CPU per task (map)", f"{m['sampler_ns_per_task']:.0f} ns")
        off, on, cpu_off, cpu_on = bench_submit(tmp, n_submit, repeats)
        ratio = off / on
        row(f"{n_submit:,} submits on/off", f"{ratio * 100:.1f}% ({n_submit / on:,.0f} vs "
            f"{n_submit / off:,.0f}/s)", ">= 97%", verdict(ratio >= 0.97))
        row("  driver CPU per submit off / on", f"{cpu_off / n_submit * 1e9:,.0f} / "
            f"{cpu_on / n_submit * 1e9:,.0f} ns ({cpu_off / cpu_on * 100:.1f}%)")
        idle = bench_sampler_idle(tmp, 1.0 if q else 5.0)
        row("sampler CPU idle, 10 Hz", f"{idle:.2f}% of a core", "<= 0.5%", verdict(idle <= 0.5))
    for name, pairs in PAIRS.items():
        lines.append(f"  {name} runs (off s, on s): " +
                     ", ".join(f"({a:.3f}, {b:.3f})" for a, b in pairs))
    if args.out:
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
