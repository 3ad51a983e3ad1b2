import json
import subprocess
import sys


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=120, **kw)


def test_info_json_is_machine_readable():
    out = run("info", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)


def test_demo_runs_and_prints_integral():
    out = run("demo", "--n", "300")
    assert out.returncode == 0, out.stderr
    assert "serial Python" in out.stdout
