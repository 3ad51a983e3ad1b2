"""The ``shoal`` command: ``shoal info`` and ``shoal demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shoal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="what this job was given: CPUs, topology, threads")
    p_info.add_argument("--json", action="store_true", help="machine-readable output")

    p_demo = sub.add_parser("demo", help="shoal's main job: the 2D integration on every backend")
    p_demo.add_argument("--n", type=int, default=None,
                        help="grid size (default: chosen so serial Python takes about 1 s)")
    p_demo.add_argument("--workers", type=int, default=None)
    p_demo.add_argument("--repeats", type=int, default=3,
                        help="rounds; each row's time is its median (default: 3)")

    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        return info.main(as_json=args.json)
    if args.command == "demo":
        from . import demo

        return demo.main(n=args.n, workers=args.workers, repeats=args.repeats)
    return 2


if __name__ == "__main__":
    sys.exit(main())
