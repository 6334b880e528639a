"""Erasure files: kohya-format LoRA (``.lora_down/.lora_up/.alpha``) or full deltas (``.diff``),
safetensors with the config, versions and base-weights hash in the header metadata.

A full delta compresses into a LoRA by truncated SVD (Eckart-Young: the best rank-r approximation
in Frobenius norm), reporting each layer's relative reconstruction error |dW - dW_r| / |dW|.
Writing goes to a temporary file first and is renamed into place, so a failed or interrupted
write never leaves a half-written file; an existing file is never overwritten unless asked.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .delta import Delta
from .errors import ConfigError, FileFormatError, OutputExistsError
from .keys import KOHYA_PREFIX, kohya_lookup, kohya_name

Tensor = torch.Tensor

FORMAT_TAG = "unlearn.erasure"


def svd_compress(delta: Tensor, rank: int) -> tuple[Delta, float]:
    """Best rank-``rank`` LoRA (alpha = rank, so scale 1) of a dense delta; and its relative error."""
    shape = delta.shape
    mat = delta.reshape(shape[0], -1).double()
    limit = min(mat.shape)
    if rank < 1:
        raise ConfigError("svd_rank", rank, "must be >= 1", "choose a rank of 1 or more")
    rank = min(rank, limit)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    sqrt_s = s[:rank].sqrt()
    up = u[:, :rank] * sqrt_s  # (out, r)
    down = sqrt_s[:, None] * vh[:rank]  # (r, in*k*k)
    approx = up @ down
    denom = mat.norm()
    err = float((mat - approx).norm() / denom) if denom > 0 else 0.0
    kernel = shape[2:]
    return (
        Delta(
            down=down.reshape(rank, *(shape[1:] if kernel else (shape[1],))).float(),
            up=up.reshape(shape[0], rank, *([1] * len(kernel))).float(),
            alpha=float(rank),
        ),
        err,
    )


def compress_deltas(deltas: Mapping[str, Delta], rank: int
                    ) -> tuple[dict[str, Delta], dict[str, float]]:
    """SVD-compress every layer to a LoRA of ``rank``; returns the LoRAs and per-layer errors."""
    out, errors = {}, {}
    for name, d in deltas.items():
        out[name], errors[name] = svd_compress(d.weight(), rank)
    return out, errors


def to_state_dict(deltas: Mapping[str, Delta]) -> dict[str, Tensor]:
    """kohya keys -> tensors (float32, contiguous)."""
    sd: dict[str, Tensor] = {}
    for name, d in deltas.items():
        key = kohya_name(name)
        if d.is_lora:
            sd[f"{key}.lora_down.weight"] = d.down.float().contiguous()
            sd[f"{key}.lora_up.weight"] = d.up.float().contiguous()
            sd[f"{key}.alpha"] = torch.tensor(float(d.alpha if d.alpha is not None else d.rank))
        else:
            sd[f"{key}.diff"] = d.diff.float().contiguous()
    return sd


def check_output_path(path: str | os.PathLike, overwrite: bool, field: str = "output") -> Path:
    """Refuse an existing file unless ``overwrite``; the folder must exist. Cheap: call early."""
    p = Path(path)
    if p.suffix != ".safetensors":
        raise ConfigError(field, str(p), "the file name must end in .safetensors",
                          "name the output like 'my_erasure.safetensors'")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{field} = {str(p)!r}: the file exists. Fix: choose another name "
                                "or pass overwrite (--overwrite) to replace it.")
    if not p.parent.exists():
        raise ConfigError(field, str(p), "its folder does not exist", "create the folder first")
    return p


def save_erasure(path: str | os.PathLike, deltas: Mapping[str, Delta], metadata: Mapping[str, Any],
                 overwrite: bool = False) -> Path:
    """Write ``deltas`` (canonical names) as a kohya LoRA/diff safetensors file, atomically."""
    p = check_output_path(path, overwrite)
    if not deltas:
        raise ConfigError("deltas", {}, "nothing to save", "run an erasure first")
    for name, d in deltas.items():
        t = d.weight()
        if not torch.isfinite(t).all():
            raise FileFormatError(f"layer {name} has non-finite values; refusing to save")
    header = {"format": FORMAT_TAG, "ss_network_module": "networks.lora"}
    for k, v in metadata.items():
        header[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=p.parent)
    os.close(fd)
    try:
        save_file(to_state_dict(deltas), tmp, metadata=header)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


@dataclass
class LoadedErasure:
    deltas: dict[str, Delta]  # canonical names
    metadata: dict[str, Any]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_erasure(path: str | os.PathLike, layer_shapes: Mapping[str, tuple[int, ...]]
                 ) -> LoadedErasure:
    """Read a file written by ``save_erasure`` (or any kohya LoRA/diff file on the same layers).

    ``layer_shapes``: canonical layer name -> weight shape of the model it will apply to. Keys and
    shapes are checked, and every mismatch is named.
    """
    p = Path(path)
    if not p.is_file():
        raise FileFormatError(f"{str(p)!r} does not exist. Fix: give the path of a .safetensors file.")
    try:
        sd = load_file(str(p))
        meta = read_metadata(p)
    except (SafetensorError, OSError, ValueError) as e:
        raise FileFormatError(f"{str(p)!r} is not a safetensors file ({e}). Fix: give a "
                              ".safetensors LoRA or diff file.") from e
    lookup = kohya_lookup(layer_shapes)
    groups: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, t in sd.items():
        module, _, part = key.partition(".")
        if not module.startswith(KOHYA_PREFIX) or module not in lookup:
            unknown.append(key)
            continue
        groups.setdefault(lookup[module], {})[part] = t
    if unknown:
        raise FileFormatError(f"{len(unknown)} keys of {p.name} match no layer of this model, "
                              f"e.g. {unknown[:3]}. Fix: use a file made for an SD-1.x UNet.")
    deltas: dict[str, Delta] = {}
    bad = []
    for name, parts in groups.items():
        shape = tuple(layer_shapes[name])
        if "diff" in parts:
            d = Delta(diff=parts["diff"].float())
        elif "lora_down.weight" in parts and "lora_up.weight" in parts:
            alpha = float(parts["alpha"]) if "alpha" in parts else None
            d = Delta(down=parts["lora_down.weight"].float(), up=parts["lora_up.weight"].float(),
                      alpha=alpha)
        else:
            bad.append(f"{name}: incomplete ({sorted(parts)})")
            continue
        try:
            got = tuple(d.weight().shape)
        except RuntimeError as e:
            bad.append(f"{name}: {e}")
            continue
        if got != shape:
            bad.append(f"{name}: delta {got} vs layer {shape}")
            continue
        deltas[name] = d
    if bad:
        raise FileFormatError(f"{len(bad)} layers of {p.name} do not fit this model: "
                              + "; ".join(bad[:5]))
    return LoadedErasure(deltas=deltas, metadata=meta)
