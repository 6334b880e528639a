"""Erasure files: kohya-format LoRA (``.lora_down/.lora_up/.alpha``) or full deltas (``.diff``),
safetensors with the config, versions and base-weights hash in the header metadata.

A full delta compresses into a LoRA by truncated SVD (Eckart-Young: the best rank-r approximation
in Frobenius norm), reporting each layer's relative reconstruction error |dW - dW_r| / |dW|.
Writing goes to a temporary file first and is published in one step, so a failed or interrupted
write never leaves a half-written file. Without ``overwrite`` the finished file is hard-linked to
its name, which fails if the name exists -- also when another process took it after our check --
so an existing file is never replaced unless asked. Files get the mode a new file gets under the
process's umask (as ``open()`` would), so another account reading the LoRA folder can read them.

Besides our own metadata (``format``, the config, versions, the base weights' hash) the header
carries kohya's ``ss_*`` training fields that apply (``kohya_metadata``), as the kohya-format
readers (A1111/Forge, ComfyUI managers, LoRA inspectors) expect them.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .delta import Delta
from .errors import ConfigError, FileFormatError, OutputExistsError, UnlearnError
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
    """SVD-compress every layer to a LoRA of ``rank`` (a layer smaller than that keeps its full
    rank, exactly); returns the LoRAs and per-layer errors."""
    out, errors = {}, {}
    for name, d in deltas.items():
        out[name], errors[name] = svd_compress(d.weight(), rank)
    return out, errors


def svd_metadata(requested: int, compressed: Mapping[str, Delta], errors: Mapping[str, float]
                 ) -> tuple[dict[str, Any], str | None]:
    """The metadata of an SVD compression, with the ranks actually written; and a note for the
    user when some layers are smaller than ``requested`` (None otherwise).

    ``svd_rank`` is the rank written: ``requested`` when every layer took it, else the largest
    rank written, with ``svd_rank_requested`` and each smaller layer's rank in
    ``svd_layer_ranks``.
    """
    ranks = {name: d.rank for name, d in compressed.items()}
    meta: dict[str, Any] = {"svd_rank": max(ranks.values(), default=requested),
                            "svd_max_relative_error": max(errors.values(), default=0.0)}
    cut = {name: r for name, r in ranks.items() if r < requested}
    if not cut:
        return meta, None
    meta["svd_rank_requested"] = requested
    meta["svd_layer_ranks"] = cut
    low, high = min(cut.values()), max(cut.values())
    span = str(low) if low == high else f"{low}-{high}"
    note = (f"svd_rank {requested} is more than {len(cut)} of {len(ranks)} layers have: those were "
            f"stored at their full rank ({span}), exactly; the file records the ranks written")
    return meta, note


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


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def kohya_metadata(deltas: Mapping[str, Delta], metadata: Mapping[str, Any]) -> dict[str, str]:
    """kohya's ``ss_*`` header fields that apply to this erasure, as strings (kohya's own form).

    The network: module, dim and alpha (LoRA files; ``Dynamic`` where layers differ, as kohya's
    resize script writes), conv dim/alpha of 3x3 convolutions in ``ss_network_args``; the base
    (SD 1.x); and, from ``metadata["config"]``, the training settings kohya records (steps,
    learning rate, optimizer, batch, seed, ...). A full-delta ``.diff`` file has no rank, so no
    dim or alpha. Nothing time- or machine-dependent: the same erasure gives the same file.
    """
    meta = {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
            "ss_v2": "False"}
    loras = [d for d in deltas.values() if d.is_lora]
    if loras and len(loras) == len(deltas):
        def conv3(d: Delta) -> bool:
            return d.down.dim() == 4 and tuple(d.down.shape[2:]) != (1, 1)

        def same(values: set) -> str:
            return str(values.pop()) if len(values) == 1 else "Dynamic"

        def alpha(d: Delta) -> float:
            return float(d.alpha if d.alpha is not None else d.rank)

        plain = [d for d in loras if not conv3(d)]
        conv = [d for d in loras if conv3(d)]
        main = plain or conv
        meta["ss_network_dim"] = same({d.rank for d in main})
        meta["ss_network_alpha"] = same({alpha(d) for d in main})
        if conv:
            meta["ss_network_args"] = json.dumps({"conv_dim": same({d.rank for d in conv}),
                                                  "conv_alpha": same({alpha(d) for d in conv})})
    config = metadata.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if not isinstance(config, Mapping):
        return meta
    concepts = ", ".join(str(c) for c in config.get("concepts", ()))
    method = config.get("method", "train")
    if method == "uce":
        meta["ss_training_comment"] = f"Unlearn: UCE closed-form erasure of {concepts}"
    else:
        meta["ss_training_comment"] = (f"Unlearn: {config.get('objective', 'sdd')} erasure of "
                                       f"{concepts} ({config.get('loss', 'l2')} loss)")
        steps, lr = config.get("steps"), config.get("lr")
        batch = config.get("batch_size")
        # the states of a step: a group of batch_size per trajectory
        total = batch * config.get("trajectories_per_step", 1) if isinstance(batch, int) else batch
        px = 8 * int(config.get("resolution", 64))
        meta.update({
            "ss_max_train_steps": str(steps), "ss_steps": str(steps),
            "ss_learning_rate": str(lr), "ss_unet_lr": str(lr),
            "ss_lr_scheduler": "constant", "ss_lr_warmup_steps": "0",
            "ss_optimizer": (f"torch.optim.adamw.AdamW(weight_decay={config.get('weight_decay')},"
                             "betas=(0.9, 0.999))"),
            "ss_max_grad_norm": str(config.get("grad_clip")),
            "ss_batch_size_per_device": str(batch), "ss_total_batch_size": str(total),
            "ss_gradient_accumulation_steps": "1",
            "ss_gradient_checkpointing": str(bool(config.get("gradient_checkpointing", False))),
            "ss_resolution": f"({px}, {px})",
        })
    if "seed" in config:
        meta["ss_seed"] = str(config["seed"])
    return meta


def _new_temp_file(folder: Path, suffix: str = ".safetensors") -> Path:
    """An empty, new, hidden file in ``folder``, created with mode 0o666 less the umask."""
    while True:
        tmp = folder / f".tmp-{secrets.token_hex(8)}{suffix}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def replace_whole(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` whole or not at all: ``write`` fills a new hidden file beside it, which then
    takes the name in one step (replacing what was there); on any failure it is removed."""
    path = Path(path)
    tmp = _new_temp_file(path.parent, path.suffix)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _taken(p: Path) -> OutputExistsError:
    return OutputExistsError(f"output = {str(p)!r}: the file exists (it was created while this "
                             "one was being written). Fix: choose another name, or pass overwrite "
                             "(--overwrite) to replace it.")


