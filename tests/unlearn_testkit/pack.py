"""The pack imported as a package *without* ComfyUI, the way ComfyUI imports it (the repository
folder as one package, so the nodes' relative imports of ``..unlearn_core`` resolve), for tests
of the pure node modules: ``offline_module("nodes.widgets")``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "unlearn_pack_offline"


def offline_pack() -> ModuleType:
    """The repository folder as the package ``unlearn_pack_offline`` (imported once)."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def offline_module(name: str) -> ModuleType:
    """A module of the pack, e.g. ``offline_module("nodes.widgets")``, imported without ComfyUI."""
    offline_pack()
    return importlib.import_module(f"{PACKAGE}.{name}")
