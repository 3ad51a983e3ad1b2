"""Callable modules, so ``shoal.allocation()``, ``shoal.topology()`` and
``shoal.info()`` work however the package was imported.

Importing a submodule (``from .allocation import default_workers``, which
other modules of shoal do) sets the package attribute of the same name to
the module, replacing any function ``shoal.__getattr__`` returned before. So
those public names ARE the modules, and calling the module calls its main
function.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable


class CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["__call_target__"](*args, **kwargs)


def make_callable(module_name: str, target: Callable[..., Any]) -> None:
    module = sys.modules[module_name]
    module.__call_target__ = target  # type: ignore[attr-defined]
    module.__class__ = CallableModule
