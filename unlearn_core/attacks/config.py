"""Settings of the red-team attacks: a frozen dataclass whose fields carry their help text.

As with ``EraseConfig`` and the probe's config, the help text is the CLI ``--help`` and the ComfyUI
tooltip, the field names are the node inputs and CLI flags, and everything is checked in
``__post_init__``, before any model runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import SEED_MAX, _f
from ..errors import ConfigError
from ..metrics.config import DEFAULT_PSIS, _check_numbers, parse_psis, parse_seeds

KINDS = ("concept_inversion", "prompt_attack", "probe")


@dataclass(frozen=True)
class AttackConfig:
    """One attack on an erased model: what to revive, how, with how much compute."""

    concept: str = _f("", "The erased concept's prompt: what the attack tries to bring back. Its "
                      "images (from the base model) are the attack's targets, and the judge or "
                      "CLIP scorer measures it in the attacked images.")
    kind: str = _f(
        "concept_inversion",
        "concept_inversion (CCE-style): learn a few new token rows in an otherwise empty prompt "
        "against the erased model, with the denoising loss on images of the concept. "
        "prompt_attack (UnlearnDiffAtk-style): append a few optimised token rows to the concept "
        "prompt, same loss. probe: the partial-diffusion probe (no optimisation).",
        choices=KINDS)
    steps: int = _f(150, "Optimisation steps of the attack (its budget: steps x batch_size "
                    "UNet evaluations with gradient).", min=1, max=100_000)
    batch_size: int = _f(4, "Noised target images per optimisation step.", min=1, max=256,
                         ui=dict(max=64))
    tokens: int = _f(4, "Token rows the attack optimises (of the text encoder's output, which "
                     "the UNet's cross-attention reads).", min=1, max=76)
    lr: float = _f(0.02, "Adam learning rate of the attack, relative to the norm bound of a row.",
                   min_exclusive=0.0, max=10.0)
    norm_scale: float = _f(1.0, "Bound on each optimised row's length, as a multiple of the "
                           "longest row (after the start token) of the concept's and the empty "
                           "prompt's encodings; keeps the attack inside what a text encoder "
                           "produces.", min_exclusive=0.0, max=100.0)
    targets: int = _f(8, "Images of the concept the base model generates as the attack's "
                      "targets (ignored when you give your own images).", min=1, max=1024)
    seeds: tuple[int, ...] = _f((0, 1, 2, 3, 4, 5, 6, 7), "Seeds of the images generated with "
                                'the attack and judged ("0-7"): one image each.')
    guidance: float = _f(7.5, "Classifier-free guidance of every sampler here (targets, attacked "
                         "images, probe).", min=0.0, max=100.0, ui=dict(step=0.1, max=30.0))
    sampling_steps: int = _f(50, "DDIM steps per generated image.", min=1, max=1000)
    threshold: float = _f(0.5, "An attacked image counts as a success when its score for the "
                          "concept reaches this (toy judges: confidence 0..1; CLIP score: "
                          "0..100, e.g. 25 for ViT-L-14 -- calibrate it on your base model's "
                          "images of the concept).", min=0.0, ui=dict(step=0.5))
    psis: tuple[float, ...] = _f(DEFAULT_PSIS, "probe: shares of the trajectory the base model "
                                 "denoises before the erased model takes over.")
    batch: int = _f(16, "Images per sampler batch (lower it if memory runs out).", min=1, max=1024)
    seed: int = _f(0, "Seed of the attack (targets' noise, timesteps, initial rows): the same "
                   "seed gives the same attack.", min=0, ui=dict(max=SEED_MAX))

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        object.__setattr__(self, "psis", parse_psis(self.psis))
        _check_numbers(self)
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise ConfigError("concept", self.concept, "no concept given",
                              "type the prompt of the erased concept (e.g. 'a cross')")
        object.__setattr__(self, "concept", self.concept.strip())

    @property
    def grad_evals(self) -> int:
        """UNet evaluations with gradient the optimisation spends (0 for the probe)."""
        return 0 if self.kind == "probe" else self.steps * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def attack_help(name: str) -> str:
    return {f.name: f for f in dataclasses.fields(AttackConfig)}[name].metadata["help"]
