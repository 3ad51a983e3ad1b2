"""The report's figures as one PNG (matplotlib, Agg, imported on first use):
the verdict and the figures as text, per-core heatmap, per-worker timeline,
task-duration histogram, sampled CPU and memory.

The timeline is always binned (per worker x time bin busy fraction, as many
bins as the image has columns for it): a PNG cannot show more, and binning
first is what keeps a 1 M-task Run under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _analysis
from ._run import Run
from ._summary import _bytes, _pct, _seconds
from ._summary import stats as _stats

TIMELINE_BINS = 800
_LEVEL_COLOR = {"bad": "#c62828", "warn": "#ef6c00", "note": "#0277bd", "good": "#2e7d32"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def write_png(run: Run, path: str, s: dict[str, Any] | None = None, dpi: int = 100,
              sched: _analysis.Schedule | None = None) -> str:
    """Write the figures to ``path`` (PNG); returns the path. ``s`` and
    ``sched``: stats(run) and _analysis.schedule(run), if already computed."""
    Figure = _pyplot()
    sched = _analysis.schedule(run) if sched is None else sched
    s = _stats(run, sched) if s is None else s
    wall_s = max(sched.wall, 1) / 1e9
    has_cores = run.core_busy.size > 0
    has_series = len(run.system_samples) > 0 or has_cores
    panels = ["text"] + (["cores"] if has_cores else []) + ["workers", "hist"] + (["series"] if has_series else [])
    heights = {"text": 1.6, "cores": 2.2, "workers": 2.6, "hist": 1.8, "series": 1.8}
    fig = Figure(figsize=(12, sum(heights[p] for p in panels) + 0.6), dpi=dpi)
    gs = fig.add_gridspec(len(panels), 1, height_ratios=[heights[p] for p in panels], hspace=0.55,
                          left=0.08, right=0.97, top=0.97, bottom=0.04)
    axes = {p: fig.add_subplot(gs[i]) for i, p in enumerate(panels)}

    ax = axes["text"]
    ax.axis("off")
    d = s["duration_s"]
    lines = [f"wall {_seconds(s['wall_s'])} · {s['cpus']} CPUs · CPU efficiency {_pct(s['efficiency'])} "
             f"({s['busy_source']})"
             + (f" · measured {_pct(s['measured_efficiency'])}" if s["measured_efficiency"] is not None else ""),
             f"{s['tasks']:,} tasks on {s['workers']} workers"
             + (f" · p50 {_seconds(d['p50'])} p99 {_seconds(d['p99'])} max {_seconds(d['max'])}"
                if d["p50"] is not None else "")
             + f" · overhead {_pct(s['overhead_share'])}",
             ("memory peak " + _bytes(s["memory_peak"])
              + (f" of {_bytes(s['memory_limit'])}" if s["memory_limit"] else "") if s["memory_peak"] else "memory not sampled")
             + " · GPU: " + (", ".join(f"{g['name']} {g['util_mean']:.0f}%" for g in s["gpus"])
                             or (s["gpu_note"] or "no samples"))]
    title = "shoal monitor" + (f": {s['command']}" if s["command"] else "")
    ax.text(0, 1.0, title, fontsize=13, weight="bold", va="top", transform=ax.transAxes)
    ax.text(0, 0.72, "Verdict: " + s["verdict"], fontsize=10.5, weight="bold", va="top",
            color=_LEVEL_COLOR.get(s["level"], "#222"), transform=ax.transAxes, wrap=True)
    ax.text(0, 0.42, "\n".join(lines), fontsize=9, va="top", family="monospace", transform=ax.transAxes)

    if has_cores:
        ax = axes["cores"]
        edges, mean, ids = _analysis.core_bins(run, TIMELINE_BINS)
        ax.imshow(np.nan_to_num(mean, nan=0.0), aspect="auto", interpolation="nearest", cmap="Blues",
                  vmin=0, vmax=1, extent=(edges[0] / 1e9, edges[-1] / 1e9, len(ids) - 0.5, -0.5))
        ax.set_title("per-core busy fraction (sampler)", fontsize=10, loc="left")
        ax.set_ylabel("core")
        _int_ticks(ax, ids)

    ax = axes["workers"]
    nbins = TIMELINE_BINS
    edges, frac = _analysis.worker_bins(sched, nbins)
    ax.imshow(frac, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0, vmax=1,
              extent=(0, edges[-1] / 1e9, max(1, sched.workers) - 0.5, -0.5))
    ax.set_title(f"per-worker busy fraction in {nbins} bins of {_seconds(float(edges[1] - edges[0]) / 1e9)} "
                 f"({len(sched.worker):,} task records)", fontsize=10, loc="left")
    ax.set_ylabel("worker")
    ax.set_xlim(0, wall_s)
    _int_ticks(ax, list(range(max(1, sched.workers))))

    ax = axes["hist"]
    hedges, counts, source = _analysis.duration_hist(run, sched)
    if len(counts):
        # log10 seconds on a linear axis, labelled by hand: a log axis's minor
        # ticks cost more to draw than the rest of the figure
        lo = np.log10(hedges)
        ax.bar(lo[:-1], counts, width=np.diff(lo), align="edge", color="#1565c0")
        decades = np.arange(np.ceil(lo[0]), np.floor(lo[-1]) + 1)
        ax.set_xticks(decades)
        ax.set_xticklabels([_seconds(10.0 ** k) for k in decades], fontsize=8)
        ax.set_xlim(lo[0], lo[-1])
        top = counts.max()
        for k in ("p50", "p99"):
            if d.get(k):
                ax.axvline(np.log10(d[k]), color="#c62828", lw=1)
                ax.text(np.log10(d[k]), top * 0.95, " " + k, color="#c62828", fontsize=8, va="top")
    ax.set_title(f"task durations ({source})", fontsize=10, loc="left")

    if has_series:
        ax = axes["series"]
        if has_cores:
            ax.plot(run.core_t / 1e9, run.core_busy.sum(axis=1), color="#1565c0", lw=1, label="cores busy")
        ss = run.system_samples
        if len(ss):
            ax.plot(ss["t"] / 1e9, ss["procs_running"], color="#ef6c00", lw=1, label="runnable (node)")
        ax.axhline(s["cpus"], color="#c62828", lw=1, ls="--", label="CPUs given")
        ax.set_xlim(0, wall_s)
        ax.set_ylabel("CPUs")
        ax.set_title("CPU over time" + (" and memory (right, GiB)" if len(ss) and ss["mem_current"].max() else ""),
                     fontsize=10, loc="left")
        ax.legend(loc="lower right", fontsize=8, ncol=3)
        if len(ss) and int(ss["mem_current"].max()) > 0:
            ax2 = ax.twinx()
            ax2.plot(ss["t"] / 1e9, ss["mem_current"] / 2**30, color="#6a1b9a", lw=1)
            if s["memory_limit"]:
                ax2.axhline(s["memory_limit"] / 2**30, color="#6a1b9a", lw=1, ls=":")
            ax2.set_ylim(bottom=0)
    for p in ("cores", "workers", "series"):
        if p in axes:
            axes[p].set_xlabel("seconds", fontsize=8, labelpad=1)
    fig.savefig(path, format="png")
    return path


def _int_ticks(ax, labels: list) -> None:
    n = len(labels)
    step = max(1, int(np.ceil(n / 16)))
    pos = list(range(0, n, step))
    ax.set_yticks(pos)
    ax.set_yticklabels([str(labels[i]) for i in pos], fontsize=7)


__all__ = ["write_png"]
