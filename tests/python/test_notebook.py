"""shoal from a real Jupyter kernel (ipykernel, driven by jupyter_client):
functions defined in cells, an initializer's state, and a remote traceback
that shows the cell's line. A kernel runs threads, so the processes backend
spawns its workers there: cell code reaches them by value."""

from __future__ import annotations

import pytest

from conformance_helpers import BACKENDS

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120)
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def run_cell(kc, code: str) -> str:
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            raise AssertionError("cell failed:\n" + "\n".join(msg["content"]["traceback"]))
        elif kind == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(out)


CELL_DEFS = """import shoal
K = None
CACHE = {}
def init(v):
    global K
    K = v
    CACHE["k"] = v
def task(i):
    return (K, CACHE.get("k", "MISSING"), i)
def bad(x):
    raise ValueError("cell error %d" % x)   # line 11 of this cell
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_functions_with_an_initializer(kernel, backend):
    run_cell(kernel, CELL_DEFS)
    out = run_cell(kernel, f"""
with shoal.Pool(2, init, (7,), backend={backend!r}) as p:
    print(p.map(task, range(4), chunksize=1))
with shoal.Pool(2, backend={backend!r}) as p:
    print(p.map(lambda x: x + 1, range(3)))
""")
    assert out.splitlines() == ["[(7, 7, 0), (7, 7, 1), (7, 7, 2), (7, 7, 3)]", "[1, 2, 3]"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cells_traceback_shows_its_line(kernel, backend):
    run_cell(kernel, CELL_DEFS)
    out = run_cell(kernel, f"""
with shoal.Pool(2, backend={backend!r}) as p:
    try:
        p.map(bad, [1])
    except ValueError as exc:
        print(exc.__cause__)
""")
    assert "<dynamic-code>" not in out
    assert "line 11, in bad" in out, out
    assert 'raise ValueError("cell error %d" % x)   # line 11 of this cell' in out, out
