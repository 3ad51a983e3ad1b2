"""Task functions for the conformance and worst-day tests. They live in an
importable module so both backends (and worker processes) resolve them by
reference; gates are files, because a threading.Event cannot cross into a
worker process."""

from __future__ import annotations

import os
import signal
import threading
import sys
import time


class CustomError(Exception):
    """An exception type the engine cannot know about."""

    def __init__(self, code, detail="x"):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class CustomBaseException(BaseException):
    pass


def identity(x):
    return x


def square(x):
    return x * x


def add3(a, b, c):
    return a + b + c


def raise_custom(code):
    raise CustomError(code, "from task")


def raise_base(kind):
    if kind == "exit":
        sys.exit(3)
    if kind == "custom":
        raise CustomBaseException("custom base")
    if kind == "keyboard":
        raise KeyboardInterrupt("in task")
    raise AssertionError(kind)


def return_none():
    return None


def return_exception_instance():
    return ValueError("returned, not raised")


def echo_kwargs(*args, **kwargs):
    return args, kwargs


def big_bytes(n):
    return b"\xab" * n


def length_and_sum(data):
    return len(data), sum(data[:: 1 << 16])


def nested(depth):
    obj = []
    for _ in range(depth):
        obj = [obj]
    return obj


def depth_of(obj):
    d = 0
    while obj:
        obj = obj[0]
        d += 1
    return d


def gate(path, value=None, timeout=60.0):
    """Announces it started (path + '.started'), then waits until `path` exists
    (or an ABORT file next to it: a failed test opens every gate on teardown)."""
    open(path + ".started", "w").close()
    deadline = time.monotonic() + timeout
    abort = os.path.join(os.path.dirname(path), "ABORT")
    while not os.path.exists(path) and not os.path.exists(abort):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} never opened")
        time.sleep(0.005)
    return value


def gate_then_raise(path, code):
    gate(path)
    raise CustomError(code)


def touch(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return path


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def wait_file(path, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.005)


def getpid(_=None):
    return os.getpid()


def slow_getpid(_=None):
    time.sleep(0.01)
    return os.getpid()


# ---- worst days ---------------------------------------------------------------
def fork_child_then_die(path):
    """Forks a child that sleeps (and records its pid), then the worker dies."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(30)
        finally:
            os._exit(0)
    with open(path, "w") as f:
        f.write(str(pid))
    os._exit(9)


def close_std_fds():
    for fd in (0, 1, 2):
        os.close(fd)
    return "closed"


def print_something(x):
    print("hello from a task", x)
    print("to stderr", x, file=sys.stderr)
    return x


def chdir_to(path):
    os.chdir(path)
    return os.getcwd()


def cwd(_=None):
    return os.getcwd()


def set_sigterm_ignored():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, lambda *a: None)
    return os.getpid()


def set_sigalrm_and_wait(seconds):
    got = []
    signal.signal(signal.SIGALRM, lambda s, f: got.append(s))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.005)
    return got


def limit_address_space(mib):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (mib << 20, resource.RLIM_INFINITY))


def allocate(mib):
    buf = bytearray(mib << 20)
    return len(buf)


def maybe_kill_self(x, marker_dir):
    """Dies by SIGKILL the first time it sees x (a marker per item)."""
    marker = os.path.join(marker_dir, f"k{x}")
    if x % 7 == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.002)
    return x * 2


class TwoArgError(Exception):
    """Pickles badly: __reduce__ replays args=(a,) into __init__(a, b)."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_two_arg_error():
    raise TwoArgError("a", "b")


class LockedError(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_locked_error():
    raise LockedError()


def return_worker_only_class():
    """An instance of a class the driver cannot import (made up in the worker)."""
    cls = type("Phantom", (), {"__module__": "no_such_module_anywhere"})
    import sys as _s
    import types as _t

    mod = _t.ModuleType("no_such_module_anywhere")
    mod.Phantom = cls
    _s.modules["no_such_module_anywhere"] = mod
    return cls()


def sleep_then_touch(seconds, path):
    time.sleep(seconds)
    return touch(path)


def start_lingering_thread(seconds):
    """Leaves a non-daemon thread behind in the worker."""
    threading.Thread(target=time.sleep, args=(seconds,), daemon=False).start()
    return os.getpid()


# Fixtures shared by the conformance suites (imported by name into each module).
import pytest as _pytest

# The contract suites run once per backend from one body. Under
# ``mpirun -n N python -m shoal.mpi -m pytest ...`` (the Makefile's mpi-test)
# SHOAL_TEST_BACKENDS=mpi runs them on the mpi backend, whose serving ranks
# exist only there.
BACKENDS = os.environ.get("SHOAL_TEST_BACKENDS", "processes,threads").split(",")

#: what the mpi backend does not offer (yet: the root does not see when a
#: node's worker starts a task, and a rank that serves cannot be replaced)
NOT_ON_MPI = {"timeout": "per-task time limits", "kill": "killing a worker",
              "max_tasks": "max_tasks_per_worker", "cancel_running": "cancelling a running task",
              "driver": "driver in a fresh process (outside the MPI job: test_mpi.py starts "
                        "such drivers with mpirun)"}


def mpi_workers():
    """The workers of the mpi backend's job (under python -m shoal.mpi): a
    leader's worker processes and the other ranks of every node."""
    import shoal.mpi

    return len(shoal.mpi.layout().slots)


def need_workers(pool_or_executor, n=2):
    """A test whose tasks must run at the same time on n workers: skipped
    where the pool has fewer (the mpi backend under mpirun -n 2 has one)."""
    if pool_or_executor.workers < n:
        _pytest.skip(f"needs {n} workers running at once; this pool has "
                     f"{pool_or_executor.workers}")


def skip_on_mpi(backend, what):
    if backend == "mpi":
        _pytest.skip(f"the mpi backend has no {NOT_ON_MPI[what]}")


@_pytest.fixture(autouse=True)
def _open_gates_on_teardown(tmp_path):
    # A failing test may leave a task waiting on a gate: free it, so no thread
    # (threads backend) or worker outlives the test by the gate's timeout.
    yield
    (tmp_path / "ABORT").touch()


@_pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def make_unpicklable(kind):
    """An object pickle refuses, with the error type multiprocessing raises."""
    if kind == "lock":
        return threading.Lock()              # TypeError
    if kind == "generator":
        return (i for i in range(3))         # TypeError
    if kind == "queue":
        import multiprocessing
        return multiprocessing.Queue()       # RuntimeError (share by inheritance only)
    if kind == "refuses":
        return RefusesPickle()               # pickle.PicklingError
    raise AssertionError(kind)


class RefusesPickle:
    def __reduce__(self):
        import pickle
        raise pickle.PicklingError("this object refuses to be pickled")


def return_unpicklable(kind):
    return make_unpicklable(kind)


def make_adder(k):
    return lambda x: x + k
