"""A user's own script as the driver, run as a subprocess: what a task sees
of its initializer's state, the tracebacks it shows, Manager proxies, shoal
inside a multiprocessing child, and a quiet exit. Every case runs on each
backend and, for the processes backend, with forked and spawned workers
(``SHOAL_START=spawn``); multiprocessing runs the same script as the
reference where it can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conformance_helpers import BACKENDS

pytestmark = pytest.mark.timeout(180)

# (backend, start): the threads backend starts no process
STARTS = [("processes", "auto"), ("processes", "spawn"), ("threads", "auto")]
START_IDS = ["processes-fork", "processes-spawn", "threads"]


def run_script(path, *args, start="auto", timeout=120, cwd=None):
    env = dict(os.environ, SHOAL_START=start)
    env.pop("PYTHONWARNINGS", None)
    r = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=cwd or os.path.dirname(str(path)))
    return r


def last_json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------ initializer state
# The task reads a module global the initializer set (global K) and a
# module-level dict it filled; K also exists in the driver (None), so a copy
# of the driver's globals must not hide the worker's.
MAIN_BODY = """
import json, sys
import shoal
K = None
CACHE = {}

def init(v):
    global K
    K = v
    CACHE["k"] = v

def task(i):
    return [K, CACHE.get("k", "MISSING"), i]
"""

RUN_SHOAL = """
def run(backend, init, task):
    with shoal.Pool(2, init, (7,), backend=backend) as p:
        return p.map(task, range(6), chunksize=1)
"""

MODULE_HELPERS = """
K = None
CACHE = {}

def init(v):
    global K
    K = v
    CACHE["k"] = v

def task(i):
    return [K, CACHE.get("k", "MISSING"), i]

def closures():
    def init_c(v):
        global K
        K = v
        CACHE["k"] = v
    return init_c, (lambda i: [K, CACHE.get("k", "MISSING"), i])
"""

SCRIPTS = {
    # functions of an unguarded script (the README says no guard is needed)
    "main-unguarded": MAIN_BODY + RUN_SHOAL + """
print(json.dumps(run(sys.argv[1], init, task)))
""",
    "main-guarded": MAIN_BODY + RUN_SHOAL + """
if __name__ == "__main__":
    import multiprocessing
    with multiprocessing.Pool(2, init, (7,)) as p:
        assert p.map(task, range(6), chunksize=1) == [[7, 7, i] for i in range(6)]
    print(json.dumps(run(sys.argv[1], init, task)))
""",
    # a lambda task and a closure initializer defined in __main__
    "main-lambda-closure": MAIN_BODY + RUN_SHOAL + """
def make_init():
    def init_c(v):
        global K
        K = v
        CACHE["k"] = v
    return init_c

print(json.dumps(run(sys.argv[1], make_init(), lambda i: [K, CACHE.get("k", "MISSING"), i])))
""",
    # functions of an importable module (by reference)
    "module": "import json, sys, shoal, helpers_mod\n" + RUN_SHOAL + """
print(json.dumps(run(sys.argv[1], helpers_mod.init, helpers_mod.task)))
""",
    # closures and lambdas of an importable module (by value, in that module)
    "module-closures": "import json, sys, shoal, helpers_mod\n" + RUN_SHOAL + """
print(json.dumps(run(sys.argv[1], *helpers_mod.closures())))
""",
}


@pytest.mark.parametrize("kind", list(SCRIPTS))
@pytest.mark.parametrize("backend,start", STARTS, ids=START_IDS)
def test_tasks_see_what_the_initializer_set(tmp_path, kind, backend, start):
    (tmp_path / "helpers_mod.py").write_text(MODULE_HELPERS)
    script = tmp_path / "driver.py"
    script.write_text(SCRIPTS[kind])
    out = last_json(run_script(script, backend, start=start))
    assert out == [[7, 7, i] for i in range(6)]


# ------------------------------------------------------ tracebacks
TRACEBACK = """
import sys, shoal

