"""The attacks on the toy world: its model as base, its judges as the scorer (success = the judge's
confidence in the concept >= threshold, 0.5 by default), its own sampling settings."""

from __future__ import annotations

from typing import Any

from ..attacks.config import AttackConfig
from ..attacks.core import AttackResult, Progress, attack
from ..metrics.generation import Erasure
from .world import TOY_GUIDANCE, ToyWorld, toy_judge_scorer

# The toy world samples with guidance 3 (generation); 10 DDIM steps, 16 judged images.
TOY_ATTACK: dict[str, Any] = dict(guidance=TOY_GUIDANCE, sampling_steps=10, threshold=0.5,
                                  seeds=tuple(range(16)), targets=16, steps=150, batch_size=8)
# Per kind, measured on the toy world against the untouched model (12 images, 150 x 8): the
# inversion reaches ASR 1.00 with 4 rows inside the prompts' own norm and 0.42-0.50 with 7 rows
# at twice the norm; the prompt attack reaches 1.00 with its 4 suffix rows at twice the norm.
TOY_KIND: dict[str, dict[str, Any]] = {"concept_inversion": dict(tokens=4, norm_scale=1.0),
                                       "prompt_attack": dict(tokens=4, norm_scale=2.0),
                                       "probe": {}}


def toy_config(concept: str, kind: str = "concept_inversion", **overrides: Any) -> AttackConfig:
    """The attack settings used on the toy world (``overrides`` win)."""
    settings = TOY_ATTACK | TOY_KIND.get(kind, {}) | overrides
    return AttackConfig(concept=concept, kind=kind, **settings)


def toy_attack(world: ToyWorld, erased: Any, config: AttackConfig, scorer: Any = None,
               on_progress: Progress | None = None) -> AttackResult:
    """Attack ``erased`` (an erasure such as ``EraseResult``, a denoiser, or None for the untouched
    model) on the toy world; the concept prompt is encoded by the toy text encoder."""
    scorer = scorer if scorer is not None else toy_judge_scorer()
    if config.kind != "probe":
        scorer_check = getattr(scorer, "understands", None)
        if scorer_check is not None and not scorer_check(config.concept):
            from ..errors import ConfigError

            raise ConfigError("concept", config.concept, "the toy judges cannot tell whether an "
                              "image shows this", "name a toy shape, colour or texture (e.g. "
                              "'a cross', 'red', 'striped')")
    emb = world.encode([config.concept, ""])
    target = world.denoiser if erased is None else erased
    if not isinstance(target, Erasure) and not hasattr(target, "alphas_cumprod"):
        from ..errors import ConfigError

        raise ConfigError("erased", type(erased).__name__, "not an erasure or a denoiser",
                          "pass an EraseResult, a loaded erasure or a denoiser")
    return attack(world.denoiser, target, emb[:1], emb[1:], scorer, config, world.decode,
                  world.latent_shape, on_progress=on_progress)
