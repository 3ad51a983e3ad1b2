"""Task functions for the pool tests (importable by worker processes) and a
way to check that a driver left nothing behind."""

from __future__ import annotations

import ctypes
import glob
import os
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def pid_and_parent(_=None):
    return os.getpid(), os.getppid()


def pid_of_worker(_=None):
    return os.getpid()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def announce_and_sleep(path, seconds):
    """Writes this worker's pid to `path`, then sleeps: lets a test kill it mid-task."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(seconds)
    return "slept"


def exit_hard(code):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def crash_once(marker):
    """Dies the first time (no marker file yet), succeeds the second."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(7)
    return "second try"


def raise_value_error(msg):
    raise ValueError(msg)


def fail_on(x, bad):
    if x == bad:
        raise KeyError(x)
    return x


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object refuses to be pickled")


def return_unpicklable(_=None):
    return Unpicklable()


_STATE = {}


def set_state(key, value):
    _STATE[key] = value


def get_state(key):
    return _STATE.get(key)


def initializer_fails():
    raise RuntimeError("initializer exploded")


def wait_for_pid(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        time.sleep(0.01)
    raise TimeoutError(f"no pid in {path} after {timeout}s")


def shm_segments_of(pids):
    out = []
    for pid in pids:
        out += glob.glob(f"/dev/shm/shoal.{pid}.*")
    return out


def wait_gone(pids, timeout=10.0):
    """Pids still alive (not zombies) after waiting up to timeout."""
    import psutil

    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        still = []
        for pid in alive:
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE:
                    still.append(pid)
            except psutil.NoSuchProcess:
                pass
        alive = still
        if alive:
            time.sleep(0.05)
    return alive


def getenv(name):
    return os.environ.get(name)


def pid_after(seconds_by_item, x):
    """Sleeps seconds_by_item.get(x, default) and returns (x, this worker's pid)."""
    time.sleep(seconds_by_item.get(x, seconds_by_item.get("default", 0.0)))
    return x, os.getpid()


def cmdline_of(pid, timeout=20.0):
    """/proc/<pid>/cmdline, waiting while it is empty: right after posix_spawn
    returns, the child may still be inside execve."""
    deadline = time.monotonic() + timeout
    cmd = b""
    while not cmd and time.monotonic() < deadline:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        if not cmd:
            time.sleep(0.01)
    return cmd
