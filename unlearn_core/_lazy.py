"""Packages whose public names are imported on first use (PEP 562).

``import unlearn_core`` (and ``.metrics``, ``.toyworld``) then costs milliseconds, not the seconds
and hundreds of MiB of torch, diffusers and open_clip: the ``unlearn`` command answers ``--help``
and refuses bad arguments before any of them loads. ``from unlearn_core import erase`` works as if
the names were imported eagerly.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any


class _LazyPackage(types.ModuleType):
    """A package module that keeps an exported function bound to its name when a submodule of the
    same name is imported later (``metrics.clip_score`` the function, as with eager imports; the
    import system would otherwise rebind the package attribute to the submodule)."""

    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_EXPORTS", {})
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and exports.get(name) == name):
            value = getattr(value, name)
        super().__setattr__(name, value)


def install(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """Make ``package`` (a module name) import ``exports`` (public name -> submodule) lazily.

    Returns the module's ``__getattr__`` and ``__dir__``; assign both in the package.
    """
    module = sys.modules[package]
    module._EXPORTS = exports
    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        sub = exports.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{sub}"), name)
        setattr(module, name, value)  # later look-ups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(module.__dict__) | set(exports))

    return __getattr__, __dir__
