"""Saving an erasure as a LoRA file and applying one to a MODEL.

The file is kohya's format with diffusers layer names (``lora_unet_down_blocks_0_..._to_k``), the
one format that loads in ComfyUI (2024 and 2025), A1111/Forge and diffusers (DESIGN §4.9): the
stock LoraLoaderModelOnly finds it in the first ``loras`` folder. Full deltas are stored as
``.diff`` (ComfyUI and A1111; not diffusers) unless ``svd_rank`` compresses them into a LoRA.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ..unlearn_core.errors import OutputExistsError
from ..unlearn_core.files import compress_deltas, save_erasure
from . import host
from .erase import CATEGORY, ERASURE

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "unlearn_erasure"
_UNSAFE = re.compile(r"[^A-Za-z0-9 _.\-]+")


def sanitize_prefix(prefix: str) -> str:
    """A file-name stem with no folder in it: path parts joined by '_', no '..', no hidden file.

    ``"../../x"`` -> ``"x"``, ``"styles/van gogh"`` -> ``"styles_van gogh"``, ``""`` -> default.
    """
    text = str(prefix or "").strip()
    if text.lower().endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    parts = [p for p in re.split(r"[\\/]+", text) if p.strip() not in ("", ".", "..")]
    stem = "_".join(parts)
    stem = _UNSAFE.sub("_", stem)
    stem = re.sub(r"\.{2,}", ".", stem).strip(" .")
    return stem[:100] or DEFAULT_PREFIX


def unique_path(folder: Path, stem: str) -> Path:
    """``folder/stem_00001.safetensors``, the first counter not taken (never an existing file)."""
    counter = 1
    while True:
        path = folder / f"{stem}_{counter:05d}.safetensors"
        if not path.exists():
            return path
        counter += 1


class UnlearnSaveLoRA:
    """Write the erasure as a LoRA file the stock LoRA loaders read."""

    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name inside the loras folder.",)
    DESCRIPTION = ("Saves the erasure into the first 'loras' folder (kohya format, diffusers "
                   "layer names), so Load LoRA / LoraLoaderModelOnly finds it. Never overwrites: "
                   "a counter is added. The file's metadata holds the full config and the base "
                   "weights' hash.")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "erasure": (ERASURE, {"tooltip": "The erasure from an Erase Concept node."}),
            "filename_prefix": ("STRING", {"default": DEFAULT_PREFIX, "tooltip": (
                "File name start; a counter and .safetensors are added. Folders and '..' are "
                "removed: files always go into the loras folder.")}),
            "svd_rank": ("INT", {"default": 0, "min": 0, "max": 1280, "tooltip": (
                "0 = save as trained (a full delta is stored as .diff: ComfyUI and A1111 only). "
                "N = compress every layer to a rank-N LoRA by SVD (smaller; loads in diffusers "
                "too; the worst relative error goes into the metadata).")}),
        }}

    def save(self, erasure, filename_prefix, svd_rank):
        deltas = erasure.deltas
        metadata: dict[str, Any] = dict(erasure.metadata)
        metadata["ss_base_model_version"] = "sd_v1"
        metadata["unlearn_saved_by"] = "ComfyUI UnlearnSaveLoRA"
        if svd_rank > 0:
            deltas, errors = compress_deltas(deltas, svd_rank)
            metadata["svd_rank"] = svd_rank
            metadata["svd_max_relative_error"] = max(errors.values())
        folder = host.loras_folder()
        folder.mkdir(parents=True, exist_ok=True)
        stem = sanitize_prefix(filename_prefix)
        for _ in range(100):  # another save may take the name between the check and the write
            path = unique_path(folder, stem)
            try:
                save_erasure(path, deltas, metadata, overwrite=False)
                break
            except OutputExistsError:
                continue
        else:
            raise OutputExistsError(f"filename_prefix = {filename_prefix!r}: no free file name. "
                                    "Fix: choose another prefix.")
        log.info("Unlearn: saved %d layers to %s", len(deltas), path)
        return {"ui": {"text": [path.name]}, "result": (path.name,)}


class UnlearnApplyErasure:
    """Patch an erasure onto a MODEL at a chosen strength."""

    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("A copy of the MODEL with the erasure patched on.",)
    DESCRIPTION = ("Adds strength x the erasure's weight change to a copy of the model: 1 = as "
                   "trained, 0 = the model unchanged, negative = the other way (as with LoRAs).")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD-1.x model to patch (it is not modified)."}),
            "erasure": (ERASURE, {"tooltip": "The erasure from an Erase Concept node."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05,
                                   "tooltip": "1 = as trained; 0 = no change; negative allowed."}),
        }}

    def apply(self, model, erasure, strength):
        return (host.patched_clone(model, erasure.deltas, float(strength)),)


NODE_CLASS_MAPPINGS = {
    "UnlearnSaveLoRA": UnlearnSaveLoRA,
    "UnlearnApplyErasure": UnlearnApplyErasure,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UnlearnSaveLoRA": "Save Erasure as LoRA (Unlearn)",
    "UnlearnApplyErasure": "Apply Erasure (Unlearn)",
}
