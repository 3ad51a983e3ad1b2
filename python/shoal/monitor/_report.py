"""The reporting commands: ``shoal report`` and ``shoal scale``.

    shoal report run.shoal ──► shoal.monitor.load() ──► Run ──► summary (stdout)
                                                           ├──► --html  _html.write_html
                                                           ├──► --png   _png.write_png
                                                           └──► --trace _trace.write_trace

    shoal scale --workers 1,2,4 script.py ──► for each repeat, for each count:
        python script.py (SHOAL_WORKERS=count) ──► wall time ──► median
        ──► speedup, efficiency, Amdahl fit ──► table (stdout), --png plot
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import _analysis

SCALE_EFFICIENT = 0.75   # "efficient" in shoal scale: at least this parallel efficiency


# ---------------------------------------------------------------- shoal report

def write_reports(run, html: str | None = None, png: str | None = None,
                  trace: str | None = None) -> dict[str, Any]:
    """stats(run), and the files asked for (one schedule and one stats for all)."""
    from ._summary import stats

    sched = _analysis.schedule(run)
    s = stats(run, sched)
    if html:
        from ._html import write_html

        write_html(run, html, s, sched)
    if png:
        from ._png import write_png

        write_png(run, png, s, sched=sched)
    if trace:
        from ._trace import write_trace

        write_trace(run, trace, sched)
    return s


def report_main(path: str, html: str | None = None, png: str | None = None, trace: str | None = None,
                color: bool | None = None, as_json: bool = False, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """``shoal report``: the summary of ``path`` (or stats() as JSON), and
    the files asked for. 2 for a file that cannot be read as a monitor file."""
    out = out or sys.stdout
    err = err or sys.stderr
    from .. import monitor

    load = getattr(monitor, "load", None)
    if load is None:
        print("shoal report: this shoal has no monitor file reader (shoal.monitor.load)", file=err)
        return 2
    file_error = getattr(monitor, "MonitorFileError", ValueError)
    try:
        run = load(path)
    except FileNotFoundError:
        print(f"shoal report: {path}: no such file", file=err)
        return 2
    except (file_error, OSError, ValueError) as e:
        why = str(e)
        if why.startswith(f"{path}: "):      # the reader named the file already
            why = why[len(path) + 2:]
        print(f"shoal report: {path} is not a readable shoal monitor file: {why}", file=err)
        return 2
    from ._summary import summary

    s = write_reports(run, html, png, trace)
    written = [p for p in (html, png, trace) if p]
    if as_json:
        import json

        print(json.dumps({**s, "written": written}, indent=2), file=out)
        return 0
    print(summary(run, color=color, s=s), file=out)
    if written:
        print("\nwrote " + ", ".join(written), file=out)
    return 0


# ---------------------------------------------------------------- shoal scale

@dataclass
class ScaleResult:
    counts: list[int]
    times: dict[int, list[float]] = field(default_factory=dict)
    cpus: int = 1
    cpus_source: str = ""
    skipped: list[int] = field(default_factory=list)

    def median(self, n: int) -> float:
        return statistics.median(self.times[n])

    def speedups(self) -> dict[int, float]:
        """n0 * T(n0) / T(n) for the smallest count n0: T(1)/T(n) when 1 is
        among the counts; otherwise perfect scaling up to n0 is assumed."""
        n0 = min(self.times)
        return {n: n0 * self.median(n0) / self.median(n) for n in sorted(self.times)}

    def amdahl(self) -> tuple[float, float] | None:
        """(s, T1): least squares of T(n) = T1 * (s + (1 - s) / n), i.e. of
        T(n) = a + b/n with a = T1*s, b = T1*(1 - s), s clipped to [0, 1]."""
        ns = sorted(self.times)
        if len(ns) < 2:
            return None
        x = [1.0 / n for n in ns]
        y = [self.median(n) for n in ns]
        k = len(ns)
        mx, my = sum(x) / k, sum(y) / k
        sxx = sum((xi - mx) ** 2 for xi in x)
        if sxx == 0:
            return None
        b = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y)) / sxx
        a = my - b * mx
        if a < 0:      # s = 0: T = b/n
            a, b = 0.0, sum(xi * yi for xi, yi in zip(x, y)) / sum(xi * xi for xi in x)
        elif b < 0:    # s = 1: T = a
            a, b = my, 0.0
        t1 = a + b
        return (a / t1 if t1 > 0 else 1.0), t1


def parse_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--workers {text!r}: expected a comma-separated list of positive integers") from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--workers {text!r}: expected a comma-separated list of positive integers")
    return counts


def default_counts(cpus: int) -> list[int]:
    out = [1]
    while out[-1] * 2 <= cpus:
        out.append(out[-1] * 2)
    if out[-1] != cpus:
        out.append(cpus)
    return out


def scale_main(script: str, args: list[str], workers: str | None = None, repeats: int = 3,
               png: str | None = None, oversubscribe: bool = False, python: str | None = None,
               out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``shoal scale``: runs ``python script args`` at each worker count
    (SHOAL_WORKERS, read by shoal.default_workers()) ``repeats`` times, and
    prints the median times, speedups, efficiencies and an Amdahl fit."""
    from ..allocation import WORKERS_VARIABLE, allocation

    out = out or sys.stdout
    err = err or sys.stderr
    if repeats < 1:
        print("shoal scale: --repeats must be at least 1", file=err)
        return 2
    if not os.path.exists(script):
        print(f"shoal scale: {script}: no such file", file=err)
        return 2
    alloc = allocation()
    cpus = max(1, alloc.cpus)
    try:
        counts = parse_counts(workers) if workers else default_counts(cpus)
    except ValueError as e:
        print(f"shoal scale: {e}", file=err)
        return 2
    result = ScaleResult(counts=counts, cpus=cpus, cpus_source=alloc.cpus_source)
    slurm = alloc.slurm or {}
    if slurm.get("in_job"):
        job = slurm.get("job_id") or "?"
        print(f"inside SLURM job {job}: {cpus} CPUs given ({alloc.cpus_source}); every run stays in "
              "this allocation", file=out)
        if not oversubscribe:
            result.skipped = [n for n in counts if n > cpus]
            counts = [n for n in counts if n <= cpus]
            if result.skipped:
                print(f"skipping {', '.join(map(str, result.skipped))} workers: more than the {cpus} CPUs "
                      "given (--oversubscribe runs them anyway)", file=out)
    else:
        print(f"{cpus} CPUs given ({alloc.cpus_source})", file=out)
    if not counts:
        print("shoal scale: no worker count left to run", file=err)
        return 2
    python = python or sys.executable
    print(f"running {python} {' '.join([script, *args])} at {', '.join(map(str, counts))} workers, "
          f"{repeats} time{'s' if repeats != 1 else ''} each ({WORKERS_VARIABLE} sets "
          "shoal.default_workers())", file=out)
    out.flush()
    for rep in range(repeats):              # round-robin: a drift in the machine hits every count
        for n in counts:
            env = dict(os.environ, **{WORKERS_VARIABLE: str(n)})
            t0 = time.perf_counter()
            proc = subprocess.run([python, script, *args], env=env, capture_output=True, text=True)
            dt = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"shoal scale: {script} failed at {n} workers (run {rep + 1}, exit code "
                      f"{proc.returncode}); its stderr:", file=err)
                print(proc.stderr.rstrip()[-4000:] or "(empty)", file=err)
                return 1
            result.times.setdefault(n, []).append(dt)
    print(scale_table(result), file=out)
    if png:
        write_scale_png(result, png)
        print(f"wrote {png}", file=out)
    return 0


