"""The code stays readable in one screen: no function or method in ``unlearn_core/`` or
``nodes/`` is longer than 80 lines (from its ``def`` line, decorators excluded, to its last line,
docstring and comments included)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 80


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    found = []
    for package in ("unlearn_core", "nodes"):
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > limit:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                                     f"({length} lines)")
    return found


def test_no_function_is_longer_than_80_lines():
    assert long_functions() == []


def test_the_check_sees_a_long_method_and_passes_a_short_one(tmp_path):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "unlearn_core").mkdir()

    def source(lines: int) -> str:  # a method of `lines` lines, def line included
        return "class A:\n    def f(self):\n" + "".join(
            f"        x{i} = {i}\n" for i in range(lines - 1))

    (tmp_path / "nodes" / "short.py").write_text(source(LIMIT))
    (tmp_path / "unlearn_core" / "long.py").write_text(source(LIMIT + 1))
    assert long_functions(tmp_path) == [f"unlearn_core/long.py:2 f ({LIMIT + 1} lines)"]
