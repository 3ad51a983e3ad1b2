"""The OpenBLAS copies loaded in this process, asked directly through their C
API (microseconds) instead of through threadpoolctl (20 ms to import and scan,
paid by every worker of a numpy driver at start).

Two users:
- the driver, before forking workers: OpenBLAS's pthreads server registers a
  pthread_atfork handler that joins its threads before a fork (they restart
  on the next BLAS call), so threads of that kind do not make fork unsafe;
- a forked worker capping its BLAS threads (workers x threads <= cores).

Anything else that runs a native thread pool (OpenMP runtimes, MKL, BLIS,
FlexiBLAS) is left to threadpoolctl: ``cap()`` says when that is needed.
"""

from __future__ import annotations

import os

# Symbol spellings: plain builds, 64-bit-integer builds, numpy/scipy wheels.
_PREFIXES = ("openblas", "scipy_openblas", "scipy_openblas64_")
_SUFFIXES = ("", "64_")
# Thread-pool libraries other than OpenBLAS that threadpoolctl knows.
_OTHERS = ("libgomp", "libomp", "libiomp", "mkl_rt", "libmkl", "libblis", "flexiblas")


def _mapped() -> tuple[list[str], bool]:
    """Paths of the loaded OpenBLAS libraries, and whether any other
    thread-pool library is loaded (the dynamic linker's list: microseconds)."""
    from . import _core

    paths: list[str] = []
    others = False
    for path in _core.loaded_libraries():
        name = os.path.basename(path)
        if "openblas" in name:
            paths.append(path)
        elif any(o in name for o in _OTHERS):
            others = True
    return paths, others


#: path -> _Lib. Valid in a forked child too (same mappings), which so caps
#: its BLAS without loading ctypes' view of the library again.
_cache: dict = {}


class _Lib:
    def __init__(self, path: str) -> None:
        import ctypes

        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 4) | ctypes.RTLD_GLOBAL)
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                parallel = getattr(lib, f"{prefix}_get_parallel{suffix}", None)
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if parallel is not None and get is not None and put is not None:
                    parallel.restype = get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    put.restype = None
                    self.parallel, self.get, self.put = parallel, get, put
                    # The function OpenBLAS's own fork handler calls: joins
                    # its server threads (they restart on demand).
                    self.shutdown = getattr(lib, "blas_thread_shutdown_", None)
                    if self.shutdown is not None:
                        self.shutdown.argtypes = []
                        self.shutdown.restype = ctypes.c_int
                    # How many threads its server started (get_num_threads() is
                    # only how many a call uses now: threadpool_limits(1) lowers
                    # it and leaves the threads running).
                    try:
                        self.server = ctypes.c_int.in_dll(lib, "blas_num_threads")
                    except ValueError:
                        self.server = None
                    return
        raise OSError(f"{path}: no OpenBLAS threading API found")


def _libs() -> tuple[list[_Lib], bool] | None:
    """The loaded OpenBLAS libraries and whether other thread-pool libraries
    are loaded; None if some OpenBLAS cannot be asked (then guess nothing)."""
    try:
        paths, others = _mapped()
        libs = []
        for p in paths:
            lib = _cache.get(p)
            if lib is None:
                lib = _cache[p] = _Lib(p)
            libs.append(lib)
        return libs, others
    except (OSError, ValueError, AttributeError):
        return None


def fork_safe_threads() -> int:
    """How many threads the loaded OpenBLAS copies may run that their own fork
    handler stops: num_threads - 1 for each built with its pthreads server
    (get_parallel() == 1); 0 if any is an OpenMP build (libgomp's threads do
    not survive fork: GCC bug 60035) or cannot be asked."""
    found = _libs()
    if found is None:
        return 0
    allowed = 0
    for lib in found[0]:
        if lib.parallel() != 1:
            return 0
        started = lib.server.value if lib.server is not None else 0
        allowed += max(0, max(lib.get(), started) - 1)
    return allowed


def cap(threads: int) -> bool:
    """Caps every loaded OpenBLAS at `threads`. True if that was all there was
    to cap (no other thread-pool library is loaded); False means the caller
    should use threadpoolctl."""
    found = _libs()
    if found is None:
        return False
    libs, others = found
    for lib in libs:
        lib.put(int(threads))
        if threads == 1 and lib.shutdown is not None and lib.parallel() == 1:
            # In a forked child set_num_threads restarts the server that the
            # fork stopped, and its threads spin ~0.1 s waiting for work
            # (measured: 114 ms of CPU per worker, with 2 workers on 2 cores
            # half the machine). At one thread nothing will use them.
            lib.shutdown()
    return not others
