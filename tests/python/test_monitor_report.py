"""The monitor's reports (summary, verdict rules, HTML, PNG, trace, shoal
report, shoal scale) on synthetic Runs with known schedules (monitor_runs.py).
No timing thresholds here: benchmarks/monitor/bench_report.py measures."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import monitor_runs as runs
import shoal
from shoal.monitor import _analysis, _html, _png, _report, _summary, _trace
from shoal.monitor._run import RAISED, Run

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def million() -> Run:
    return runs.million()


def codes(run: Run) -> list[str]:
    return [f["code"] for f in _summary.stats(run)["findings"]]


# ---------------------------------------------------------------- figures

def test_efficiency_of_a_known_schedule():
    # 2 workers share 20 tasks of 50 ms on 2 CPUs over 0.5 s: 1 busy core-s of 1
    s = _summary.stats(runs.two_workers(tasks=20))
    assert s["efficiency"] == pytest.approx(1.0, abs=1e-9)
    assert s["busy_core_s"] == pytest.approx(1.0, abs=1e-9)
    assert s["busy_source"] == "always-on counters"
    # half the tasks in the same wall time: 50%
    s = _summary.stats(runs.two_workers(tasks=10))
    assert s["efficiency"] == pytest.approx(0.5, abs=1e-9)
    assert s["worker_busy_share"] == pytest.approx([0.5, 0.5])


def test_efficiency_from_task_records_without_counters():
    s = _summary.stats(runs.two_workers(tasks=10, counters=False))
    assert s["busy_source"] == "task records"
    assert s["efficiency"] == pytest.approx(0.5, abs=1e-9)
    assert s["tasks"] == 10


def test_stats_keys_and_figures():
    s = _summary.stats(runs.healthy())
    for key in ("wall_s", "cpus", "cpus_source", "efficiency", "busy_core_s", "busy_source", "concurrency",
                "measured_cpu_s", "measured_efficiency", "job_cores_busy", "worker_busy_share", "tasks",
                "attempts", "outcomes", "duration_s", "duration_source", "overhead_s", "overhead_share",
                "latency_s", "tail_workers_busy", "samples", "runnable_over_share", "library_threads",
                "memory_peak", "memory_limit", "memory_share", "gpus", "gpu_note", "dropped", "truncated",
                "findings", "verdict", "level"):
        assert key in s, key
    assert s["wall_s"] == pytest.approx(2.0)
    assert s["tasks"] == 400
    assert s["duration_s"]["p50"] == pytest.approx(0.02)
    assert s["duration_s"]["max"] == pytest.approx(0.02)
    assert s["measured_efficiency"] == pytest.approx(1.0, abs=0.01)
    assert s["overhead_share"] == 0
    json.dumps(s)   # JSON-ready


def test_overhead_counts_idle_gaps_with_work_queued():
    # 50 us tasks 20 us apart, all submitted up front: overhead 20/(20+50)
    s = _summary.stats(runs.tiny_tasks())
    assert s["overhead_share"] == pytest.approx(20 / 70, rel=1e-3)
    # the same gaps with each task submitted only when it starts: not overhead
    r = runs.tiny_tasks()
    r.tasks["submit"] = r.tasks["start"]
    assert _summary.stats(r)["overhead_share"] == 0


def test_outcomes_and_quantiles_of_a_million_tasks(million):
    s = _summary.stats(million)
    assert s["tasks"] == len(million.tasks)
    assert s["outcomes"] == {"ok": len(million.tasks)}
    d = np.sort(million.tasks["end"] - million.tasks["start"])
    assert s["duration_s"]["p50"] == pytest.approx(d[len(d) // 2] / 1e9, rel=1e-3)
    assert s["duration_s"]["max"] == pytest.approx(d[-1] / 1e9)
    assert s["efficiency"] > 0.95
    assert s["level"] == "good"
    r = runs.with_failures()
    assert _summary.stats(r)["outcomes"] == {"ok": 392, "raised": 8}


def test_summary_text_has_the_figures():
    text = _summary.summary(runs.healthy(), color=False)
    for part in ("wall time", "2 s", "CPUs given", "4 (test allocation)", "CPU efficiency", "100%",
                 "always-on counters", "measured CPU", "worker 3", "tasks", "400", "p50 20 ms",
                 "p99 20 ms", "overhead", "memory", "3.2 GiB", "of 4 GiB", "GPU", "no NVIDIA GPU",
                 "Verdict: good"):
        assert part in text, part
    assert "\033[" not in text
    assert "\033[" in _summary.summary(runs.healthy(), color=True)


def test_summary_notes_dropped_records_and_a_truncated_file():
    r = runs.healthy()
    r.dropped = 1234
    r.truncated = "the file ends inside a chunk (the job was killed)"
    text = _summary.summary(r, color=False)
    assert "1,234 task records dropped" in text
    assert "truncated: the file ends inside a chunk" in text


def test_memory_of_thread_workers_counts_the_process_once():
    run = runs.healthy(memory=None)
    assert _summary.stats(run)["memory_peak"] == 4 * (100 << 20)        # 4 processes of 100 MiB
    run.workers["pid"] = 0                                              # 4 threads of the driver
    assert _summary.stats(run)["memory_peak"] == 100 << 20


def test_summary_of_an_empty_run():
    r = Run(meta={"cpus_given": 4, "end_ns": 10**9})
    s = _summary.stats(r)
    assert s["tasks"] == 0 and s["efficiency"] == 0
    assert "No verdict" in _summary.summary(r, color=False)


# ---------------------------------------------------------------- verdict rules

def test_healthy_run_has_no_finding():
    s = _summary.stats(runs.healthy())
    assert s["findings"] == []
    assert s["verdict"].startswith("good (100% CPU efficiency on 4 CPUs)")


@pytest.mark.parametrize("factory, code", [
    ("serial", "serial"),
    ("gil", "serial"),
    ("launch_line", "serial"),
    ("imbalanced", "low_efficiency"),
    ("imbalanced", "imbalance"),
    ("long_tail", "tail"),
    ("idle_workers", "idle_workers"),
    ("oversubscribed_threads", "oversubscribed"),
    ("oversubscribed_runnable", "oversubscribed"),
    ("tiny_tasks", "tiny_tasks"),
    ("memory_near_limit", "memory_high"),
    ("memory_low_use", "memory_low"),
    ("gpu_idle", "gpu_idle"),
])
def test_each_rule_fires_on_its_run(factory, code):
    found = codes(getattr(runs, factory)())
    assert code in found, found


@pytest.mark.parametrize("code", ["serial", "low_efficiency", "imbalance", "tail", "idle_workers",
                                  "oversubscribed", "tiny_tasks", "memory_high", "memory_low", "gpu_idle",
                                  "too_little_data"])
def test_no_rule_fires_on_a_healthy_run(code):
    assert code not in codes(runs.healthy())


def test_effectively_serial_on_8_cpus():
    s = _summary.stats(runs.serial(cpus=8))
    assert s["efficiency"] == pytest.approx(1 / 8)
    assert s["level"] == "bad"
    assert "effectively serial" in s["verdict"]
    text = _summary.summary(runs.serial(cpus=8), color=False)
    assert "a pool of 1 worker" in text and "launch line" in text
    # 8 workers, one task at a time
    w, st, e = runs.back_to_back([[0.01] * 25] * 8)
    order = np.argsort(w * 0 + np.arange(len(w)) % 25 * 8 + w, kind="stable")
    d = (e - st)[order]
    ends = np.cumsum(d)
    r = runs.build(w[order], ends - d, ends, cpus=8, wall=float(ends[-1]) / runs.S)
    serial = next(f for f in _summary.stats(r)["findings"] if f["code"] == "serial")
    assert "8 workers but tasks one at a time" in serial["advice"][0]


def test_serial_names_the_callers_own_work():
    s = _summary.stats(runs.serial_driver())
    serial = next(f for f in s["findings"] if f["code"] == "serial")
    assert "tasks ran during only 10% of the wall time (4.0 workers busy then)" in serial["advice"][0]
    assert "one at a time" not in serial["advice"][0]


def test_a_replaced_worker_is_not_idle():
    s = _summary.stats(runs.replaced_worker())
    assert s["worker_busy_share"] == pytest.approx([1.0] * 5)
    assert s["workers_alive_max"] == 4
    assert s["findings"] == []


def test_sleeping_threads_are_waiting_not_the_gil():
    per = [[0.02] * 100] * 4
    w, s, e = runs.back_to_back(per)
    run = runs.build(w, s, e, cpus=4, wall=float(e.max()) / runs.S, cpu=0.01, backends=["threads"])
    found = codes(run)
    assert "serial" not in found and "waiting" in found
    assert "waiting" not in codes(runs.gil()) and "waiting" not in codes(runs.healthy())


def test_native_loops_count_as_busy_time(tmp_path):
    s = _summary.stats(runs.native_loops())
    assert s["native"]["calls"] == 200 and s["native"]["threads"] == 4
    assert s["efficiency"] == pytest.approx(1.0)
    assert "native loops" in s["busy_source"] and s["findings"] == []
    assert "200 calls on 4 threads" in _summary.summary(runs.native_loops(), color=False)
    s = _summary.stats(runs.native_loops(busy=0.5))
    assert s["efficiency"] == pytest.approx(0.5)
    assert "native_imbalance" in [f["code"] for f in s["findings"]]
    path = str(tmp_path / "n.json.gz")
    _trace.write_trace(runs.native_loops(), path)
    doc = _load_trace(path)
    loops = [ev for ev in doc["traceEvents"] if ev["ph"] == "X" and ev["pid"] == _trace.NATIVE_PID]
    assert len(loops) == 800 and loops[0]["args"]["busy_ns"] == 10_000_000


def test_gil_names_the_gil():
    s = _summary.stats(runs.gil())
    serial = next(f for f in s["findings"] if f["code"] == "serial")
    assert "GIL" in serial["text"]
    # graded by what the CPUs did, not by the overlapping task time
    assert s["verdict"].startswith("poor (25% measured CPU on 4 CPUs): effectively serial")


def test_a_launch_line_that_left_one_cpu():
    s = _summary.stats(runs.launch_line())
    serial = next(f for f in s["findings"] if f["code"] == "serial")
    assert "1 CPU (CPU affinity) of the 8 SLURM gave this node" in serial["text"]
    assert "--cpus-per-task" in serial["advice"][0]
    assert "serial" not in codes(runs.healthy())


def test_no_verdict_for_5_tasks():
    s = _summary.stats(runs.few_tasks(5))
    assert [f["code"] for f in s["findings"]] == ["too_little_data"]
    assert s["verdict"].startswith("No verdict: 5 tasks")
    assert "needs 100 tasks or 10 samples" in s["verdict"]


def test_efficiency_grades():
    assert _summary._grade(0.95) == ("good", "good")
    assert _summary._grade(0.85) == ("fine", "good")
    assert _summary._grade(0.70) == ("fair", "note")
    assert _summary._grade(0.50) == ("poor", "bad")
    # 2 workers on 4 CPUs, a fair 75%: the note, no red
    per = [[0.02] * 150] * 3
    w, s, e = runs.back_to_back(per)
    r = runs.build(w, s, e, cpus=4, wall=float(e.max()) / runs.S)
    st = _summary.stats(r)
    assert st["efficiency"] == pytest.approx(0.75)
    assert "fair_efficiency" in codes(r) and st["verdict"].startswith("fair (75%")


def test_oversubscription_names_the_variables():
    s = _summary.stats(runs.oversubscribed_threads())
    f = next(f for f in s["findings"] if f["code"] == "oversubscribed")
    assert "OPENBLAS_NUM_THREADS=1" in f["advice"][0] and "OMP_NUM_THREADS=1" in f["advice"][0]
    f = next(f for f in _summary.stats(runs.oversubscribed_runnable())["findings"] if f["code"] == "oversubscribed")
    assert "OMP_NUM_THREADS" in f["advice"][0]


def test_batching_advice_gives_a_chunksize():
    s = _summary.stats(runs.tiny_tasks())
    f = next(f for f in s["findings"] if f["code"] == "tiny_tasks")
    # median 50 us: chunks of 200 take 10 ms
    assert "chunksize=200" in f["advice"][0]


def test_runnable_threads_on_part_of_a_node_are_compared_with_the_node():
    r = runs.oversubscribed_runnable()           # 4 CPUs, 13 runnable
    r.meta["allocation"]["host_cpus"] = 64       # ... of a 64-CPU node: not ours
    assert "oversubscribed" not in codes(r)


# ---------------------------------------------------------------- bins

def test_worker_bins_spread_a_task_over_its_bins():
    # one task from 0.25 s to 0.75 s of a 1 s run, 4 bins: 0, 1, 1, 0
    r = runs.build([0], [250_000_000], [750_000_000], cpus=1, wall=1.0, samples=False)
    edges, frac = _analysis.worker_bins(_analysis.schedule(r), 4)
    assert frac[0] == pytest.approx([0, 1, 1, 0])
    edges, frac = _analysis.worker_bins(_analysis.schedule(r), 8)
    assert frac[0] == pytest.approx([0, 0, 1, 1, 1, 1, 0, 0])
    edges, frac = _analysis.worker_bins(_analysis.schedule(r), 3)
    assert frac[0] == pytest.approx([0.25, 1, 0.25])


def test_worker_bins_keep_the_busy_time(million):
    sched = _analysis.schedule(million)
    edges, frac = _analysis.worker_bins(sched, 500)
    width = edges[1] - edges[0]
    assert frac.sum() * width == pytest.approx(float(sched.duration.sum()), rel=1e-6)


# ---------------------------------------------------------------- HTML

NETWORK = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|@import""", re.I)


