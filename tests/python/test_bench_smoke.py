"""benchmarks/pool/bench_pool.py runs (--quick, the fastest goal) and writes
its JSON. No timing is checked: only that every row ran or says why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.timeout(300)
def test_bench_pool_quick_smoke(tmp_path):
    out = tmp_path / "pool.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "pool", "bench_pool.py"),
                        "--quick", "--only", "4", "--repeats", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Goal 4" in r.stdout and "Summary" in r.stdout
    data = json.loads(out.read_text())
    assert [g["goal"] for g in data["goals"]] == ["4"]
    rows = {row["label"]: row for row in data["goals"][0]["rows"]}
    # the peers always run; shoal's row runs once the pool is built
    assert rows["ProcessPoolExecutor"]["seconds"] > 0
    try:
        import shoal.pool  # noqa: F401
    except ImportError:
        pytest.skip("shoal.Pool is not built: its row is reported unavailable")
    assert rows["shoal.Executor"]["seconds"] > 0, rows["shoal.Executor"]
    assert data["goals"][0]["status"] in ("PASS", "FAIL")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script, args", [
    ("integration.py", ["--n", "100", "--threads", "1,2", "--repeats", "1"]),
    ("forkjoin.py", ["--calls", "20", "--repeats", "1"]),
])
def test_bench_native_smoke(script, args):
    """The native benchmarks build their C/C++ peers and run every method
    (tiny sizes); no timing is checked."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "native", script), *args],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shoal" in r.stdout


@pytest.mark.timeout(300)
def test_bench_monitor_quick_smoke(tmp_path):
    """benchmarks/monitor/bench_monitor.py --quick runs every row; the
    numbers are not checked (a smoke run on a shared machine is noise)."""
    out = tmp_path / "monitor.txt"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "monitor", "bench_monitor.py"),
                        "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_text()
    for row in ("record call", "worker per-task calls", "chunksize=1 on/off", "file size",
                "submits on/off", "sampler CPU idle"):
        assert row in text, text
