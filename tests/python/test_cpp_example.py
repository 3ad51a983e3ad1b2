"""The C++ package: install libshoal to a temporary prefix with `cmake --install`,
build examples/cpp against it with find_package(shoal), run it."""

import os
import pathlib
import shutil
import subprocess

import pytest

import shoal

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.timeout(1200)
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_find_package_shoal_from_installed_prefix(tmp_path):
    prefix, build, example = tmp_path / "prefix", tmp_path / "build", tmp_path / "example"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    jobs = str(os.cpu_count() or 1)
    run(["cmake", "-S", ROOT, "-B", build, *gen, "-DSHOAL_PYTHON=OFF", "-DSHOAL_TESTS=OFF",
         "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_INSTALL_PREFIX={prefix}"])
    run(["cmake", "--build", build, "-j", jobs])
    run(["cmake", "--install", build])
    assert (prefix / "include" / "shoal" / "allocation.hpp").exists()
    assert list(prefix.glob("lib*/cmake/shoal/shoalConfig.cmake"))
    run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", example, *gen, f"-DCMAKE_PREFIX_PATH={prefix}"])
    run(["cmake", "--build", example, "-j", jobs])
    text = run([example / "print_allocation"])
    assert f"cpus: {shoal.allocation().cpus}\n" in text
    assert "topology (" in text
    narrowed = run(["taskset", "-c", "0", example / "print_allocation"]) if shutil.which("taskset") else "cpus: 1\n"
    assert "cpus: 1\n" in narrowed