def test_html_is_self_contained_and_small(tmp_path, million):
    path = str(tmp_path / "m.html")
    _html.write_html(million, path)
    size = os.path.getsize(path)
    assert size < 2 * 1024 * 1024
    page = open(path, encoding="utf-8").read()
    assert not NETWORK.search(page)
    assert "http://" not in page and "https://" not in page
    assert "1,000,000" in page or f"{len(million.tasks):,}" in page
    assert "more than 100,000" in page             # binned, and it says so
    data = json.loads(re.search(r'<script type="application/json" id="shoal-data">(.*?)</script>',
                                page, re.S).group(1))
    assert data["timeline"]["mode"] == "binned"
    assert len(data["timeline"]["values"]) == data["timeline"]["bins"] * data["timeline"]["rows"]


def test_html_stays_small_with_many_workers_and_cores():
    # 512 workers x 600 random tasks, 256 cores sampled 6000 times (10 min at 10 Hz)
    rng = np.random.default_rng(1)
    d = rng.lognormal(np.log(1e6), 0.5, (512, 600)).astype(np.int64) + 1
    ends = np.cumsum(d, axis=1)
    run = runs.build(np.repeat(np.arange(512), 600), (ends - d).reshape(-1), ends.reshape(-1), cpus=512,
                     samples=False)
    run.core_t = np.arange(6000, dtype=np.int64) * 100_000_000
    run.core_busy = rng.random((6000, 256)).astype(np.float32)
    run.core_ids = list(range(256))
    page = _html.render(run)
    assert len(page.encode()) < 2 * 1024 * 1024
    assert '"mode":"binned"' in page


