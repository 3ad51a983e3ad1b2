"""Functions and classes that travel by value (defined in ``__main__``, a
notebook, ``__mp_main__``; lambdas and closures), and the namespace they run
in on the receiving side.

cloudpickle alone rebuilds every function with a fresh globals dict of its
own, filled with what the function referenced when it was pickled. Under
multiprocessing a worker's functions share their module's globals, so an
initializer that sets ``global K`` (or fills a module-level dict) is seen by
the tasks after it. shoal keeps that contract for every start method::

    driver                                       worker (or any receiver)
    ------                                       ------
    f from __main__ / a lambda / a closure
      Pickler (a cloudpickle.Pickler)
        code object     -> marshal bytes          code with its real file name and
                           (+ source lines of        lines (tracebacks show them);
                            a notebook cell)         cell sources go into linecache
        f.__globals__   -> Namespace("__main__")  one dict per module name, shared by
                                                     every function rebuilt here:
                                                     "__main__"/"__mp_main__": an image
                                                     of the driver's __main__; an
                                                     importable module: that module
        the globals f uses (their values)          filled in where the name is not
          + the names the driver has rebound       there yet; a name the driver has
            since it last sent them ("changed")      rebound since it last sent it
                                                     overwrites (the driver's newer value)

So the initializer's ``K = 7`` stays (the driver never rebinds K), a driver's
``SCALE = 5`` between two maps reaches the workers, and the module-level dict
that the initializer filled is the one the tasks read (the driver's empty copy
only fills a name that is missing).

Imported only by a process that pickles or rebuilds such an object (importing
cloudpickle costs about 10 ms).
"""

from __future__ import annotations

import linecache
import marshal
import os
import types
from collections import ChainMap

import cloudpickle
from cloudpickle import cloudpickle as _cp

__all__ = ["Pickler", "dumps", "MAIN_NAMES", "namespace", "changed_names"]

#: module names whose functions a fresh interpreter cannot import: the
#: script or notebook (``__main__``) and the script as multiprocessing's
#: spawn and forkserver children import it (``__mp_main__``)
MAIN_NAMES = frozenset({"__main__", "__mp_main__"})

# ------------------------------------------------------------ receiver side

_NAMESPACES: dict[str, dict] = {}
_MODULES: dict[str, types.ModuleType] = {}  # the stand-in modules, kept alive


def namespace(module: str | None) -> dict:
    """The globals every function of ``module`` rebuilt in this process shares."""
    key = "__main__" if module in MAIN_NAMES or module is None else module
    ns = _NAMESPACES.get(key)
    if ns is not None:
        return ns
    mod = None
    if key != "__main__":
        # A closure or lambda of an importable module: the worker's own copy
        # of that module, where its top-level functions (which travel by
        # reference) and an initializer from it keep their state.
        try:
            import importlib

            mod = importlib.import_module(key)
        except BaseException:  # noqa: BLE001 - not importable here: a stand-in
            mod = None
    if mod is None:
        # Never the receiver's own __main__ (a worker's is shoal's entry
        # point, a driver's is the user's script): a stand-in module.
        mod = types.ModuleType(key)
        mod.__dict__["__builtins__"] = __builtins__
        _MODULES[key] = mod
    ns = mod.__dict__
    _NAMESPACES[key] = ns
    return ns


class _Namespace:
    """Stands for a function's globals in a pickle: the receiver's namespace
    of that module (memoized once per pickle like any object)."""

    __slots__ = ("module",)

    def __init__(self, module: str | None) -> None:
        self.module = module

    def __reduce__(self):
        return namespace, (self.module,)


def _function_setstate(obj: types.FunctionType, state: tuple) -> None:
    st, slots = state
    carried = slots["__globals__"]
    changed = slots.pop("_shoal_changed", ())
    ns = obj.__globals__
    for name, value in carried.items():
        if name in changed or name not in ns:
            ns[name] = value
    slots["__globals__"] = {}
    builtins = ns.get("__builtins__")
    _cp._function_setstate(obj, (st, slots))  # (it sets __builtins__: keep a module's own)
    if builtins is not None:
        ns["__builtins__"] = builtins


