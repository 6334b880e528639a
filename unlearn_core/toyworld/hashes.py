"""The toy world's committed assets and their sha256 hashes (``assets/HASHES.json``).

Each asset is written by a script under ``scripts/`` with a fixed seed; the hash file records
the digest, size and the script that made it, so a test can check the files on disk are the ones
the scripts wrote and nobody retrains to use them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
HASHES_FILE = ASSETS_DIR / "HASHES.json"


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded_hashes() -> dict[str, dict]:
    """{file name: {"sha256", "bytes", "script", ...}} from HASHES.json ({} if absent)."""
    return json.loads(HASHES_FILE.read_text()) if HASHES_FILE.exists() else {}


def record_hash(path: str | Path, **info: object) -> str:
    """Hash an asset under ``assets/`` and record it in HASHES.json; returns the digest."""
    path = Path(path)
    digest = sha256(path)
    hashes = recorded_hashes()
    hashes[path.name] = {"sha256": digest, "bytes": path.stat().st_size, **info}
    HASHES_FILE.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return digest


def asset_path(name: str, verify: bool = False) -> Path:
    """Path of a committed asset; with ``verify``, raise if it is missing or its hash differs."""
    path = ASSETS_DIR / name
    if verify:
        from ..errors import FileFormatError

        if not path.exists():
            raise FileFormatError(
                f"toy world asset {name} is missing from {ASSETS_DIR}. Fix: reinstall Unlearn, or "
                "regenerate it with the script named in assets/HASHES.json."
            )
        expected = recorded_hashes().get(name, {}).get("sha256")
        actual = sha256(path)
        if expected != actual:
            raise FileFormatError(
                f"toy world asset {name} has sha256 {actual}, but HASHES.json records {expected}. "
                "Fix: restore the committed file (git checkout), or rerun its script, which "
                "updates HASHES.json."
            )
    return path
