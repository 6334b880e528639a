"""What README.md says that can be checked mechanically: the node table against the pack's own
node table (display names, class names, inputs, outputs), the CLI flags it shows against the
CLI's parsers, and the files, folders and example workflows it names. No ComfyUI needed: the node
modules import without it (``unlearn_testkit.pack``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from unlearn_testkit.pack import offline_module

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the README section whose heading is ``title`` (to the next heading)."""
    m = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", README, re.S | re.M)
    assert m, f"README has no section {title!r}"
    return m.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``, cells stripped."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]


def without_parentheses(text: str) -> str:
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\s*\([^()]*\)", "", text)
    return text


@pytest.fixture(scope="module")
def registry():
    return offline_module("nodes.registry")


def node_rows() -> dict[str, tuple[str, str, str]]:
    """class name -> (display name, inputs cell, outputs cell) from the README's node table."""
    out = {}
    for display_cell, inputs, outputs in table_rows(section("Nodes")):
        m = re.fullmatch(r"(.+) \(`(\w+)`\)", display_cell)
        assert m, display_cell
        out[m.group(2)] = (m.group(1), inputs, outputs)
    return out


def test_node_table_names_every_node_by_its_display_name(registry):
    rows = node_rows()
    assert set(rows) == set(registry.NODE_CLASS_MAPPINGS)
    for cls, (display, _, _) in rows.items():
        assert display == registry.NODE_DISPLAY_NAME_MAPPINGS[cls], cls


def test_node_table_outputs_and_inputs_are_the_nodes(registry):
    for cls, (_, inputs, outputs) in node_rows().items():
        node = registry.NODE_CLASS_MAPPINGS[cls]
        listed = [o.strip() for o in without_parentheses(outputs).split(",")]
        assert tuple(listed) == tuple(node.RETURN_NAMES), cls
        try:
            spec = node.INPUT_TYPES()
        except ModuleNotFoundError:  # its widget lists come from ComfyUI's folders: read the source
            source = Path(sys.modules[node.__module__].__file__).read_text(encoding="utf-8")
            names = set(re.findall(r'"(\w+)":', source))
        else:
            names = {*spec.get("required", {}), *spec.get("optional", {})}
        cell = without_parentheses(inputs.replace("optional ", ""))
        words = [w.strip() for w in re.split(r"[,;]", cell)]
        named = [w for w in words if re.fullmatch(r"[a-z][a-z0-9_]*", w)]
        assert named, cls
        assert set(named) <= names, (cls, set(named) - names)


def test_metric_table_names_nodes_by_their_display_names(registry):
    displays = set(registry.NODE_DISPLAY_NAME_MAPPINGS.values())
    for row in table_rows(section("Measuring an erasure")):
        node = row[-1]
        if node not in ("—", "") and not node.startswith("`unlearn"):
            assert node in displays, node


# -- CLI flags ---------------------------------------------------------------------------------

def code_text() -> list[str]:
    """Every code block and inline code span of the README, continuation lines joined."""
    blocks = re.findall(r"```\w*\n(.*?)```", README, re.S)
    rest = re.sub(r"```\w*\n.*?```", "", README, flags=re.S)
    spans = re.findall(r"`([^`]+)`", rest.replace("\n", " "))
    return [b.replace("\\\n", " ") for b in blocks] + spans


def parser_flags() -> dict[str, set[str]]:
    from unlearn_core.cli import command_parsers

    return {name: {s for a in p._actions for s in a.option_strings}
            for name, p in command_parsers().items()}


def test_cli_commands_in_the_readme_use_real_flags():
    flags = parser_flags()
    seen = 0
    for text in code_text():
        for line in text.splitlines():
            for m in re.finditer(r"(?<![\w/-])unlearn (\w+)((?: +(?:\"[^\"]*\"|[^\s|;&]+))*)", line):
                command, args = m.group(1), m.group(2)
                if command not in flags:
                    pytest.fail(f"README shows `unlearn {command}`, which is no command")
                used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", args))
                assert used <= flags[command], (command, used - flags[command])
                seen += 1
    assert seen >= 5


def test_flags_named_in_the_cli_section_are_erase_flags():
    erase = parser_flags()["erase"]
    spans = re.findall(r"`([^`]+)`", section("Erasing from a real SD-1.x model (CLI)"))
    used = {f for span in spans for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}
    used |= {"--recipe"}  # "unlearn erase --recipe NAME" in "The algorithm"
    assert used and used <= erase, used - erase


def test_benchmark_scripts_take_the_flags_shown():
    for script, args in re.findall(r"python (benchmarks/\w+\.py)([^`]*)`", README):
        source = (ROOT / script).read_text(encoding="utf-8")
        for flag in re.findall(r"--[a-z][a-z0-9-]*", args):
            assert f'"{flag}"' in source, (script, flag)


# -- files -------------------------------------------------------------------------------------

TOP = ("docs/", "scripts/", "benchmarks/", "nodes/", "tests/", "unlearn_core/", "example_workflows/",
       ".ci/")


def test_files_and_folders_named_exist():
    paths = set(re.findall(r"\]\(([^)#]+)\)", README))  # links and images
    for span in re.findall(r"`([^`\s]+)`", README):
        if span.startswith(TOP):
            paths.add(span)
    paths.add("scripts/test.sh")
    assert len(paths) > 10
    for p in sorted(paths):
        if p.startswith("http"):
            continue
        assert list(ROOT.glob(p.rstrip("/"))), p
    # the toy world's assets are named relative to their package
    assert (ROOT / "unlearn_core" / "toyworld" / "assets" / "HASHES.json").is_file()


def test_example_workflows_listed_are_the_folder():
    text = section("Example workflows (`example_workflows/`)")
    listed = set(re.findall(r"`(\w+)`", text.split("Each draws")[0]))
    present = {p.stem for p in (ROOT / "example_workflows").glob("*.json")}
    assert listed == present, (listed ^ present)
