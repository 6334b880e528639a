"""Judges: one small CNN classifier per axis that says what a toy image shows.

The shape judge has a fifth, reject class ``"none"`` (no clear shape), trained on
``dataset.make_rejects``: the untouched model's unconditional samples are blobs, and a judge
forced to pick a shape calls them "circle" 44% of the time, which would make erasing
"circle" look like failure. The colour and texture judges assume a shape is present.

All three judges live in one safetensors file (keys prefixed by the axis), with their class names
in the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .dataset import COLOURS, SHAPES, TEXTURES

NONE = "none"
JUDGE_CLASSES: dict[str, tuple[str, ...]] = {
    "shape": (*SHAPES, NONE),
    "colour": COLOURS,
    "texture": TEXTURES,
}
FORMAT = "unlearn-toy-judges"


class Judge(nn.Module):
    """Conv(3→32)×2 → pool → Conv(32→64)×2 → pool → MLP → logits; input (B, 3, 16, 16) in [-1, 1]."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, 16, 16) → logits (B, num_classes)."""
        return self.head(self.features(images.clamp(-1, 1)))


def new_judges() -> dict[str, Judge]:
    return {axis: Judge(len(classes)) for axis, classes in JUDGE_CLASSES.items()}


def save_judges(judges: dict[str, Judge], path: str | Path, extra: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{axis}.{k}": v.detach().cpu().float().contiguous()
        for axis, judge in judges.items()
        for k, v in judge.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "classes": json.dumps({a: list(c) for a, c in JUDGE_CLASSES.items()}),
        **{k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (extra or {}).items()},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def read_judges(path: str | Path) -> dict[str, Judge]:
    """The three judges from a file written by ``save_judges`` (eval mode, CPU, no grad)."""
    from .tagged import read_tagged

    tensors, metadata = read_tagged(path, FORMAT, "judges", "scripts/train_judges.py")
    classes = json.loads(metadata["classes"])
    judges = {}
    for axis, names in classes.items():
        judge = Judge(len(names))
        judge.load_state_dict({k[len(axis) + 1:]: v for k, v in tensors.items() if k.startswith(axis + ".")})
        judges[axis] = judge.eval().requires_grad_(False)
    return judges


_default_judges: dict[str, Judge] | None = None


def _or_default(judges: dict[str, Judge] | None) -> dict[str, Judge]:
    global _default_judges
    if judges is not None:
        return judges
    if _default_judges is None:
        from . import load_judges

        _default_judges = load_judges()
    return _default_judges


@torch.no_grad()
def judge(images: torch.Tensor, judges: dict[str, Judge] | None = None) -> dict[str, torch.Tensor]:
    """Per-axis class indices (B,) int64 for images (B, 3, 16, 16) in [-1, 1].

    Shape indices index ``JUDGE_CLASSES["shape"]`` (index 4 = "none"); colour and texture index
    ``COLOURS`` and ``TEXTURES``. ``judges`` defaults to the committed ones (loaded once).
    """
    return {axis: j(images.float()).argmax(-1) for axis, j in _or_default(judges).items()}


@torch.no_grad()
def judge_probs(images: torch.Tensor, judges: dict[str, Judge] | None = None) -> dict[str, torch.Tensor]:
    """Per-axis class probabilities (B, K): the judge's confidence, e.g. for the CCS probe."""
    return {axis: j(images.float()).softmax(-1) for axis, j in _or_default(judges).items()}