def helper(x):
    raise ValueError("bad value %d" % x)   # the line a user looks for

def task(x):
    return helper(x)

with shoal.Pool(2, backend=sys.argv[1]) as p:
    try:
        p.map(task, [3])
    except ValueError as exc:
        print(exc.__cause__)
"""


@pytest.mark.parametrize("backend,start", STARTS, ids=START_IDS)
def test_a_remote_traceback_names_the_script_its_lines_and_their_source(tmp_path, backend,
                                                                        start):
    script = tmp_path / "tb_script.py"
    script.write_text(TRACEBACK)
    r = run_script(script, backend, start=start)
    assert r.returncode == 0, r.stderr
    assert "<dynamic-code>" not in r.stdout
    assert f'File "{script}", line 5, in helper' in r.stdout, r.stdout
    assert f'File "{script}", line 8, in task' in r.stdout, r.stdout
    assert 'raise ValueError("bad value %d" % x)   # the line a user looks for' in r.stdout


# ------------------------------------------------------ Manager proxies
MANAGER = """
import json, multiprocessing, sys, shoal

def put(d, lst, i):
    d[i] = i * i
    lst.append(i)
    return i

if __name__ == "__main__":
    with multiprocessing.Manager() as m:
        d, lst = m.dict(), m.list()
        with shoal.Pool(2, backend=sys.argv[1]) as p:
            out = p.starmap(put, [(d, lst, i) for i in range(6)], chunksize=1)
        print(json.dumps([out, sorted(d.items()), sorted(lst)]))
"""


@pytest.mark.parametrize("backend,start", STARTS, ids=START_IDS)
def test_manager_proxies_work_inside_tasks(tmp_path, backend, start):
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    out = last_json(run_script(script, backend, start=start))
    assert out == [list(range(6)), [[i, i * i] for i in range(6)], list(range(6))]


# ------------------------------------------------------ shoal in a multiprocessing child
NESTED = """
import json, multiprocessing as mp, sys, shoal

def square(x):
    return x * x

def child(q, backend):
    with shoal.Pool(2, backend=backend) as p:
        q.put(p.map(square, range(5), chunksize=1))

if __name__ == "__main__":
    out = {}
    for method in ("spawn", "forkserver"):
        ctx = mp.get_context(method)
        q = ctx.Queue()
        pr = ctx.Process(target=child, args=(q, sys.argv[1]))
        pr.start()
        out[method] = q.get(timeout=60)
        pr.join()
    print(json.dumps(out))
"""


@pytest.mark.parametrize("backend,start", STARTS, ids=START_IDS)
def test_shoal_inside_a_spawned_multiprocessing_child(tmp_path, backend, start):
    # The child runs the script as __mp_main__; its functions must reach
    # shoal's workers (the spawn start has no __mp_main__ to import).
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    out = last_json(run_script(script, backend, start=start))
    assert out == {"spawn": [0, 1, 4, 9, 16], "forkserver": [0, 1, 4, 9, 16]}


# ------------------------------------------------------ a quiet exit
QUIET = """
import sys, shoal

def init(v):
    global K
    K = v

def task(i):
    return K + i

pool = shoal.Pool(2, init, (1,), backend=sys.argv[1])
print(pool.map(task, range(3)))
ex = shoal.Executor(2, backend=sys.argv[1], initializer=init, initargs=(1,))
print(ex.submit(task, 1).result())
with shoal.Pool(2, init, (1,), backend=sys.argv[1]) as p:
    print(p.map(task, range(3)))
pool.close()
pool.join()
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_script_with_an_initializer_exits_without_noise(tmp_path, backend):
    script = tmp_path / "quiet.py"
    script.write_text(QUIET)
    r = run_script(script, backend)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:3] == ["[1, 2, 3]", "2", "[1, 2, 3]"]
    assert r.stderr == "", r.stderr
