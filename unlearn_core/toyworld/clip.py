"""A tiny CLIP for the toy world, in open_clip's own architecture.

The config (``assets/unlearn-toy-clip.json``: a 3-layer ViT on 4x4 patches of the 16x16 images, a
2-layer text transformer, 64-d embeddings) is registered with ``open_clip.add_model_config`` and the
model built by ``open_clip.create_model``, so the CLIP-score code paths that serve a real open_clip
model (Radford et al. 2021, https://arxiv.org/abs/2103.00020) are exercised on a real, trained one.
The tokenizer is open_clip's default BPE tokenizer (context length 16); its 49k-token embedding
table is most of the parameters. Nothing is ever downloaded.

Training is contrastive with multi-positive targets: a caption counts as a match for every image
in the batch that it describes ("a circle" describes every circle), so duplicate captions in a
batch are not pushed apart as false negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .dataset import COLOURS, SHAPES, TEXTURES

CLIP_NAME = "unlearn-toy-clip"
CONFIG_PATH = Path(__file__).resolve().parent / "assets" / f"{CLIP_NAME}.json"
FORMAT = "unlearn-toy-clip"


class _DropNoPretrainedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def register_config() -> None:
    """Register the tiny CLIP's config with open_clip (idempotent)."""
    import open_clip

    if CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)


def new_tiny_clip() -> torch.nn.Module:
    """An untrained tiny CLIP (weights from torch's current RNG)."""
    import open_clip

    register_config()
    root = logging.getLogger()
    flt = _DropNoPretrainedWarning()
    root.addFilter(flt)  # we build from config on purpose; open_clip warns on the root logger
    try:
        return open_clip.create_model(CLIP_NAME, pretrained=None)
    finally:
        root.removeFilter(flt)


def tiny_clip_tokenizer() -> Callable[[list[str] | str], torch.Tensor]:
    """open_clip's default tokenizer at the tiny CLIP's context length: texts → ids (B, 16)."""
    import open_clip

    register_config()
    return open_clip.get_tokenizer(CLIP_NAME)


def toy_image_preprocess(images: torch.Tensor) -> torch.Tensor:
    """Toy images (B, 3, 16, 16) in [-1, 1] → the tiny CLIP's input (the same tensor, float32,
    clamped): the model was trained on toy images as they are, so there is no resize or
    normalisation — the counterpart of a real open_clip model's ``preprocess``."""
    return images.float().clamp(-1, 1)


def caption_matches(captions: list[str], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B_img, B_txt) bool: caption j describes image i (every word it names matches the labels)."""
    names = {"shape": SHAPES, "colour": COLOURS, "texture": TEXTURES}
    n_img = labels["shape"].shape[0]
    match = torch.ones(n_img, len(captions), dtype=torch.bool)
    for j, text in enumerate(captions):
        words = set(text.replace(",", " ").split())
        for axis, vocab in names.items():
            named = [i for i, w in enumerate(vocab) if w in words]
            if named:
                match[:, j] &= labels[axis] == named[0]
    return match


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, match: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with multi-positive targets. Features (B, E) normalised; match (B, B)."""
    logits = logit_scale * image_features @ text_features.T  # (B_img, B_txt)
    target = match.float()
    loss_i = -(target / target.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target.T / target.T.sum(1, keepdim=True) * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def save_tiny_clip(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.float16,
                   extra: dict | None = None) -> None:
    import json

    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().to(dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "open_clip_model": CLIP_NAME,
        "open_clip_config": CONFIG_PATH.read_text(),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_tiny_clip(path: str | Path) -> torch.nn.Module:
    """The tiny CLIP from a file written by ``save_tiny_clip`` (float32, eval mode, CPU)."""
    from .tagged import read_tagged

    tensors, _ = read_tagged(path, FORMAT, "tiny CLIP", "scripts/train_tiny_clip.py")
    state = {k: v.float() for k, v in tensors.items()}
    model = new_tiny_clip()
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
