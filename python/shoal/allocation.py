"""PLACEHOLDER until the allocation module lands: affinity only."""
import os


def default_workers() -> int:
    return len(os.sched_getaffinity(0))
