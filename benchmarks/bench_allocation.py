"""How many CPUs does each tool think this job has? shoal.default_workers() beside
its peers, under real and simulated allocations, in one run; plus the cost of one call.

    .venv/bin/python benchmarks/bench_allocation.py [--repeats 200]

Each scenario runs in a fresh interpreter (taskset narrows its affinity, SLURM
variables are set in its environment). Times are medians over --repeats calls.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

PROBE = r"""
import json, os, sys, time, statistics, multiprocessing
import shoal
peers = {
    "shoal.default_workers()": shoal.default_workers,
    "os.cpu_count()": os.cpu_count,
    "len(os.sched_getaffinity(0))": lambda: len(os.sched_getaffinity(0)),
    "multiprocessing.cpu_count()": multiprocessing.cpu_count,
}
try:
    import joblib
    peers["joblib.cpu_count()"] = joblib.cpu_count
except ImportError:
    pass
try:
    import psutil
    peers["psutil.cpu_count()"] = psutil.cpu_count
except ImportError:
    pass
if hasattr(os, "process_cpu_count"):
    peers["os.process_cpu_count()"] = os.process_cpu_count
repeats = int(sys.argv[1])
out = {}
for name, fn in peers.items():
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    out[name] = {"value": fn(), "us": statistics.median(times) * 1e6}
print(json.dumps(out))
"""


def scenario(prefix, extra_env, repeats):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMP_", "OMPI_", "PMI_"))}
    env.update(extra_env)
    out = subprocess.run([*prefix, sys.executable, "-c", PROBE, str(repeats)], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    scenarios = [("this machine", (), {}),
                 ("SLURM_CPUS_PER_TASK=1", (), {"SLURM_JOB_ID": "1", "SLURM_CPUS_PER_TASK": "1"})]
    if shutil.which("taskset"):
        scenarios.insert(1, ("taskset -c 0", ("taskset", "-c", "0"), {}))
    results = [(label, scenario(prefix, env, args.repeats)) for label, prefix, env in scenarios]
    peers = list(results[0][1])
    print(f"CPU count each tool reports (median time per call, {args.repeats} calls)\n")
    print(f"{'tool':<30}" + "".join(f"{label:>24}" for label, _ in results))
    for peer in peers:
        cells = []
        for _, r in results:
            v = r.get(peer)
            cells.append(f"{v['value']:>6} ({v['us']:8.2f} us)" if v else f"{'-':>22}")
        print(f"{peer:<30}" + "".join(f"{c:>24}" for c in cells))
    base = {label: r["shoal.default_workers()"]["value"] for label, r in results}
    print("\nOversubscription if a pool is sized with each tool (value / shoal's):")
    for peer in peers[1:]:
        print(f"  {peer:<30}" + "".join(
            f"{r[peer]['value'] / base[label]:>23.1f}x" for label, r in results if peer in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
