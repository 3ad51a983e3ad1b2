"""The ``shoal`` command: ``shoal info``, ``shoal demo`` and ``shoal run``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

# --help prints this, not the module docstring: argparse shows reST markup as it is.
DESCRIPTION = "shoal: parallel computing for Python with a C++ engine."


# ---------------------------------------------------------------- shoal report, shoal scale

def _add_report_parsers(sub: argparse._SubParsersAction) -> None:
    # the usage line lists every command, whichever were added before or after these
    sub.metavar = None
    p_report = sub.add_parser("report", help="summary and verdict of a monitor file; HTML, PNG, trace",
                              description="The summary of a monitor file (shoal.monitor(...) or "
                              "'shoal run --monitor'): CPU efficiency, workers, tasks, memory, GPU, "
                              "one verdict and what to change; optionally a self-contained HTML page, "
                              "a PNG and a Perfetto/chrome://tracing trace.")
    p_report.add_argument("file", help="the monitor file (run.shoal)")
    p_report.add_argument("--html", metavar="PATH", help="write a self-contained HTML report")
    p_report.add_argument("--png", metavar="PATH", help="write the figures as a PNG")
    p_report.add_argument("--trace", metavar="PATH",
                          help="write a gzipped Trace Event JSON (run.json.gz) for ui.perfetto.dev")
    p_report.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                          help="colour the summary (default: on a terminal)")
    p_report.add_argument("--json", action="store_true",
                          help="print the figures and findings as JSON instead of the summary")

    p_scale = sub.add_parser("scale", help="time a script at several worker counts: speedup, Amdahl fit",
                             description="Runs 'python SCRIPT ARGS' in a fresh process at each worker "
                             "count, with SHOAL_WORKERS set (shoal.default_workers() and Pool() "
                             "return it), and prints the median time, speedup and efficiency of "
                             "each count, the fastest and the most efficient one, and an Amdahl fit. "
                             "In a SLURM job, counts above the CPUs given are skipped unless "
                             "--oversubscribe.")
    p_scale.add_argument("--workers", metavar="LIST",
                         help="comma-separated worker counts (default: 1, 2, 4, ... up to the CPUs given)")
    p_scale.add_argument("--repeats", type=int, default=3, help="runs per count; the median counts (default: 3)")
    p_scale.add_argument("--png", metavar="PATH", help="write speedup vs workers, with the ideal line")
    p_scale.add_argument("--oversubscribe", action="store_true",
                         help="in a SLURM job, also run the counts above the CPUs given")
    p_scale.add_argument("script", help="the Python script; it sizes its pool with shoal.default_workers()")
    p_scale.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")


def _run_report(args: argparse.Namespace) -> int:
    from .monitor import _report

    if args.command == "report":
        color = {"auto": None, "always": True, "never": False}[args.color]
        return _report.report_main(args.file, html=args.html, png=args.png, trace=args.trace, color=color,
                                   as_json=args.json)
    return _report.scale_main(args.script, args.args, workers=args.workers, repeats=args.repeats,
                              png=args.png, oversubscribe=args.oversubscribe)


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="shoal", description=DESCRIPTION,
                                     epilog="'shoal COMMAND --help' describes each command.")
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,demo,run}")

    p_info = sub.add_parser("info", help="what this job was given: CPUs, topology, threads",
                            description="What this job was really given: CPUs (each limit "
                            "considered, and the one that decides), memory, hardware topology, "
                            "the thread pools inside libraries; then warnings where a setting "
                            "wastes or oversubscribes the allocation.")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")
    _add_report_parsers(sub)

    p_demo = sub.add_parser("demo", help="shoal's main job: the 2D integration on every backend",
                            description="The 2D integration of sin(x+y) over [0, pi]^2, serial "
                            "and on each of shoal's backends side by side: each row's integral, "
                            "error, median time and speed-up over serial Python.")
    p_demo.add_argument("--n", type=int, default=None,
                        help="grid size (default: chosen so serial Python takes about 1 s)")
    p_demo.add_argument("--workers", type=int, default=None,
                        help="workers per pool (default: shoal.default_workers())")
    p_demo.add_argument("--repeats", type=int, default=3,
                        help="rounds; each row's time is its median (default: 3)")
    _add_run(sub)
    return parser


# ---- shoal run --monitor FILE script.py args...
def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run a Python script with the job monitor on",
                       description="Runs script.py as 'python script.py args...' would (as "
                       "__main__, with sys.argv set, in this process) with shoal's monitor "
                       "recording to FILE, then prints the monitor's summary to stderr. The "
                       "script's exit status is this command's.")
    p.add_argument("--monitor", metavar="FILE", required=True, help="the monitor file to write")
    p.add_argument("--hz", type=float, default=10.0, help="sample rate (default: 10)")
    p.add_argument("script", help="the Python script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")


def _cmd_run(args: argparse.Namespace) -> int:
    import runpy
    import traceback

    from . import monitor

    sys.argv = [args.script, *args.args]  # first: the monitor's meta records the script's
    mon = monitor.monitor(args.monitor, hz=args.hz).start()
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    code = 0
    try:
        runpy.run_path(args.script, run_name="__main__")
    except SystemExit as exc:  # the script's sys.exit(): its status is ours
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - reported as python would, then the summary
        traceback.print_exc()
        code = 1
    finally:
        mon.stop()
    sys.stdout.flush()
    if mon.session is not None:
        try:
            print(mon.summary(color=sys.stderr.isatty()), file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - the file is written either way
            print(f"shoal run: monitor file {args.monitor} written; no summary "
                  f"({type(exc).__name__}: {exc})", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    if args.command in ("report", "scale"):
        return _run_report(args)
    if args.command == "info":
        from . import info

        return info.main(as_json=args.json)
    if args.command == "demo":
        from . import demo

        return demo.main(n=args.n, workers=args.workers, repeats=args.repeats)
    if args.command == "run":
        return _cmd_run(args)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`shoal info | head -1`). End as cat or grep
        # would: quietly, with the shell's status for SIGPIPE. Python ignores
        # SIGPIPE, so the write raised instead; what is still buffered goes
        # to /dev/null, or the flush at exit would raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