def _publish(tmp: Path, p: Path, overwrite: bool) -> None:
    """Give the finished ``tmp`` the name ``p`` in one step; never replace ``p`` unless asked."""
    if overwrite:
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p)  # fails if p exists, whoever created it and whenever
        return
    except FileExistsError:
        raise _taken(p) from None
    except OSError:
        pass  # this file system has no hard links: claim the name exclusively instead
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise _taken(p) from None
    os.close(fd)
    try:
        os.replace(tmp, p)
    except OSError:
        os.unlink(p)
        raise


def save_erasure(path: str | os.PathLike, deltas: Mapping[str, Delta], metadata: Mapping[str, Any],
                 overwrite: bool = False) -> Path:
    """Write ``deltas`` (canonical names) as a kohya LoRA/diff safetensors file, atomically.

    Without ``overwrite`` an existing file is never replaced, even one created by another
    process while this one is writing: OutputExistsError, and nothing of ours is left behind.
    """
    p = check_output_path(path, overwrite)
    if not deltas:
        raise ConfigError("deltas", {}, "nothing to save", "run an erasure first")
    for name, d in deltas.items():
        t = d.weight()
        if not torch.isfinite(t).all():
            raise FileFormatError(f"layer {name} has non-finite values; refusing to save")
    header = {"format": FORMAT_TAG, **kohya_metadata(deltas, metadata)}
    for k, v in metadata.items():
        header[k] = _text(v)
    state = to_state_dict(deltas)
    tmp = _new_temp_file(p.parent)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # what open() gives a new file here (umask)
        save_file(state, str(tmp), metadata=header)
        os.chmod(tmp, mode)  # safetensors writes its files 0600 whatever the umask
        _publish(tmp, p, overwrite)
    except (OSError, SafetensorError) as e:
        if isinstance(e, OutputExistsError):
            raise
        raise UnlearnError(f"output = {str(p)!r}: could not write the file ({e}). Fix: check the "
                           "folder's free space and write permission.") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def save_erasure_beside(path: str | os.PathLike, deltas: Mapping[str, Delta],
                        metadata: Mapping[str, Any]) -> Path:
    """``save_erasure`` to the first free name beside ``path`` -- ``name-2.safetensors``,
    ``name-3.safetensors``, ... -- never over an existing file; returns the path written.

    For finished work whose name was taken while it was being made: keep the work, say where.
    """
    p = Path(path)
    for n in range(2, 10_000):
        candidate = p.with_name(f"{p.stem}-{n}{p.suffix}")
        if candidate.exists():
            continue
        try:
            return save_erasure(candidate, deltas, metadata, overwrite=False)
        except OutputExistsError:
            continue  # taken between the check and the write: try the next one
    raise OutputExistsError(f"output = {str(p)!r}: no free name beside it. Fix: choose another "
                            "name or folder.")