def test_html_draws_each_task_below_the_threshold(tmp_path):
    run = runs.tiny_tasks()                        # 20 000 tasks
    page = _html.render(run)
    data = json.loads(re.search(r'id="shoal-data">(.*?)</script>', page, re.S).group(1))
    t = data["timeline"]
    assert t["mode"] == "raw"
    assert sum(len(row[1]) for row in t["rows"]) == 20_000
    assert "Verdict:" in page and "tasks too small" in page


def test_html_marks_failed_tasks():
    run = runs.with_failures()
    page = _html.render(run)
    data = json.loads(re.search(r'id="shoal-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["timeline"]["failed"]) == int((run.tasks["outcome"] == RAISED).sum())


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (scripts/ensure-system-deps.sh installs it)")
@pytest.mark.parametrize("factory", ["healthy", "million"])
def test_html_renders_in_headless_chromium(tmp_path, factory, million):
    import matplotlib.image

    run = million if factory == "million" else runs.healthy()
    page = str(tmp_path / "r.html")
    _html.write_html(run, page)
    shot = str(tmp_path / "shot.png")
    base = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1800"]
    url = "file://" + page
    p = subprocess.run(base + ["--enable-logging=stderr", "--v=0", f"--screenshot={shot}", url],
                       capture_output=True, text=True, timeout=120)
    assert os.path.exists(shot), p.stderr[-2000:]
    console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[0] > 500 and img.shape[1] > 500
    assert len(np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 20   # not one colour
    # the canvases were drawn: pixels of the timeline's / heatmap's blues
    blue = (img[..., 2] > 0.6) & (img[..., 0] < 0.3)
    assert blue.sum() > 10_000
    dom = subprocess.run(base + ["--dump-dom", url + "#selftest"], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-status="ok"' in dom, re.findall(r'<pre id="errors">(.*?)</pre>', dom, re.S)
    assert "<title>shoal report: ok</title>" in dom
    assert re.search(r'<pre id="errors"></pre>', dom)
    # the tooltips answer on both charts (the page hovers them itself under #selftest)
    said = re.search(r'data-selftest="([^"]*)"', dom).group(1)
    assert re.search(r"cores: core 0 · [\d.]+ \S+ · busy \d+%", said), said
    worker = r"workers: worker 0 · [\d.]+ \S+ · " + (r"busy \d+%" if factory == "million" else r"task \d+ of this worker")
    assert re.search(worker, said), said


# ---------------------------------------------------------------- PNG

def test_png_written_and_readable(tmp_path):
    import matplotlib.image

    for factory in (runs.healthy, runs.gpu_idle, runs.few_tasks):
        path = str(tmp_path / f"{factory.__name__}.png")
        _png.write_png(factory(), path)
        img = matplotlib.image.imread(path)
        assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 800
        assert img[..., :3].std() > 0.01


def test_png_of_a_run_without_samples(tmp_path):
    import matplotlib.image

    path = str(tmp_path / "bare.png")
    _png.write_png(runs.two_workers(samples=False), path)
    assert matplotlib.image.imread(path).shape[0] > 100


# ---------------------------------------------------------------- trace

PHASE_KEYS = {"X": {"name", "ph", "ts", "dur", "pid", "tid"}, "C": {"name", "ph", "ts", "pid", "args"},
              "M": {"name", "ph", "pid", "args"}}


def _load_trace(path: str) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def _check_trace(doc: dict, run: Run) -> list[dict]:
    events = doc["traceEvents"]
    for ev in events:
        assert ev["ph"] in PHASE_KEYS, ev
        missing = PHASE_KEYS[ev["ph"]] - set(ev)
        assert not missing, (ev, missing)
        if ev["ph"] in "XC":
            assert isinstance(ev["ts"], (int, float)) and ev["ts"] >= 0
        if ev["ph"] == "X":
            assert isinstance(ev["dur"], (int, float)) and ev["dur"] >= 0
            assert {"task", "fn", "outcome", "bytes_in", "bytes_out"} <= set(ev["args"])
    names = {(ev["pid"], ev.get("tid")): ev["args"]["name"] for ev in events
             if ev["ph"] == "M" and ev["name"] in ("process_name", "thread_name")}
    assert "shoal: system" in names.values() and "shoal: cores" in names.values()
    slices = [ev for ev in events if ev["ph"] == "X"]
    tracks: dict = {}
    for ev in slices:
        assert (ev["pid"], ev["tid"]) in names, ev          # every track is named
        # µs on a 100 ns grid: compare in exact integer ticks
        tracks.setdefault((ev["pid"], ev["tid"]), []).append((round(ev["ts"] * 10), round(ev["dur"] * 10)))
    for key, sl in tracks.items():
        sl.sort()
        for (s0, d0), (s1, d1) in zip(sl, sl[1:]):
            # nested or disjoint; on a worker, tasks never nest: disjoint
            assert s1 >= s0 + d0, (key, (s0, d0), (s1, d1))
    assert len(slices) == int((run.tasks["start"] >= 0).sum())
    return slices


def test_trace_schema_and_nesting(tmp_path):
    run = runs.healthy()
    path = str(tmp_path / "t.json.gz")
    _trace.write_trace(run, path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"     # gzip
    doc = _load_trace(path)
    slices = _check_trace(doc, run)
    assert doc["displayTimeUnit"] == "ms"
    first = min(slices, key=lambda e: (e["tid"], e["ts"]))
    assert first["ts"] == 0 and first["dur"] == pytest.approx(20_000)      # µs
    assert first["args"]["outcome"] == "ok" and first["args"]["fn"] == "work"
    threads = [ev["args"]["name"] for ev in doc["traceEvents"] if ev["ph"] == "M" and ev["name"] == "thread_name"]
    assert threads == [f"worker {w} (pid {1000 + w})" for w in range(4)]
    counters = {ev["name"] for ev in doc["traceEvents"] if ev["ph"] == "C"}
    assert {"cores busy", "workers' CPU", "memory (cgroup)", "core 0", "core 3"} <= counters


def test_trace_clamps_overlapping_records(tmp_path):
    run = runs.overlapping_records()
    path = str(tmp_path / "o.json.gz")
    _trace.write_trace(run, path)
    slices = _check_trace(_load_trace(path), run)
    clamped = [ev for ev in slices if "clamped_ns" in ev["args"]]
    assert clamped and all(ev["args"]["clamped_ns"] == 30_000 for ev in clamped)
    assert all(ev["tid"] == 1 for ev in clamped)


def test_trace_of_failures_and_ranks(tmp_path):
    run = runs.with_failures()
    run.workers["rank"] = [0, 0, 1, 1]
    s = _summary.stats(run)
    assert [(r["rank"], r["workers"]) for r in s["ranks"]] == [(0, 2), (1, 2)]
    assert s["ranks"][1]["busy_core_s"] == pytest.approx(4.0)
    assert "rank 1: 2 workers, 4 busy core-s" in _summary.summary(run, color=False)
    assert _summary.stats(runs.healthy())["ranks"] == []
    path = str(tmp_path / "f.json.gz")
    _trace.write_trace(run, path)
    doc = _load_trace(path)
    slices = _check_trace(doc, run)
    assert sum(ev["args"]["outcome"] == "raised" for ev in slices) == 8
    procs = {ev["args"]["name"] for ev in doc["traceEvents"] if ev["ph"] == "M" and ev["name"] == "process_name"}
    assert {"shoal: workers, rank 0", "shoal: workers, rank 1"} <= procs


@pytest.mark.parametrize("factory", ["healthy", "few_tasks", "native_loops", "gpu_idle", "overlapping_records",
                                     "replaced_worker", "empty"])
def test_every_report_of_odd_runs(tmp_path, factory):
    run = Run(meta={}) if factory == "empty" else getattr(runs, factory)()
    s = _report.write_reports(run, html=str(tmp_path / "r.html"), png=str(tmp_path / "r.png"),
                              trace=str(tmp_path / "r.json.gz"))
    assert s["verdict"]
    assert _summary.summary(run, color=False)
    assert json.load(gzip.open(tmp_path / "r.json.gz"))["traceEvents"]


# ---------------------------------------------------------------- shoal report

def test_write_reports_writes_every_file(tmp_path):
    paths = {k: str(tmp_path / f"r.{k}") for k in ("html", "png", "trace")}
    s = _report.write_reports(runs.healthy(), **paths)
    assert s["level"] == "good"
    assert all(os.path.getsize(p) > 1000 for p in paths.values())


@pytest.mark.skipif(not hasattr(shoal.monitor, "load"),
                    reason="needs the recording side's reader (shoal.monitor.load): completed at integration")
def test_report_on_a_garbage_file_exits_2(tmp_path):
    bad = tmp_path / "garbage.shoal"
    bad.write_bytes(b"this is not a monitor file\x00\x01" * 100)
    p = subprocess.run([sys.executable, "-m", "shoal", "report", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "not a readable shoal monitor file" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_report_with_a_stand_in_reader(tmp_path, monkeypatch, capsys):
    """The command's plumbing, with shoal.monitor.load replaced: a Run gives
    the summary and every file; the reader's error gives one line and 2."""
    import shoal.monitor as mon

    class StandInError(ValueError):
        pass

    def load(path):
        if "garbage" in str(path):
            raise StandInError("no shoal monitor magic at offset 0")
        return runs.imbalanced()

    monkeypatch.setattr(mon, "load", load, raising=False)
    monkeypatch.setattr(mon, "MonitorFileError", StandInError, raising=False)
    from shoal import cli

    html, png, trace = (str(tmp_path / n) for n in ("r.html", "r.png", "r.json.gz"))
    assert cli.main(["report", "run.shoal", "--html", html, "--png", png, "--trace", trace,
                     "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "Verdict: poor (44% CPU efficiency on 4 CPUs): imbalance" in out
    assert f"wrote {html}, {png}, {trace}" in out
    assert all(os.path.getsize(p) > 1000 for p in (html, png, trace))
    assert cli.main(["report", "run.shoal", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["level"] == "bad" and [f["code"] for f in doc["findings"]] == ["low_efficiency", "imbalance"]
    assert cli.main(["report", "garbage.shoal"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("shoal report: garbage.shoal is not a readable shoal monitor file: "
                           "no shoal monitor magic at offset 0")


def test_report_on_a_missing_file_exits_2():
    p = subprocess.run([sys.executable, "-m", "shoal", "report", "/nonexistent/run.shoal"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- shoal scale, SHOAL_WORKERS

SLEEP_SCRIPT = textwrap.dedent("""
    import sys, time
    import shoal

    def nap(x):
        time.sleep(0.05)
        return x

    if __name__ == "__main__":
        n = int(sys.argv[1])
        with shoal.Pool(shoal.default_workers()) as pool:
            assert pool.map(nap, range(n)) == list(range(n))
""")


def test_scale_on_a_real_script(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SLEEP_SCRIPT)
    png = tmp_path / "scale.png"
    p = subprocess.run([sys.executable, "-m", "shoal", "scale", "--workers", "1,2", "--repeats", "1",
                        "--png", str(png), str(script), "8"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert re.search(r"^\s+1\s+\S+ m?s\s+1\.00x\s+100%", out, re.M), out
    assert re.search(r"^\s+2\s+\S+ m?s\s+\d\.\d\dx\s+\d+%", out, re.M), out
    assert "fastest:" in out and "efficiency" in out and "Amdahl fit: serial fraction s = " in out
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[0] > 100


def test_scale_stops_at_a_failing_run(tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("import sys\nprint('the reason it failed', file=sys.stderr)\nsys.exit(3)\n")
    p = subprocess.run([sys.executable, "-m", "shoal", "scale", "--workers", "1,2", "--repeats", "2",
                        str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "failed at 1 workers" in p.stderr and "exit code 3" in p.stderr
    assert "the reason it failed" in p.stderr


def test_scale_stays_inside_a_slurm_allocation(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import shoal\nprint(shoal.default_workers())\n")
    env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_CPUS_PER_TASK="1")
    p = subprocess.run([sys.executable, "-m", "shoal", "scale", "--workers", "1,2", "--repeats", "1",
                        str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "inside SLURM job 4242: 1 CPUs given" in p.stdout
    assert "skipping 2 workers" in p.stdout
    assert "Amdahl fit: needs at least 2 worker counts" in p.stdout


def test_scale_marks_oversubscribed_counts():
    r = _report.ScaleResult(counts=[1, 2, 4], times={1: [4.0], 2: [2.1], 4: [1.5]}, cpus=2, cpus_source="test")
    text = _report.scale_table(r)
    assert re.search(r"^\s+4 .*oversubscribed$", text, re.M)
    assert not re.search(r"^\s+2 .*oversubscribed$", text, re.M)


def test_amdahl_fit_recovers_the_serial_fraction():
    t1, s = 10.0, 0.1
    times = {n: [t1 * (s + (1 - s) / n)] for n in (1, 2, 4, 8, 16)}
    r = _report.ScaleResult(counts=sorted(times), times=times, cpus=16)
    fit_s, fit_t1 = r.amdahl()
    assert fit_s == pytest.approx(0.1) and fit_t1 == pytest.approx(10.0)
    assert r.speedups()[8] == pytest.approx(1 / (0.1 + 0.9 / 8))
    text = _report.scale_table(r)
    assert "serial fraction s = 0.100" in text and "1/s = 10x" in text
    assert "most workers at >= 75% efficiency: 4" in text    # 4: 77%, 8: 59%
    assert "fastest: 16 workers" in text


def test_shoal_workers_sets_default_workers(monkeypatch):
    monkeypatch.setenv("SHOAL_WORKERS", "3")
    assert shoal.default_workers() == 3
    monkeypatch.setenv("SHOAL_WORKERS", "zero")
    with pytest.raises(ValueError, match="SHOAL_WORKERS='zero'"):
        shoal.default_workers()
    monkeypatch.setenv("SHOAL_WORKERS", "0")
    with pytest.raises(ValueError, match="positive integer"):
        shoal.default_workers()
    monkeypatch.delenv("SHOAL_WORKERS")
    assert shoal.default_workers() == max(1, shoal.allocation().cpus)


@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_shoal_workers_sets_the_pool_default(backend):
    code = (f"import shoal\nwith shoal.Pool(backend={backend!r}) as p:\n"
            "    print(p.workers, p.map(abs, [-1, -2]))\n")
    env = dict(os.environ, SHOAL_WORKERS="3")
    p = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "3"


def test_libraries_shoal_caps_in_its_workers_do_not_count_as_oversubscription():
    # The driver's OpenBLAS runs 4 threads, but shoal gives each worker
    # CPUs // workers unless the user set the variable (meta "thread_env").
    r = runs.oversubscribed_threads()
    r.meta["thread_env"] = {}
    assert "oversubscribed" not in codes(r)
    r.meta["thread_env"] = {"OMP_NUM_THREADS": "4"}    # read by OpenBLAS too
    assert "oversubscribed" in codes(r)


def test_bursts_of_parallel_tasks_between_serial_stretches_are_not_one_at_a_time():
    # 4 workers busy together for 0.5 s at 2 s and again at 8 s of a 10 s run:
    # the span from the first task to the last is 6.5 s, but tasks ran for
    # 1 s of it, 4 at a time. The cause is the caller's serial work, not
    # tasks submitted one by one.
    w1, s1, e1 = runs.back_to_back([[0.005] * 100] * 4, t0=2.0)
    w2, s2, e2 = runs.back_to_back([[0.005] * 100] * 4, t0=8.0)
    r = runs.build(np.concatenate([w1, w2]), np.concatenate([s1, s2]), np.concatenate([e1, e2]),
                   cpus=4, wall=10.0)
    s = _summary.stats(r)
    serial = next(f for f in s["findings"] if f["code"] == "serial")
    assert s["task_union_s"] == pytest.approx(1.0, rel=0.01)
    assert "tasks ran during only 10% of the wall time (4.0 workers busy then)" in serial["advice"][0]
    assert "one at a time" not in " ".join(serial["advice"])
