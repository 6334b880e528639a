"""The wheel holds the whole library: every ``unlearn_core`` package and every asset the code loads.

The test environment installs the project editable (imports read the source folder), so no other
test would notice a subpackage or an asset that a plain ``pip install`` leaves out. This one builds
the wheel offline (``pip wheel --no-deps --no-build-isolation --no-index``: the setuptools already
installed, no download) from a copy of the sources, so a ``build/`` folder left in the checkout
cannot supply a file the configuration misses, then reads the wheel and runs from it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unlearn_core"


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix != ".pyc")


def _relative(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out)],
        capture_output=True, text=True, timeout=180, env=env, cwd=source,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def loaded_assets() -> list[Path]:
    """Every file the toy world reads from its assets folder, by the code's own paths: the three
    weight files (``asset_path``), the hash record that ``asset_path(verify=True)`` reads, every
    file that record lists, and the tiny CLIP's open_clip config."""
    from unlearn_core.toyworld import JUDGES_FILE, TINY_CLIP_FILE, TOY_MODEL_FILE
    from unlearn_core.toyworld.clip import CONFIG_PATH
    from unlearn_core.toyworld.hashes import HASHES_FILE, asset_path, recorded_hashes

    named = [TOY_MODEL_FILE, JUDGES_FILE, TINY_CLIP_FILE, *recorded_hashes()]
    return sorted({asset_path(n) for n in named} | {HASHES_FILE, CONFIG_PATH})


def test_every_unlearn_core_package_and_module_is_in_the_wheel(names):
    packages = [p for p in _sources(PACKAGE) if p.name == "__init__.py"]
    expected = {_relative(p) for p in _sources(PACKAGE) if p.suffix == ".py"}
    # not vacuous: the packages the former fixed list left out are among those checked
    assert {"unlearn_core/attacks/__init__.py", "unlearn_core/cli/__init__.py"} <= {_relative(p) for p in packages}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}: pyproject.toml's package discovery misses them"


def test_every_asset_the_toy_world_loads_is_in_the_wheel_unchanged(wheel, names):
    assets = loaded_assets()
    assert len(assets) >= 5 and all(p.is_file() for p in assets), assets
    missing = [_relative(p) for p in assets if _relative(p) not in names]
    assert not missing, f"the wheel lacks the assets {missing}: list them as package data in pyproject.toml"
    with zipfile.ZipFile(wheel) as z:
        for path in assets:
            digest = hashlib.sha256(z.read(_relative(path))).hexdigest()
            assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), _relative(path)


def test_the_wheel_holds_only_the_library_and_its_command(wheel, names):
    tops = {n.split("/", 1)[0] for n in names}
    (dist_info,) = [t for t in tops if t.endswith(".dist-info")]
    assert tops == {"unlearn_core", dist_info}, tops  # nodes/, tests/, benchmarks/, scripts/ stay out
    with zipfile.ZipFile(wheel) as z:
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert "unlearn = unlearn_core.cli:main" in entry_points


def test_the_unpacked_wheel_imports_every_package_and_verifies_its_assets(wheel, tmp_path):
    """Run from the unpacked wheel (a pure-Python wheel installs by unzipping), with the checkout
    off the path: every package imports from there, each asset passes its hash check there, and
    the ``unlearn`` command's parser answers."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    script = (
        "import importlib, pathlib, sys\n"
        # an editable install's finder would serve what the wheel lacks from the checkout
        "sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "import unlearn_core\n"
        "site = pathlib.Path(sys.argv[1]).resolve()\n"
        "assert pathlib.Path(unlearn_core.__file__).resolve().is_relative_to(site), unlearn_core.__file__\n"
        "packages = [p.parent.relative_to(site) for p in (site / 'unlearn_core').rglob('__init__.py')]\n"
        "for p in packages:\n"
        "    importlib.import_module('.'.join(p.parts))\n"
        "from unlearn_core.toyworld.hashes import asset_path, recorded_hashes\n"
        "for name in recorded_hashes():\n"
        "    assert asset_path(name, verify=True).resolve().is_relative_to(site), name\n"
        "assert (site / 'unlearn_core/toyworld/assets/unlearn-toy-clip.json').is_file()\n"
        "outside = [m.__name__ for m in list(sys.modules.values()) if m.__name__.startswith('unlearn_core')\n"
        "           and not pathlib.Path(m.__file__).resolve().is_relative_to(site)]\n"
        "assert not outside, outside\n"
        "from unlearn_core.cli import build_parser\n"
        "build_parser().parse_args(['erase', '--help'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    proc = subprocess.run([sys.executable, "-c", script, str(site)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "usage: unlearn erase" in proc.stdout