def _load_code(data: bytes, filename: str | None, lines: list | None) -> types.CodeType:
    if lines is not None and filename not in linecache.cache:
        # A notebook cell (or other source with no file): its lines, so that a
        # traceback formatted here shows them. No mtime: never invalidated.
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return marshal.loads(data)


# ------------------------------------------------------------ sender side

def _code_reduce(code: types.CodeType):
    # cloudpickle replaces co_filename with "<dynamic-code>" (for payloads
    # that do not depend on where a function was defined); shoal wants the
    # worker's tracebacks to name the real file and line. Driver and workers
    # run the same interpreter, so marshal carries the code object whole.
    filename = code.co_filename
    lines = None
    if not os.path.exists(filename):
        entry = linecache.cache.get(filename)
        if entry is not None and len(entry) == 4:
            lines = list(entry[2])
    return _load_code, (marshal.dumps(code), filename if lines is not None else None, lines)


#: (id of a module's globals, name) -> id of the value last sent for it
_SENT: dict[tuple[int, str], int] = {}


def changed_names(fn: types.FunctionType) -> tuple:
    """Names of globals ``fn`` uses whose value the sender has rebound since
    it last sent them (and records what it sends now)."""
    g = fn.__globals__
    gid = id(g)
    changed = []
    for name in fn.__code__.co_names:
        if name not in g:
            continue
        now = id(g[name])
        before = _SENT.get((gid, name))
        if before is not None and before != now:
            changed.append(name)
        _SENT[(gid, name)] = now
    return tuple(changed)


def _module_named_by(g: dict) -> str | None:
    """The module whose namespace ``g`` is (a real module, or one of this
    process's stand-ins for another process's __main__), else None."""
    import sys

    name = g.get("__name__")
    if not isinstance(name, str):
        return None
    mod = sys.modules.get(name)
    if (mod is not None and getattr(mod, "__dict__", None) is g) or \
            _NAMESPACES.get("__main__" if name in MAIN_NAMES else name) is g:
        return name
    return None


def _module_of(obj) -> str | None:
    return getattr(obj, "__module__", None)


class Pickler(cloudpickle.Pickler):
    """cloudpickle, with functions' globals resolved in the receiver's shared
    namespace of their module, code objects whole (file names, lines), and
    ``__mp_main__`` treated as ``__main__`` (by value)."""

    dispatch_table = ChainMap({types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table)

    def __init__(self, file, protocol=None, buffer_callback=None, changed: tuple = ()) -> None:
        super().__init__(file, protocol=protocol, buffer_callback=buffer_callback)
        self.changed = changed
        self.namespaces: dict[int, _Namespace] = {}

    def reducer_override(self, obj):
        if _module_of(obj) in MAIN_NAMES:
            # cloudpickle sends a function of __mp_main__ by reference (that
            # module exists in a multiprocessing child); shoal's workers do
            # not have it.
            if isinstance(obj, types.FunctionType):
                return self._dynamic_function_reduce(obj)
            if isinstance(obj, type):
                return _cp._dynamic_class_reduce(obj)
        return super().reducer_override(obj)

    def _dynamic_function_reduce(self, func):
        code, base, _, _, closure = self._function_getnewargs(func)
        g = func.__globals__
        ref = self.namespaces.get(id(g))
        if ref is None:
            module = _module_named_by(g)
            # Globals that are not a module's (exec() with a dict of its own):
            # cloudpickle's fresh dict per pickle, as before.
            ref = self.namespaces[id(g)] = base if module is None else _Namespace(module)
        state = _cp._function_getstate(func)
        if self.changed:
            state[1]["_shoal_changed"] = self.changed
        return (_cp._make_function, (code, ref, None, None, closure), state, None, None,
                _function_setstate)


def dumps(obj, protocol: int, buffer_callback=None, changed: tuple = ()) -> bytes:
    import io

    f = io.BytesIO()
    Pickler(f, protocol=protocol, buffer_callback=buffer_callback, changed=changed).dump(obj)
    return f.getvalue()

