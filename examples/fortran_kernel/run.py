"""The course's 2D integration of sin(x+y) over [0, pi]^2 with a Fortran and
a C kernel, called through ctypes by shoal.parallel_reduce on every core (the
GIL released). Builds rows.f90 with gfortran and rows.c with cc into a
temporary directory, loads them with ctypes, declares their signatures with
argtypes/restype, and compares both with a serial numpy sum of the same points.

    python examples/fortran_kernel/run.py [n] [threads]

gfortran and cc come from the Debian packages gfortran and gcc
(scripts/ensure-system-deps.sh installs them).
"""

import ctypes
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

import shoal

HERE = os.path.dirname(os.path.abspath(__file__))


def build(compiler: str, source: str, directory: str, flags: tuple[str, ...] = (),
          libs: tuple[str, ...] = ()) -> str:
    """Compiles source into a shared library in directory; returns its path."""
    exe = shutil.which(compiler)
    if exe is None:
        sys.exit(f"{compiler} not found: install it (as root, scripts/ensure-system-deps.sh does)")
    library = os.path.join(directory, source.replace(".", "_") + ".so")  # rows_f90.so, rows_c.so
    subprocess.run([exe, "-O2", "-shared", "-fPIC", *flags, "-o", library,
                    os.path.join(HERE, source), *libs], check=True, cwd=directory)
    return library


def load_kernel(library: str, symbol: str):
    """The kernel as a ctypes function: double symbol(int64, int64, double*).
    shoal reads argtypes and restype to check the kernel and the ctx before
    calling it, so they must be set."""
    kernel = getattr(ctypes.CDLL(library), symbol)
    kernel.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_double)]
    kernel.restype = ctypes.c_double
    return kernel


def serial_sum(n: int, h: float) -> float:
    """The same midpoint sum with numpy, 256 rows at a time, on one core."""
    y = h * (np.arange(n) + 0.5)
    s = 0.0
    for start in range(0, n, 256):
        x = h * (np.arange(start, min(start + 256, n)) + 0.5)
        s += float(np.sin(x[:, None] + y[None, :]).sum())
    return s


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else None  # None: all this job's cores
    h = math.pi / n
    params = np.array([n, h])  # ctx: the kernels get a double* to (n, h)
    with tempfile.TemporaryDirectory() as directory:
        # -frecursive: locals on the stack even where gfortran would make them static.
        kernels = {
            "Fortran": load_kernel(build("gfortran", "rows.f90", directory, flags=("-frecursive",)), "rows_f"),
            "C": load_kernel(build("cc", "rows.c", directory, libs=("-lm",)), "rows_c"),
        }
        reference = serial_sum(n, h) * h * h
        print(f"serial numpy: integral = {reference:.6e}")
        for name, kernel in kernels.items():
            integral = shoal.parallel_reduce(n, kernel, params, threads=threads) * h * h
            # Rows [0, n/2) alone: x in [0, pi/2], exactly 2.
            half = shoal.parallel_reduce(n // 2, kernel, params, threads=threads) * h * h
            print(f"{name}: integral = {integral:.6e}, error = {abs(integral):.3e}, "
                  f"difference from serial = {abs(integral - reference):.3e}, "
                  f"half the rows = {half:.9f} (exact 2)")
        # The signature is checked against ctx before any native code runs:
        try:
            shoal.parallel_reduce(n, kernels["Fortran"], params.astype(np.float32))
        except TypeError as e:
            print(f"checked before calling: {e}")


if __name__ == "__main__":
    main()
