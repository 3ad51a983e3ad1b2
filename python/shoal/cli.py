"""The ``shoal`` command: ``shoal info`` and ``shoal demo``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

# --help prints this, not the module docstring: argparse shows reST markup as it is.
DESCRIPTION = "shoal: parallel computing for Python with a C++ engine."


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="shoal", description=DESCRIPTION,
                                     epilog="'shoal COMMAND --help' describes each command.")
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{info,demo}")

    p_info = sub.add_parser("info", help="what this job was given: CPUs, topology, threads",
                            description="What this job was really given: CPUs (each limit "
                            "considered, and the one that decides), memory, hardware topology, "
                            "the thread pools inside libraries; then warnings where a setting "
                            "wastes or oversubscribes the allocation.")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")

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
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "info":
        from . import info

        return info.main(as_json=args.json)
    if args.command == "demo":
        from . import demo

        return demo.main(n=args.n, workers=args.workers, repeats=args.repeats)
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
