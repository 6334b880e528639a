"""The import graph is the architecture (docs/ARCHITECTURE.md): every arrow rule in the doc's
table is checked here against every import in unlearn_core/ and nodes/, absolute and relative,
at module level or inside a function; each rule is shown to fail on a graph that breaks it; and
the node modules other than host import without ComfyUI."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
HOST_MODULES = {"comfy", "folder_paths", "nodes", "execution", "server", "comfy_extras"}
TOOL_MODULES = {"benchmarks", "scripts", "tests", "unlearn_testkit", "conftest"}
SUBPACKAGES = ("metrics", "attacks", "toyworld", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[tuple[str, bool]]:
    """(module, relative) for every import in the file; a relative import is resolved against the
    file's package, with the repository root as the pack's top (``..unlearn_core`` from nodes/ is
    ``unlearn_core``). ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(ROOT).parent.parts)
    found: set[tuple[str, bool]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(a.name, False) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            relative = node.level > 0
            base_parts = package[:len(package) - node.level + 1] if relative else []
            base = ".".join(base_parts + ([node.module] if node.module else []))
            if base:
                found.add((base, relative))
            found |= {(f"{base}.{a.name}" if base else a.name, relative) for a in node.names}
    return found


def package_of(module: str, relative: bool = True) -> str | None:
    """The doc's package of a module name (None: a third-party module, not ruled here)."""
    parts = module.split(".")
    if parts[0] == "unlearn_core":
        if len(parts) > 1 and parts[1] in SUBPACKAGES:
            return parts[1]
        return "cli" if parts[1:2] == ["__main__"] else "core"
    if parts[0] == "nodes" and relative:
        return "nodes"
    if parts[0] in HOST_MODULES:  # absolute: ComfyUI's own top-level modules
        return "host"
    if parts[0] in TOOL_MODULES:
        return "tools"
    return None


def import_graph() -> dict[str, set[tuple[str, bool]]]:
    files = [*(ROOT / "unlearn_core").rglob("*.py"), *(ROOT / "nodes").rglob("*.py")]
    return {module_name(p): imported_modules(p) for p in files}


def doc_rules() -> dict[str, dict[str, str | None]]:
    """The doc's "may import" table: package -> {allowed package: the only module allowed to
    import it, or None for any module of the package}."""
    section = DOC.read_text().split("## The arrows allowed", 1)[1].split("\n## ", 1)[0]
    rules: dict[str, dict[str, str | None]] = {}
    for row in re.findall(r"^\| `(\w+)` \| (.*) \|$", section, re.M):
        allowed: dict[str, str | None] = {}
        for target, only in re.findall(r"`(\w+)`(?: \(only from `([^`]+)`\))?", row[1]):
            allowed[target] = module_name(ROOT / only) if only else None
        rules[row[0]] = allowed
    return rules


def violations(graph: dict[str, set[tuple[str, bool]]], rules: dict[str, dict[str, str | None]]
               ) -> list[str]:
    """Every import that the rules do not allow, as "source -> module (package -> package)"."""
    bad = []
    for source, imports in sorted(graph.items()):
        mine = package_of(source)
        for module, relative in sorted(imports):
            theirs = package_of(module, relative)
            if theirs is None or theirs == mine:
                continue
            if theirs in rules[mine] and rules[mine][theirs] in (None, source):
                continue
            bad.append(f"{source} -> {module} ({mine} -> {theirs})")
    return bad


def test_the_doc_states_a_rule_for_every_package():
    rules = doc_rules()
    assert set(rules) == {"core", "metrics", "attacks", "toyworld", "cli", "nodes"}, rules
    assert rules["metrics"] == {"core": None}
    assert rules["core"] == {"attacks": "unlearn_core.robust"}
    assert rules["nodes"]["host"] == "nodes.host"


def test_every_import_follows_the_arrows_of_the_doc():
    graph = import_graph()
    assert len(graph) > 60 and "unlearn_core.cli.erase" in graph and "nodes.host" in graph
    assert violations(graph, doc_rules()) == []


def test_relative_and_function_level_imports_are_seen():
    imports = dict(import_graph())
    assert ("unlearn_core.attacks.core", True) in imports["unlearn_core.robust"]
    assert ("unlearn_core.toyworld.world", True) in imports["unlearn_core.cli.probe"]  # in run()
    assert ("unlearn_core.conditioning", True) in imports["nodes.erase"]
    assert ("comfy.model_management", False) in imports["nodes.host"]


# One edge that breaks each rule of the doc; the checker must report each.
BREAKING = [
    ("unlearn_core.trainer", "unlearn_core.cli", "core -> cli"),
    ("unlearn_core.files", "unlearn_core.toyworld.model", "core -> toyworld"),
    ("unlearn_core.trainer", "unlearn_core.attacks.core", "core -> attacks (not robust)"),
    ("unlearn_core.sd1", "comfy.sd", "core -> host"),
    ("unlearn_core.result", "nodes.host", "core -> nodes"),
    ("unlearn_core.metrics.probe", "unlearn_core.toyworld.world", "metrics -> toyworld"),
    ("unlearn_core.metrics.report", "unlearn_core.attacks.core", "metrics -> attacks"),
    ("unlearn_core.metrics.scorers", "unlearn_core.cli.common", "metrics -> cli"),
    ("unlearn_core.attacks.core", "unlearn_core.toyworld", "attacks -> toyworld"),
    ("unlearn_core.attacks.config", "unlearn_core.cli", "attacks -> cli"),
    ("unlearn_core.toyworld.evaluate", "unlearn_core.cli.demo", "toyworld -> cli"),
    ("unlearn_core.toyworld.model", "folder_paths", "toyworld -> host"),
    ("unlearn_core.cli.erase", "nodes.widgets", "cli -> nodes"),
    ("unlearn_core.cli.common", "comfy.utils", "cli -> host"),
    ("nodes.erase", "unlearn_core.cli", "nodes -> cli"),
    ("nodes.metrics", "unlearn_core.toyworld.world", "nodes -> toyworld"),
    ("nodes.widgets", "comfy.model_management", "nodes -> host (not host.py)"),
    ("unlearn_core.metrics.images", "unlearn_testkit.tiny", "library -> tools"),
]


@pytest.mark.parametrize("source, target, rule", BREAKING, ids=[b[2] for b in BREAKING])
def test_each_rule_fails_on_a_graph_that_breaks_it(source, target, rule):
    graph = import_graph()
    relative = target.split(".")[0] in ("unlearn_core", "nodes") and not target.startswith("comfy")
    broken = {**graph, source: graph[source] | {(target, relative)}}
    found = violations(broken, doc_rules())
    assert len(found) == 1 and found[0].startswith(f"{source} -> {target} "), found


def test_only_one_node_module_touches_the_host():
    files = list((ROOT / "nodes").rglob("*.py"))
    touching = [p.name for p in files
                if any(package_of(m, rel) == "host" for m, rel in imported_modules(p))]
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
