"""Red-team attacks on an erased model (issue: "red-team your own erasure").

    from unlearn_core.attacks import AttackConfig, attack
    result = attack(base, erasure, cond, uncond, scorer, AttackConfig(concept="a cross"), decode,
                    latent_shape=(3, 16, 16))
    result.asr, result.interval, result.summary()

``concept_inversion`` (CCE-style) and ``prompt_attack`` (UnlearnDiffAtk-style) optimise a few rows
of the conditioning against the erased model with the denoising loss on images of the concept;
``probe`` is the partial-diffusion probe on the same scale. ``toyworld.attacks`` runs them on the
toy world (this package never imports the toy world).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import _lazy

_EXPORTS: dict[str, str] = {
    "AttackConfig": "config", "KINDS": "config",
    "AttackResult": "core", "attack": "core", "concept_targets": "core", "learn_context": "core",
    "wilson_interval": "core",
}

__all__ = ["AttackConfig", "AttackResult", "KINDS", "attack", "concept_targets", "learn_context",
           "wilson_interval"]

if TYPE_CHECKING:
    from .config import KINDS, AttackConfig
    from .core import AttackResult, attack, concept_targets, learn_context, wilson_interval

__getattr__, __dir__ = _lazy.install(__name__, _EXPORTS)
