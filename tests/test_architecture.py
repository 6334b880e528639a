"""The import graph is the architecture: unlearn_core never imports ComfyUI; in nodes/ exactly one
module touches comfy.* / folder_paths; the core imports without ComfyUI."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_MODULES = {"comfy", "folder_paths", "nodes", "execution", "server", "comfy_extras"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_never_imports_the_host():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & HOST_MODULES)
        for p in (ROOT / "unlearn_core").rglob("*.py")
        if imported_roots(p) & HOST_MODULES
    }
    assert offenders == {}


def test_only_one_node_module_touches_the_host():
    files = list((ROOT / "nodes").rglob("*.py"))
    touching = [p.name for p in files if imported_roots(p) & {"comfy", "folder_paths"}]
    assert touching == ["host.py"]


PURE_NODE_MODULES = sorted(p.stem for p in (ROOT / "nodes").glob("*.py")
                           if p.stem not in ("host", "__init__"))


def test_every_node_module_but_host_imports_without_comfyui():
    """The node classes, widgets, plots, presets: importable (and so testable) with no ComfyUI
    anywhere -- ``host`` loads only when a node runs."""
    assert {"erase", "erasure_io", "metrics", "registry", "widgets", "plot"} <= set(PURE_NODE_MODULES)
    code = (
        "import sys; sys.path[:0] = ['tests'];"
        "from unlearn_testkit.pack import offline_module, PACKAGE;"
        f"[offline_module('nodes.' + m) for m in {PURE_NODE_MODULES!r}];"
        "reg = offline_module('nodes.registry');"
        "from test_server import OUR_NODES;"
        "assert sorted(reg.NODE_CLASS_MAPPINGS) == sorted(OUR_NODES), sorted(reg.NODE_CLASS_MAPPINGS);"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('comfy', 'folder_paths', 'comfy_extras', 'execution', 'server'));"
        "assert not bad, bad;"
        "assert PACKAGE + '.nodes.host' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_losses_import_without_comfyui():
    code = ("import sys; from unlearn_core import LOSSES; "
            "assert set(LOSSES) >= {'cramer_wold', 'jensen_shannon', 'l2'}; "
            "assert 'comfy' not in sys.modules and 'folder_paths' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