def scale_table(r: ScaleResult) -> str:
    from ._summary import _seconds

    sp = r.speedups()
    ns = sorted(r.times)
    n0 = ns[0]
    lines = ["", f"{'workers':>7}  {'time':>9}  {'speedup':>7}  {'efficiency':>10}",
             f"{'':>7}  {'(median)':>9}"]
    for n in ns:
        note = "  oversubscribed" if n > r.cpus else ""
        lines.append(f"{n:>7}  {_seconds(r.median(n)):>9}  {sp[n]:>6.2f}x  {100 * sp[n] / n:>9.0f}%{note}")
    lines.append("")
    lines.append("speedup = T(1)/T(n)" if n0 == 1 else
                 f"speedup = {n0}*T({n0})/T(n): perfect scaling up to {n0} workers is assumed")
    lines.append("times: wall time of each whole script run, Python start-up included")
    fastest = min(ns, key=r.median)
    lines.append(f"fastest: {fastest} workers ({_seconds(r.median(fastest))})")
    good = [n for n in ns if sp[n] / n >= SCALE_EFFICIENT]
    if good:
        best = max(good)
        lines.append(f"most workers at >= {100 * SCALE_EFFICIENT:.0f}% efficiency: {best} "
                     f"({100 * sp[best] / best:.0f}%)")
    else:
        lines.append(f"no count reached {100 * SCALE_EFFICIENT:.0f}% efficiency")
    fit = r.amdahl()
    if fit:
        s, t1 = fit
        limit = f"{1 / s:.3g}x" if s > 0 else "unbounded"
        lines.append(f"Amdahl fit: serial fraction s = {s:.3f} (T1 = {_seconds(t1)}); "
                     f"largest speedup possible 1/s = {limit}")
    else:
        lines.append("Amdahl fit: needs at least 2 worker counts")
    if any(n > r.cpus for n in ns):
        lines.append(f"oversubscribed: more workers than the {r.cpus} CPUs given ({r.cpus_source})")
    return "\n".join(lines)


def write_scale_png(r: ScaleResult, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ns = sorted(r.times)
    sp = r.speedups()
    fig = Figure(figsize=(6.5, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    top = max(ns)
    ax.plot([0, top], [0, top], color="#999", ls="--", lw=1, label="ideal")
    inside = [n for n in ns if n <= r.cpus]
    over = [n for n in ns if n > r.cpus]
    ax.plot(inside, [sp[n] for n in inside], "o-", color="#1565c0", label="measured")
    if over:
        ax.plot(over, [sp[n] for n in over], "o", color="#c62828", label="oversubscribed")
    fit = r.amdahl()
    if fit:
        s, _ = fit
        xs = [1 + (top - 1) * k / 100 for k in range(101)]
        ax.plot(xs, [1 / (s + (1 - s) / x) for x in xs], color="#ef6c00", lw=1, label=f"Amdahl s={s:.3f}")
    if r.cpus <= top:
        ax.axvline(r.cpus, color="#c62828", lw=0.8, ls=":")
        ax.text(r.cpus, 0.3, f" {r.cpus} CPUs", color="#c62828", fontsize=8)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup")
    ax.set_xlim(0, top * 1.05)
    ax.set_ylim(0, max(top, max(sp.values())) * 1.05)
    ax.set_title("shoal scale", fontsize=11, loc="left")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.savefig(path, format="png")
    return path


__all__ = ["report_main", "scale_main", "write_reports", "ScaleResult", "scale_table", "write_scale_png"]
