"""Runs every shoal benchmark, one after another, and keeps their tables.

    python benchmarks/run_all.py            # full sizes (several minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes, a smoke run

Each benchmark compares shoal with its peers side by side in one run and
prints ratios; this script only sequences them (never two at once: they
would disturb each other's timings) and writes the combined output to
benchmarks/results/latest.txt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (script, full-size args, quick args)
BENCHMARKS = [
    ("bench_allocation.py", [], ["--repeats", "20"]),
    ("native/integration.py", ["--n", "5000"], ["--n", "1000", "--repeats", "3"]),
    ("native/forkjoin.py", [], ["--calls", "500", "--repeats", "3"]),
    ("pool/bench_pool.py", [], ["--quick"]),
    # under a launcher: rank 0 submits, the others serve (mpi4py.futures and shoal)
    ("mpi/bench_mpi.py", [], ["--quick"]),
    # the job monitor: its cost on the task path, and its reports' times and sizes
    ("monitor/bench_monitor.py", [], ["--quick"]),
    ("monitor/bench_report.py", [], ["--tasks", "20000", "--repeats", "1"]),
]
MPIRUN = ["mpirun", "--oversubscribe", "-n", "3"]
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out_path = os.path.join(HERE, "results", "latest.txt")
    failed = []
    with open(out_path, "w") as out:
        for script, full, quick in BENCHMARKS:
            path = os.path.join(HERE, script)
            if not os.path.exists(path):
                continue
            cmd = [sys.executable, path, *(quick if args.quick else full)]
            launcher = MPIRUN if script.startswith("mpi/") else []
            header = (f"\n=== {' '.join([*launcher, 'python', 'benchmarks/' + script, *cmd[2:]])}"
                      f"  ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            print(header, flush=True)
            out.write(header)
            proc = subprocess.run([*launcher, *cmd], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **MPI_ENV} if launcher else None)
            print(proc.stdout, flush=True)
            out.write(proc.stdout)
            if proc.returncode != 0:
                failed.append(script)
    print(f"\nall output in {os.path.relpath(out_path)}")
    if failed:
        print("benchmarks that failed to run: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
