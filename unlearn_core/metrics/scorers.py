"""Scorers: how much an image shows what its prompt names. One interface for the probe and report.

A scorer maps images (B, 3, H, W) in [0, 1] and one prompt per image to a presence score (B,);
higher means more present. Two kinds:
- ``ClipScorer``: CLIP score (0..100) against the prompt (Hessel et al. 2021), any open_clip model.
- ``ClassifierScorer``: a classifier's probability for the class the prompt names (e.g. the toy
  world's shape judge: "a red cross, striped" -> P(cross)). Sharma et al. 2024 score the probe
  with such a detector's confidence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import ConfigError
from .clip_score import DEFAULT_TEMPLATE, ClipModel, check_images, clip_score

Tensor = torch.Tensor


@runtime_checkable
class Scorer(Protocol):
    """``scorer(images, prompts) -> (B,)`` presence; ``name`` and ``scale`` (max value) for labels."""

    name: str
    scale: float

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        ...


def _check_pairs(images: Tensor, prompts: Sequence[str]) -> None:
    """Images in [0, 1] and exactly one prompt per image."""
    check_images(images)
    if len(prompts) != images.shape[0]:
        raise ConfigError("prompt", len(prompts), f"{images.shape[0]} images need one prompt each",
                          "give one prompt per image")


@dataclass
class ClipScorer:
    """CLIP score of each image against its own prompt, through ``template``."""

    clip: ClipModel
    template: str = DEFAULT_TEMPLATE
    batch_size: int = 32
    name: str = "CLIP score"
    scale: float = 100.0

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return clip_score(self.clip, images, list(prompts), self.template, self.batch_size).per_image


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass
class ClassifierScorer:
    """P(class named in the prompt) from ``classifier(preprocess(images)) -> logits (B, K)``.

    ``classes``: the K class names; a prompt must name exactly one of them as whole words.
    """

    classifier: nn.Module
    classes: tuple[str, ...]
    preprocess: Callable[[Tensor], Tensor] | None = None
    name: str = "judge confidence"
    scale: float = 1.0

    def classes_named(self, prompt: str) -> list[int]:
        """Indices of the classes the prompt names as whole words."""
        words = _words(prompt)
        found = []
        for k, cls in enumerate(self.classes):
            cw = _words(cls)
            if cw and any(words[i : i + len(cw)] == cw for i in range(len(words) - len(cw) + 1)):
                found.append(k)
        return found

    def class_of(self, prompt: str) -> int:
        found = self.classes_named(prompt)
        if len(found) != 1:
            named = [self.classes[k] for k in found]
            raise ConfigError("prompt", prompt, f"the judge needs the prompt to name exactly one of "
                              f"its classes ({', '.join(self.classes)}); it names {named or 'none'}",
                              "reword the prompt, or score with a CLIP model instead")
        return found[0]

    @torch.no_grad()
    def probs(self, images: Tensor) -> Tensor:
        """Class probabilities (B, K) on the CPU."""
        x = self.preprocess(images) if self.preprocess is not None else images
        p = next(self.classifier.parameters(), None)
        if p is not None:
            x = x.to(p.device, p.dtype)
        return self.classifier(x).float().softmax(-1).cpu()

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_pairs(images, prompts)
        index = torch.tensor([self.class_of(p) for p in prompts], dtype=torch.long)
        return self.probs(images).gather(1, index[:, None])[:, 0]


@dataclass
class JointClassifierScorer:
    """Several classifiers (e.g. shape, colour, texture judges): the product of each one's
    probability for the class the prompt names, over the classifiers whose classes it names.

    "a blue square" -> P(square) * P(blue); "a cross" -> P(cross). So a retained prompt whose colour
    or texture the erasure changed scores low, even if its shape survived.
    """

    parts: tuple[ClassifierScorer, ...]
    name: str = "judge confidence"
    scale: float = 1.0

    def understands(self, prompt: str) -> bool:
        """Whether some classifier's class is named in the prompt."""
        return any(part.classes_named(prompt) for part in self.parts)

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        _check_pairs(images, prompts)
        out = torch.ones(images.shape[0])
        named_any = torch.zeros(images.shape[0], dtype=torch.bool)
        for part in self.parts:
            found = [part.classes_named(p) for p in prompts]
            rows = [i for i, f in enumerate(found) if f]
            if not rows:
                continue
            for i in rows:
                if len(found[i]) > 1:
                    part.class_of(prompts[i])  # raises, naming the ambiguity
            probs = part.probs(images[rows])  # (R, K)
            index = torch.tensor([found[i][0] for i in rows], dtype=torch.long)
            out[rows] *= probs.gather(1, index[:, None])[:, 0]
            named_any[rows] = True
        if not named_any.all():
            bad = prompts[int((~named_any).nonzero()[0])]
            classes = sorted({c for part in self.parts for c in part.classes})
            raise ConfigError("prompt", bad, "the prompt names none of the judges' classes "
                              f"({', '.join(classes)})", "reword it, or score with a CLIP model")
        return out
