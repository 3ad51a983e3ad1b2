"""The native-kernel examples run as scripts (real subprocesses, real
compilers) and print the right integral: the numba cfunc one, and the
Fortran and C kernels called through ctypes. gfortran and cc are required,
not optional: scripts/ensure-system-deps.sh installs them, so a missing
compiler fails here instead of skipping."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


def run(path: str, *args: str) -> str:
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, path), *args],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, f"{path} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.timeout(300)
def test_fortran_and_c_kernels_through_ctypes():
    n = 1000
    out = run("fortran_kernel/run.py", str(n), "2")
    reference = float(re.search(r"serial numpy: integral = (\S+)", out).group(1))
    assert abs(reference) < 1e-12
    for name in ("Fortran", "C"):
        line = re.search(rf"^{name}: integral = (\S+), .* half the rows = (\S+)", out, re.M)
        assert line, out
        integral, half = float(line.group(1).rstrip(",")), float(line.group(2))
        assert abs(integral) < 1e-12, out  # the exact integral is 0; the midpoints cancel
        assert abs(integral - reference) < 1e-12, out
        # Rows [0, n/2): exactly 2, midpoint error about (pi/n)^2 / 6.
        assert abs(half - 2.0) < (math.pi / n) ** 2, out
    assert "checked before calling: ctx holds float32" in out, out


@pytest.mark.timeout(300)
def test_numba_kernel_example():
    pytest.importorskip("numba")
    out = run("integration_numba_kernel.py", "300", "2")
    integral = float(re.search(r"Integral value is (\S+),", out).group(1))
    assert abs(integral) < 1e-12, out
    assert "agree bit for bit: True" in out, out
