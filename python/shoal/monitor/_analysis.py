"""The arrays every report shares, computed once from a :class:`Run`.

    Run ──► Schedule (tasks that ran, sorted by worker then start; wall; CPUs)
              ├──► _summary.stats()   figures, then the verdict rules
              ├──► worker_bins()      per worker x time bin busy fraction (HTML, PNG)
              ├──► core_bins()        per core x time bin busy fraction (HTML, PNG)
              └──► duration_hist()    task durations on log bins (HTML, PNG)

Everything is vectorised numpy: a 1 M-task Run costs a few passes over its
arrays (one radix sort by worker), never a Python loop over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._run import RETRIED, Run

NO_WORKER = 0xFFFFFFFF


def wall_ns(run: Run) -> int:
    """The run's wall time: meta end_ns, else the last time anything says."""
    end = run.meta.get("end_ns")
    if end is not None and end > 0:
        return int(end)
    last = 0
    t = run.tasks
    if len(t):
        last = max(last, int(t["end"].max()), int(t["start"].max()), int(t["submit"].max()))
    for arr in (run.worker_samples, run.system_samples, run.gpu_samples):
        if len(arr):
            last = max(last, int(arr["t"].max()))
    if len(run.core_t):
        last = max(last, int(run.core_t.max()))
    return last


def cpus_given(run: Run) -> tuple[int, str]:
    """The CPUs the job was given, and where that number came from."""
    meta = run.meta
    alloc = meta.get("allocation") or {}
    if meta.get("cpus_given"):
        return int(meta["cpus_given"]), str(alloc.get("cpus_source") or "the allocation")
    if meta.get("cpu_ids"):
        return len(meta["cpu_ids"]), "the job's CPU list"
    if run.core_ids:
        return len(run.core_ids), "the cores sampled"
    return max(1, n_workers(run)), "the worker count (the file names no allocation)"


def n_workers(run: Run) -> int:
    n = len(run.workers)
    if len(run.counters):
        n = max(n, int(run.counters["worker"].max()) + 1)
    t = run.tasks
    if len(t):
        w = t["worker"]
        top = int(w.max())
        if top == NO_WORKER:
            w = w[w != NO_WORKER]
            top = int(w.max()) if len(w) else -1
        n = max(n, top + 1)
    return n


@dataclass
class Schedule:
    """The task attempts that began, sorted by worker then start.

    ``end`` of an attempt that never ended (a lost worker, a cut file) is the
    wall end, so that timelines show it running to the end."""

    wall: int
    cpus: int
    cpus_source: str
    workers: int
    worker: np.ndarray     # uint32, sorted
    start: np.ndarray      # int64, sorted within a worker
    end: np.ndarray
    submit: np.ndarray
    bounds: np.ndarray     # worker w's attempts are [bounds[w], bounds[w+1])
    _rows: np.ndarray | None   # which rows of run.tasks began (None: all)
    _orders: list              # the permutations applied since

    @property
    def duration(self) -> np.ndarray:
        return self.end - self.start

    @property
    def index(self) -> np.ndarray:
        """The row of run.tasks of each attempt (computed when first asked)."""
        idx = self._rows if self._rows is not None else np.arange(len(self.worker))
        for order in self._orders:
            idx = np.take(idx, order)
        self._rows, self._orders = idx, []
        return idx


def schedule(run: Run) -> Schedule:
    wall = wall_ns(run)
    cpus, source = cpus_given(run)
    nw = n_workers(run)
    t = run.tasks
    # contiguous copies first: gathers from the strided fields of a structured
    # array, and fancy indexing instead of np.take, cost several times more
    worker = np.ascontiguousarray(t["worker"])
    start = np.ascontiguousarray(t["start"])
    end = np.ascontiguousarray(t["end"])
    submit = np.ascontiguousarray(t["submit"])
    if len(t) and (start.min() < 0 or worker.max() == NO_WORKER):
        idx = np.flatnonzero((start >= 0) & (worker != NO_WORKER))
        worker, start, end, submit = (np.take(a, idx) for a in (worker, start, end, submit))
    else:
        idx = None
    orders = []
    if len(worker) > 1 and np.any(worker[1:] < worker[:-1]):
        # One stable radix sort by worker (uint16 keys sort by radix in numpy);
        # records come in time order (per ring, or merged), which it keeps.
        order = np.argsort(worker.astype(np.uint16) if nw <= 0xFFFF else worker, kind="stable")
        worker, start, end, submit = (np.take(a, order) for a in (worker, start, end, submit))
        orders.append(order)
    if len(start) > 1 and np.any((worker[1:] == worker[:-1]) & (start[1:] < start[:-1])):
        order = np.lexsort((start, worker))
        worker, start, end, submit = (np.take(a, order) for a in (worker, start, end, submit))
        orders.append(order)
    if len(end) and np.any(end < start):
        end = np.where(end >= start, end, max(wall, int(start.max())))
    bounds = np.searchsorted(worker, np.arange(nw + 1, dtype=np.int64))
    return Schedule(wall, cpus, source, nw, worker, start, end, submit, bounds, idx, orders)


