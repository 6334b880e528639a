"""The toy world: a small, honest world in which an erasure can be measured on CPU.

Procedural 16x16 images of shapes x colours x textures with captions (``dataset``), a tiny
text-to-image model whose UNet is diffusers' ``UNet2DConditionModel`` (``model``), judges that say
what a generated image shows (``judges``), a tiny open_clip CLIP (``clip``), and the loop that
generates and judges (``generation``). The trained weights ship as assets with recorded hashes;
the scripts under ``scripts/`` that made them are seeded.

    from unlearn_core.toyworld import load_toy_model, load_judges, generate, judge
    model, judges = load_toy_model(), load_judges()
    images = generate(model, ["a red circle, striped"] * 4, seeds=[0, 1, 2, 3])
    judge(images, judges)  # {"shape": (4,), "colour": (4,), "texture": (4,)}
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _lazy
from .hashes import ASSETS_DIR, asset_path
from .settings import AXES, COLOURS, SHAPES, TEXTURES

TOY_MODEL_FILE = "toy_model.safetensors"
JUDGES_FILE = "judges.safetensors"
TINY_CLIP_FILE = "tiny_clip.safetensors"

# public name -> submodule that defines it; imported on first use (torch)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ToyBatch", "caption", "make_batch", "make_rejects"), "dataset"),
    **dict.fromkeys(("PromptSet", "accuracy", "all_prompts", "generate", "initial_noise",
                     "judged_accuracy"), "generation"),
    **dict.fromkeys(("JUDGE_CLASSES", "NONE", "Judge", "judge", "judge_probs"), "judges"),
    **dict.fromkeys(("ToyModel", "WordTokenizer"), "model"),
}

__all__ = [
    "ASSETS_DIR", "AXES", "COLOURS", "JUDGE_CLASSES", "Judge", "NONE", "PromptSet", "SHAPES",
    "TEXTURES", "ToyBatch", "ToyModel", "WordTokenizer", "accuracy", "all_prompts", "caption",
    "generate", "initial_noise", "judge", "judge_probs", "judged_accuracy", "load_judges",
    "load_tiny_clip", "load_toy_model", "make_batch", "make_rejects", "tiny_clip_scorer"
]

if TYPE_CHECKING:
    import torch

    from ..metrics.clip_score import ClipModel
    from .dataset import ToyBatch, caption, make_batch, make_rejects
    from .generation import PromptSet, accuracy, all_prompts, generate, initial_noise, judged_accuracy
    from .judges import JUDGE_CLASSES, NONE, Judge, judge, judge_probs
    from .model import ToyModel, WordTokenizer

__getattr__, __dir__ = _lazy.install(__name__, _EXPORTS)


def load_toy_model(path: str | Path | None = None, verify: bool = False) -> ToyModel:
    """The trained toy model (float32, eval, CPU, frozen). ``path`` defaults to the committed asset;
    ``verify`` checks the asset's sha256 against ``assets/HASHES.json`` first."""
    from .model import read_toy_model

    return read_toy_model(path if path is not None else asset_path(TOY_MODEL_FILE, verify))


def load_judges(path: str | Path | None = None, verify: bool = False) -> dict[str, Judge]:
    """The trained judges {"shape", "colour", "texture"} (eval, CPU, frozen)."""
    from .judges import read_judges

    return read_judges(path if path is not None else asset_path(JUDGES_FILE, verify))


def load_tiny_clip(
    path: str | Path | None = None, verify: bool = False
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], Callable]:
    """(model, image preprocess, tokenizer), like ``open_clip.create_model_and_transforms`` plus
    ``get_tokenizer``: ``model.encode_image(preprocess(images))`` for toy images (B, 3, 16, 16) in
    [-1, 1] (the preprocess is a tensor function, no PIL, no resize), ``model.encode_text(
    tokenizer(texts))``. Offline: the config is registered from a local file."""
    from .clip import read_tiny_clip, tiny_clip_tokenizer, toy_image_preprocess

    model = read_tiny_clip(path if path is not None else asset_path(TINY_CLIP_FILE, verify))
    return model, toy_image_preprocess, tiny_clip_tokenizer()


def tiny_clip_scorer(path: str | Path | None = None, verify: bool = False, **options) -> ClipModel:
    """The tiny CLIP as the metrics' scorer (``metrics.clip_score.load_clip``: a ``ClipModel``
    that ``clip_score`` takes), the one the toy evaluation, the demo and the commands' default
    ``--clip-*`` score with; the same weights as ``load_tiny_clip``'s model. ``options`` go to
    ``load_clip`` (``device``, ``image_norm``, ...)."""
    from ..metrics.clip_score import load_clip
    from .clip import CLIP_NAME

    return load_clip(CLIP_NAME, path if path is not None else asset_path(TINY_CLIP_FILE, verify), **options)
