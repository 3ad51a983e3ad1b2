"""Task functions for tests/python/test_monitor_record.py, importable by
worker processes."""

from __future__ import annotations

import os
import signal
import time


def nap(x, seconds=0.05):
    time.sleep(seconds)
    return x


def fail(x):
    raise ValueError(f"task {x} fails on purpose")


def die(x):
    os._exit(3)


def die_once(x, marker):
    """SIGKILLs its worker the first time (a marker file says it happened)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def ident(x):
    return x


def big(n):
    return b"x" * n