def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Nearest-rank quantiles by successive partitions (numpy's percentile
    with several q is several times slower on a million values)."""
    n = len(values)
    if n == 0:
        return [float("nan")] * len(qs)
    ks = [min(n - 1, max(0, int(round(q * (n - 1))))) for q in qs]
    out = []
    arr, base = values, 0
    for k in sorted(set(ks)):
        arr = np.partition(arr, k - base)
        out.append((k, float(arr[k - base])))
        arr, base = arr[k - base:], k
    found = dict(out)
    return [found[k] for k in ks]


def _spread(worker: np.ndarray, start: np.ndarray, end: np.ndarray, rows: int,
            t0: int, width: float, nbins: int) -> np.ndarray:
    """The busy fraction of each row in each time bin [t0 + k*width, ...):
    the first and last bin of an interval get their part, the bins between
    a whole one (a difference array, then a cumulative sum)."""
    s = (start - t0) / width
    e = (end - t0) / width
    s = np.clip(s, 0, nbins)
    e = np.clip(e, 0, nbins)
    bs = np.minimum(s.astype(np.int64), nbins - 1)
    be = np.minimum(e.astype(np.int64), nbins - 1)
    base = worker.astype(np.int64) * nbins
    size = rows * nbins
    one = bs == be
    out = np.zeros(size)
    out += np.bincount(base[one] + bs[one], weights=(e - s)[one], minlength=size)
    many = ~one
    if many.any():
        bsm, bem, sm, em, bm = bs[many], be[many], s[many], e[many], base[many]
        out += np.bincount(bm + bsm, weights=(bsm + 1) - sm, minlength=size)
        out += np.bincount(bm + bem, weights=em - bem, minlength=size)
        inner = bem - bsm > 1
        if inner.any():
            # +1 at the first whole bin, -1 at the last bin (its part is added above)
            diff = np.bincount(bm[inner] + bsm[inner] + 1, minlength=size + 1)[:size].astype(float)
            diff -= np.bincount(bm[inner] + bem[inner], minlength=size + 1)[:size]
            out += np.cumsum(diff.reshape(rows, nbins), axis=1).reshape(-1)
    return out.reshape(rows, nbins)


def worker_bins(sched: Schedule, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """(edges in ns, busy fraction per worker x bin) over [0, wall]."""
    wall = max(sched.wall, int(sched.end.max()) if len(sched.end) else 0, 1)
    nbins = max(1, nbins)
    width = wall / nbins
    frac = _spread(sched.worker, sched.start, sched.end, max(1, sched.workers), 0, width, nbins)
    return np.linspace(0, wall, nbins + 1), np.clip(frac, 0, 1)


def core_bins(run: Run, nbins: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(bin edges in ns, mean busy fraction per core x bin, core ids); each
    sample row stands for the interval up to the next sample."""
    t = run.core_t
    busy = run.core_busy
    if len(t) == 0 or busy.size == 0:
        return np.zeros(0), np.zeros((0, 0)), list(run.core_ids)
    ids = list(run.core_ids) or list(range(busy.shape[1]))
    if len(t) <= nbins:
        edges = np.append(t, t[-1] + (t[-1] - t[-2] if len(t) > 1 else 100_000_000))
        return edges, busy.T.astype(float), ids
    edges = np.linspace(t[0], t[-1], nbins + 1)
    which = np.minimum(np.searchsorted(edges, t, side="right") - 1, nbins - 1)
    counts = np.bincount(which, minlength=nbins).astype(float)
    sums = np.zeros((busy.shape[1], nbins))
    for c in range(busy.shape[1]):
        sums[c] = np.bincount(which, weights=busy[:, c], minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return edges, mean, ids


def duration_hist(run: Run, sched: Schedule | None = None,
                  per_decade: int = 10) -> tuple[np.ndarray, np.ndarray, str]:
    """(bin edges in seconds, counts, source): task durations on log bins,
    from the task records, else from the counters' log2 histogram."""
    if sched is None:
        sched = schedule(run)
    ok = run.tasks["outcome"][sched.index] != RETRIED if len(sched.index) else np.zeros(0, bool)
    d = sched.duration[ok]
    d = d[d > 0]
    if len(d):
        lo = np.floor(np.log10(d.min() / 1e9) * per_decade) / per_decade
        hi = np.ceil(np.log10(d.max() / 1e9) * per_decade + 1e-9) / per_decade
        if hi - lo < 1:                     # at least a decade, centred on the data
            pad = math.ceil((1 - (hi - lo)) * per_decade / 2) / per_decade
            lo, hi = lo - pad, hi + pad
        edges = 10.0 ** np.arange(lo, hi + 1e-9, 1 / per_decade)
        counts, _ = np.histogram(d / 1e9, bins=edges)
        return edges, counts, "task records"
    if len(run.counters):
        h = run.counters["hist"].sum(axis=0)
        nz = np.flatnonzero(h)
        if len(nz):
            k0, k1 = nz[0], nz[-1] + 1
            edges = 2.0 ** np.arange(k0, k1 + 1) / 1e9
            return edges, h[k0:k1], "always-on counters (log2 buckets)"
    return np.zeros(0), np.zeros(0, np.int64), "none"
