"""Every example in examples/ runs as a script (a real subprocess, real pool)
and prints the right answer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("shoal.pool", reason="the process pool (shoal.Pool) is not built")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")


def run(name: str, *args: str) -> str:
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                       capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.timeout(300)
def test_integration2d_shared():
    out = run("integration2d_shared.py", "300", "2")
    first = out.splitlines()[0]
    assert first.startswith("Integral value is")
    assert abs(float(first.split()[3].rstrip(","))) < 1e-6
    partials = [float(x) for x in out.splitlines()[1].split()[2:]]
    # each worker wrote its own slot: both non-zero, opposite signs, sum ~ 0
    assert len(partials) == 2 and partials[0] > 0.5 and partials[1] < -0.5


@pytest.mark.timeout(300)
def test_dataframe_mean():
    out = run("dataframe_mean.py", "2")
    assert float(out.strip()) == 10002.0  # mean of 3, 5, ..., 20001


@pytest.mark.timeout(300)
def test_lambdas_and_closures():
    out = run("lambdas_and_closures.py")
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert lines["lambda"].strip() == str([x * x for x in range(8)])
    assert lines["closure"].strip() == str([x * 3 + 100 for x in range(8)])
    assert lines["starmap"].strip() == "[9, 18, 27]"
    assert lines["instance"].strip() == "42"
    assert lines["executor"].strip() == str(sum(i * i for i in range(1000)))


@pytest.mark.timeout(300)
def test_sleep_threads():
    out = run("sleep_threads.py")
    assert out.splitlines()[0] == "[0, 1, 2, 3]"
    assert out.splitlines()[1].startswith("Time spent:")


def test_examples_use_only_the_public_api():
    import ast

    for name in sorted(os.listdir(EXAMPLES)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(EXAMPLES, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shoal"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private and "._" not in "." + node.module, f"{name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("shoal._"), f"{name}: {ast.unparse(node)}"
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "shoal":
                assert not node.attr.startswith("_"), f"{name}: shoal.{node.attr}"
