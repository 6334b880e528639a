"""The toy world's asset files: safetensors whose metadata ``format`` tag says what they hold
(the toy model, the judges, the tiny CLIP), read through one function that refuses any other file
with the tag it found and the script that writes the right one."""

from __future__ import annotations

from pathlib import Path

import torch


def read_tagged(path: str | Path, tag: str, what: str, script: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a file tagged ``format = tag``; FileFormatError otherwise, naming
    ``what`` the file should be and the ``script`` that writes it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != tag:
            from ..errors import FileFormatError

            raise FileFormatError(
                f"{path} is not an Unlearn {what} file (metadata format = "
                f"{metadata.get('format')!r}, expected {tag!r}). Fix: pass the file written "
                f"by {script}.")
        return {k: f.get_tensor(k) for k in f.keys()}, metadata
