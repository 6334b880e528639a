"""Saving an erasure as a LoRA file and applying one to a MODEL.

The file is kohya's format with diffusers layer names (``lora_unet_down_blocks_0_..._to_k``), the
format that ComfyUI (2024 and 0.3.64 trees) and diffusers load (tests/test_nodes_lora.py) and
A1111/Forge read (not tested; docs/COMFYUI_NOTES.md §4 has the key forms ComfyUI accepts): the
stock LoraLoaderModelOnly finds it in the first ``loras`` folder. Full deltas are stored as
``.diff`` (ComfyUI and A1111; not diffusers) unless ``svd_rank`` compresses them into a LoRA.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from pathlib import Path
from typing import Any

from ..unlearn_core.delta import check_strength
from ..unlearn_core.errors import ConfigError, OutputExistsError
from ..unlearn_core.files import compress_deltas, save_erasure, svd_metadata
from .erase import CATEGORY, ERASURE
from .lazy_host import host

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "unlearn_erasure"
# Characters no file name may hold on Windows, macOS or Linux (folders are split off before).
_RESERVED = set('<>:"/\\|?*')
_WINDOWS_DEVICES = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}
_MAX_STEM_BYTES = 200  # the counter and ".safetensors" fit in the 255-byte name limit


def _unsafe(ch: str) -> bool:
    # C*: control, format (invisible), surrogate, private, unassigned; Zl/Zp: line breaks
    return ch in _RESERVED or unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in (
        "Zl", "Zp")


def sanitize_prefix(prefix: str) -> str:
    """A file-name stem with no folder in it: path parts joined by '_', no '..', no hidden file.

    Letters and digits of every script stay (``"日本語 ünï"`` stays as typed); only what a file
    name cannot safely hold becomes '_': characters reserved on Windows (``<>:"|?*``), control
    and invisible format characters. ``"../../x"`` -> ``"x"``, ``"styles/van gogh"`` ->
    ``"styles_van gogh"``, ``""`` -> default.
    """
    text = unicodedata.normalize("NFC", str(prefix or "")).strip()
    if text.lower().endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    parts = [p for p in re.split(r"[\\/]+", text) if p.strip() not in ("", ".", "..")]
    stem = ""
    for ch in "_".join(parts):  # a run of unsafe characters becomes one '_'
        if not _unsafe(ch):
            stem += ch
        elif not stem.endswith("_"):
            stem += "_"
    stem = re.sub(r"\.{2,}", ".", stem).strip(" .")
    stem = stem[:100]
    while len(stem.encode("utf-8")) > _MAX_STEM_BYTES:
        stem = stem[:-1]
    stem = stem.rstrip(" .")
    if stem.split(".")[0].upper() in _WINDOWS_DEVICES:
        stem = "_" + stem
    return stem or DEFAULT_PREFIX


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
        metadata["unlearn_saved_by"] = "ComfyUI UnlearnSaveLoRA"
        if svd_rank > 0:
            deltas, errors = compress_deltas(deltas, svd_rank)
            svd_meta, note = svd_metadata(svd_rank, deltas, errors)
            metadata.update(svd_meta)
            if note:
                log.warning("Unlearn: %s", note)
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


STRENGTH_MIN, STRENGTH_MAX = -10.0, 10.0


def strength_problem(strength: Any, input_name: str = "strength") -> str | None:
    """A message for VALIDATE_INPUTS when ``strength`` is not a finite number in the widget's
    range (None when fine or linked)."""
    if strength is None:
        return None
    try:
        value = check_strength(strength, input_name)
    except ConfigError as e:
        return str(e)
    if not STRENGTH_MIN <= value <= STRENGTH_MAX:
        return (f"{input_name} = {value!r}: outside {STRENGTH_MIN:g}..{STRENGTH_MAX:g}. Fix: give "
                "a strength in that range (1 = as trained, 0 = no change).")
    return None


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
            "strength": ("FLOAT", {"default": 1.0, "min": STRENGTH_MIN, "max": STRENGTH_MAX,
                                   "step": 0.05,
                                   "tooltip": "1 = as trained; 0 = no change; negative allowed."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, strength=None):
        # ComfyUI's range check lets NaN through (every comparison with NaN is false), and hosts
        # that call this skip their own range check for the inputs named here: check both.
        return strength_problem(strength) or True

    def apply(self, model, erasure, strength):
        strength = check_strength(strength)  # also for hosts that skip VALIDATE_INPUTS
        return (host.patched_clone(model, erasure.deltas, strength),)


NODE_CLASS_MAPPINGS = {
    "UnlearnSaveLoRA": UnlearnSaveLoRA,
    "UnlearnApplyErasure": UnlearnApplyErasure,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UnlearnSaveLoRA": "Save Erasure as LoRA (Unlearn)",
    "UnlearnApplyErasure": "Apply Erasure (Unlearn)",
}
