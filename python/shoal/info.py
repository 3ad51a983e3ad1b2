"""PLACEHOLDER until the info module lands."""
import json


def main(as_json: bool = False, summary: bool = False) -> int:
    from .allocation import default_workers
    from . import _core
    d = {"cpus": default_workers(), "core_version": _core.version}
    print(json.dumps(d) if as_json else f"shoal {_core.version}: {d['cpus']} CPU(s)")
    return 0
