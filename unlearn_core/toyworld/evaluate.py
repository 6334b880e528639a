"""Measuring an erasure in the toy world: efficacy, retention, CLIP scores, the unconditional floor.

- efficacy: share of generations for prompts that contain an erased concept which the judge still
  calls that concept (on the concept's axis). Lower is better; SDD maps the concept onto the
  unconditional output, so its floor is ``uncond_rate``.
- retention: the judge's accuracy (mean over shape, colour, texture) on prompts without any
  erased concept, divided by the untouched model's accuracy on the same prompts and noise. When
  the concepts leave no such caption (10 of the 11 items erased at once: every caption names one),
  it is the same ratio for what the erased captions keep: each caption's attributes that are not
  erased (a "red circle, striped" with red and striped erased must still be a circle).
- uncond_rate: share of the untouched model's empty-prompt samples judged to be the concept.
- CLIP score (unlearn_core.metrics.clip_score, the same function as the nodes and the CLI) of the
  erased and retained generations against their captions, with the toy world's tiny CLIP.
Every model is evaluated on the same seeds (common random numbers), so differences between
models are not differences of evaluation noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from ..denoiser import DiffusersDenoiser
from ..errors import ConfigError
from ..result import EraseResult
from .generation import PromptSet, all_prompts, generate
from .judges import judge
from .model import ToyModel
from .settings import AXES, TASKS, VOCABULARY  # noqa: F401 (TASKS: importable from here too)

# Evaluation noise: erased image i has seed EVAL_SEED + i, retained image i EVAL_SEED +
# RETAINED_SEED_OFFSET + i (prompts in the order of ``split_prompts``).
EVAL_SEED = 10_000
RETAINED_SEED_OFFSET = 50_000


def concept_axis(concept: str) -> tuple[str, int]:
    """("shape", index) for "circle", etc. Raises ConfigError for a word outside the toy world."""
    for axis, values in AXES.items():
        if concept in values:
            return axis, values.index(concept)
    words = ", ".join(VOCABULARY)
    raise ConfigError("concepts", concept, "not a toy-world concept", f"use one of: {words}")


def split_prompts(concepts: Sequence[str], repeats: int = 1) -> tuple[PromptSet, PromptSet]:
    """(prompts containing any concept, prompts containing none), full captions."""
    axes = [concept_axis(c) for c in concepts]
    full = all_prompts(repeats)
    labels = full.labels()
    has = torch.zeros(len(full), dtype=torch.bool)
    for axis, idx in axes:
        has |= labels[axis] == idx

    def subset(mask: torch.Tensor) -> PromptSet:
        keep = mask.nonzero().flatten().tolist()
        return PromptSet(tuple(full.prompts[i] for i in keep), full.shape[mask],
                         full.colour[mask], full.texture[mask])

    return subset(has), subset(~has)


@dataclass
class Evaluation:
    efficacy: float
    retention_accuracy: dict[str, float]
    erased_accuracy_other_axes: dict[str, float]
    clip_erased: float
    clip_retained: float
    images_erased: torch.Tensor = field(repr=False)
    images_retained: torch.Tensor = field(repr=False)
    # per concept: the share of the captions naming it whose image the judge still names it
    # (a set's ``efficacy`` pools them, so one concept left can hide behind the others)
    efficacy_by_concept: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=1)
def toy_clip():
    from . import tiny_clip_scorer

    return tiny_clip_scorer()


def _unit(images: torch.Tensor) -> torch.Tensor:
    return (images.clamp(-1, 1) + 1) / 2


@torch.no_grad()
def evaluation_images(model: ToyModel, concepts: Sequence[str], part: str,
                      erasure: EraseResult | None = None, seed: int = EVAL_SEED, repeats: int = 2,
                      steps: int = 20) -> torch.Tensor:
    """The images ``evaluate`` judges for one ``part``, "erased" (prompts with a concept) or
    "retained" (the others), ``repeats`` per caption. The parts are independent, so two threads
    (each on its own copy of the model) can make them side by side."""
    if part not in ("erased", "retained"):
        raise ValueError(f"part must be 'erased' or 'retained', got {part!r}")
    prompts = split_prompts(concepts, repeats)[0 if part == "erased" else 1]
    first = seed if part == "erased" else seed + RETAINED_SEED_OFFSET
    ctx = (erasure.applied(DiffusersDenoiser(model.unet, model.alphas_cumprod))
           if erasure is not None else contextlib.nullcontext())
    with ctx:
        return generate(model, prompts.prompts, [first + i for i in range(len(prompts))],
                        steps=steps)


@torch.no_grad()
def evaluate(model: ToyModel, judges: dict, concepts: Sequence[str],
             erasure: EraseResult | None = None, seed: int = EVAL_SEED, repeats: int = 2,
             steps: int = 20, with_clip: bool = True, retained_repeats: int | None = None,
             images: tuple[torch.Tensor, torch.Tensor] | None = None) -> Evaluation:
    """Generate the erased and retained prompt sets (``repeats`` per caption, or
    ``retained_repeats`` for the retained set) and measure them; ``images`` = (erased, retained)
    made beforehand by ``evaluation_images`` with the same settings skips the generation."""
    erased_set, _ = split_prompts(concepts, repeats)
    _, retained_set = split_prompts(concepts, retained_repeats or repeats)
    if images is None:
        images = (evaluation_images(model, concepts, "erased", erasure, seed, repeats, steps),
                  evaluation_images(model, concepts, "retained", erasure, seed,
                                    retained_repeats or repeats, steps))
    img_e, img_r = images
    if (len(img_e), len(img_r)) != (len(erased_set), len(retained_set)):
        raise ValueError(f"images: {len(img_e)} erased and {len(img_r)} retained given, the "
                         f"settings make {len(erased_set)} and {len(retained_set)}")
    pred_e = judge(img_e, judges)
    labels_e, labels_r = erased_set.labels(), retained_set.labels()
    still, pairs, by_concept = 0, 0, {}
    contained = torch.zeros(len(erased_set), len(AXES), dtype=torch.bool)
    for concept in concepts:
        axis, idx = concept_axis(concept)
        mask = labels_e[axis] == idx
        hits, named = int(((pred_e[axis] == idx) & mask).sum()), int(mask.sum())
        still, pairs = still + hits, pairs + named
        by_concept[concept] = hits / max(named, 1)
        contained[:, list(AXES).index(axis)] |= mask
    retention = {}
    if len(retained_set):
        pred_r = judge(img_r, judges)
        retention = {a: float((pred_r[a] == labels_r[a]).float().mean()) for a in AXES}
    # On erased prompts, the axes that were *not* erased should survive (a red cross -> red).
    other = {}
    for k, a in enumerate(AXES):
        keep = ~contained[:, k]
        if keep.any():
            other[a] = float((pred_e[a][keep] == labels_e[a][keep]).float().mean())
    clip_e = clip_r = float("nan")
    if with_clip:
        from ..metrics.clip_score import clip_score

        clip = toy_clip()
        clip_e = clip_score(clip, _unit(img_e), list(erased_set.prompts), template="{}").mean
        if len(retained_set):
            clip_r = clip_score(clip, _unit(img_r), list(retained_set.prompts), template="{}").mean
    return Evaluation(
        efficacy=still / max(pairs, 1), retention_accuracy=retention,
        erased_accuracy_other_axes=other, clip_erased=clip_e, clip_retained=clip_r,
        images_erased=img_e, images_retained=img_r, efficacy_by_concept=by_concept,
    )


@torch.no_grad()
def judged_rates(model: ToyModel, judges: dict, concepts: Sequence[str],
                 captions: Sequence[str], seed: int, steps: int = 20) -> list[float]:
    """Per concept, the share of the untouched model's samples of ``captions`` (image i with
    seed ``seed + i``) judged to be it."""
    images = generate(model, list(captions), [seed + i for i in range(len(captions))], steps=steps)
    pred = judge(images, judges)
    return [float((pred[axis] == idx).float().mean()) for axis, idx in map(concept_axis, concepts)]


def uncond_rates(model: ToyModel, judges: dict, concepts: Sequence[str], n: int = 96,
                 seed: int = 20_000, steps: int = 20) -> list[float]:
    """Per concept, the share of the model's empty-prompt samples judged to be it (its floor)."""
    return judged_rates(model, judges, concepts, [""] * n, seed, steps)


def uncond_rate(model: ToyModel, judges: dict, concepts: Sequence[str], n: int = 96,
                seed: int = 20_000, steps: int = 20) -> float:
    """Share of the model's empty-prompt samples judged to be each concept, averaged."""
    rates = uncond_rates(model, judges, concepts, n, seed, steps)
    return sum(rates) / len(rates)


def retention_ratio(after: Evaluation, before: Evaluation) -> float:
    """Mean over axes of accuracy after / before on the retained prompts; with no retained
    prompt, on the attributes of the erased captions that are not erased."""
    kept_after, kept_before = after.retention_accuracy, before.retention_accuracy
    if not kept_before:
        kept_after, kept_before = after.erased_accuracy_other_axes, before.erased_accuracy_other_axes
    ratios = [kept_after[a] / max(kept_before[a], 1e-9) for a in kept_before]
    return sum(ratios) / len(ratios)
