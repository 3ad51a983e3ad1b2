"""How long the monitor's reports take on a synthetic Run, and how big their
files are: summary (terminal), HTML, PNG, trace.

    python benchmarks/monitor/bench_report.py                 # 1 M tasks, 14 workers
    python benchmarks/monitor/bench_report.py --tasks 100000 --order worker

The Run comes from tests/python/monitor_runs.py (million(): lognormal tasks
around 1 ms, 10 Hz samples). ``--order start`` keeps its task records in start
order across workers (a merged file: the reports' radix sort by worker does
real work), ``--order worker`` groups them by worker as the per-worker rings
write them. Each row: the first call (imports included) and the median of
the following ``--repeats`` calls. Goals (docs/monitor.md): summary <= 100 ms,
HTML and PNG <= 1 s, HTML < 2 MB, trace <= 15 MB for 1 M tasks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))

GOALS = {"summary": 0.100, "html": 1.0, "png": 1.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--order", choices=("start", "worker"), default="start")
    ap.add_argument("--no-trace", action="store_true", help="skip the trace (the slowest, ~5 s)")
    args = ap.parse_args()

    import numpy as np

    import monitor_runs
    from shoal.monitor import _html, _png, _summary, _trace

    t0 = time.perf_counter()
    run = monitor_runs.million(workers=args.workers, tasks=args.tasks)
    if args.order == "worker":
        order = np.argsort(run.tasks["worker"], kind="stable")
        run.tasks = run.tasks[order]
    print(f"synthetic Run: {len(run.tasks):,} tasks on {args.workers} workers, "
          f"{run.meta['end_ns'] / 1e9:.1f} s, {len(run.core_t)} samples, records in {args.order} order "
          f"(built in {time.perf_counter() - t0:.2f} s)")
    tmp = tempfile.mkdtemp(prefix="shoal-bench-report-")
    paths = {"html": os.path.join(tmp, "r.html"), "png": os.path.join(tmp, "r.png"),
             "trace": os.path.join(tmp, "r.json.gz")}
    stages = [
        ("stats", lambda: _summary.stats(run)),
        ("summary", lambda: _summary.summary(run, color=False)),
        ("html", lambda: _html.write_html(run, paths["html"])),
        ("png", lambda: _png.write_png(run, paths["png"])),
    ]
    if not args.no_trace:
        stages.append(("trace", lambda: _trace.write_trace(run, paths["trace"])))
    rows = []
    for name, fn in stages:
        t = time.perf_counter()
        fn()
        first = time.perf_counter() - t
        times = []
        for _ in range(max(0, args.repeats if name != "trace" else min(args.repeats, 1))):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        warm = statistics.median(times) if times else first
        size = os.path.getsize(paths[name]) if name in paths else None
        rows.append((name, first, warm, size))
    print(f"\n{'report':<9} {'first call':>11} {'median':>9} {'goal':>8} {'size':>10}")
    for name, first, warm, size in rows:
        goal = GOALS.get(name)
        goal_s = f"{goal * 1e3:.0f} ms" if goal else "-"
        ok = "" if goal is None else ("  ok" if warm <= goal else "  OVER")
        size_s = f"{size / 1e6:.2f} MB" if size is not None else "-"
        print(f"{name:<9} {first * 1e3:>8.0f} ms {warm * 1e3:>6.0f} ms {goal_s:>8} {size_s:>10}{ok}")
    print("\nfirst call: imports included (matplotlib for the PNG); median: of the "
          f"{args.repeats} calls after it (the trace: one); files in {tmp}")
    html_mb = rows[2][3] / 1e6
    trace_row = [r for r in rows if r[0] == "trace"]
    print(f"HTML {html_mb:.2f} MB (goal < 2 MB)"
          + (f"; trace {trace_row[0][3] / 1e6:.2f} MB gzipped (goal <= 15 MB)" if trace_row else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
