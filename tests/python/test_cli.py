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


def test_version():
    import shoal

    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"shoal {shoal.__version__}"


def test_help_is_plain_text():
    for args in (("--help",), ("info", "--help"), ("demo", "--help")):
        out = run(*args)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("usage: shoal")
        assert "``" not in out.stdout and ":func:" not in out.stdout, out.stdout


def test_closed_pipe_ends_quietly_like_other_unix_tools():
    # `shoal info | head -1` once head has gone: the read end is closed before
    # shoal writes, so the write fails every time (no race with the reader).
    import os
    import signal

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        out = subprocess.run([sys.executable, "-m", "shoal", "info"], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode == 128 + signal.SIGPIPE  # what a shell shows for `yes | head -1`


def test_head_keeps_the_first_line():
    out = subprocess.run(f"'{sys.executable}' -m shoal info | head -1", shell=True,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("shoal ") and out.stdout.count("\n") == 1
    assert out.stderr == ""