@dataclass
class LoadedErasure:
    deltas: dict[str, Delta]  # canonical names
    metadata: dict[str, Any]


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise FileFormatError(f"{str(path)!r} is not a readable safetensors file ({e}). Fix: give "
                              "a .safetensors file.") from e
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def _alpha(tensor: Tensor, name: str, file_name: str) -> float:
    """A LoRA's ``.alpha``: one finite number."""
    if tensor.numel() != 1:
        raise FileFormatError(f"{file_name}: layer {name} has an alpha of shape "
                              f"{tuple(tensor.shape)}; a LoRA alpha is one number. Fix: use an "
                              "undamaged LoRA file (re-save it).")
    value = float(tensor.reshape(()).double())
    if not math.isfinite(value):
        raise FileFormatError(f"{file_name}: layer {name} has alpha = {value}; it must be a finite "
                              "number. Fix: use an undamaged LoRA file (re-save it).")
    return value


def load_erasure(path: str | os.PathLike, layer_shapes: Mapping[str, tuple[int, ...]]
                 ) -> LoadedErasure:
    """Read a file written by ``save_erasure`` (or any kohya LoRA/diff file on the same layers).

    ``layer_shapes``: canonical layer name -> weight shape of the model it will apply to. Keys,
    shapes and values (finite numbers, one alpha per LoRA layer) are checked, and every mismatch
    is named: a file that loads is safe to apply.
    """
    p = Path(path)
    if p.is_dir():
        raise FileFormatError(f"{str(p)!r} is a directory, not a file. Fix: give the path of the "
                              ".safetensors file inside it.")
    if not p.is_file():
        raise FileFormatError(f"{str(p)!r} does not exist. Fix: give the path of a .safetensors file.")
    try:
        sd = load_file(str(p))
        meta = read_metadata(p)
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise FileFormatError(f"{str(p)!r} is not a safetensors file ({e}). Fix: give a "
                              ".safetensors LoRA or diff file.") from e
    if not sd:
        raise FileFormatError(f"{str(p)!r} holds no tensors: it is not an erasure. Fix: give a "
                              "LoRA or diff file saved by Unlearn (or kohya).")
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
            alpha = _alpha(parts["alpha"], name, p.name) if "alpha" in parts else None
            d = Delta(down=parts["lora_down.weight"].float(), up=parts["lora_up.weight"].float(),
                      alpha=alpha)
        else:
            bad.append(f"{name}: incomplete ({sorted(parts)})")
            continue
        try:
            weight = d.weight()
        except (RuntimeError, IndexError, ValueError, ZeroDivisionError) as e:
            bad.append(f"{name}: {e}")
            continue
        got = tuple(weight.shape)
        if got != shape:
            bad.append(f"{name}: delta {got} vs layer {shape}")
            continue
        if not torch.isfinite(weight).all():
            n = int((~torch.isfinite(weight)).sum())
            bad.append(f"{name}: {n} values are NaN or infinite")
            continue
        deltas[name] = d
    if bad:
        raise FileFormatError(f"{len(bad)} layers of {p.name} do not fit this model: "
                              + "; ".join(bad[:5]) + ". Fix: use an undamaged erasure made for "
                              "this model (SD-1.x).")
    return LoadedErasure(deltas=deltas, metadata=meta)
