"""Running the engine on the toy model: the same ``erase`` as on SD, with the toy text encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..conditioning import encode_conditioning
from ..config import EraseConfig
from ..denoiser import DiffusersDenoiser
from ..result import EraseResult
from ..trainer import Callback, erase
from .model import ToyModel

# Short-run settings for the toy world (16x16 images, 300 steps), chosen by measurement on the toy
# world (BENCHMARKS.md) so that the *returned* model, the EMA teacher, erases: with SDD's decay
# 0.999 the teacher moves only 1 - 0.999^300 = 26% of the way in 300 steps; at 0.99 it moves 95%.
# SNR (x0-space) weighting of the loss erased "cross" to 0.04 where the unweighted loss left 0.25
# at equal steps, with retention 0.93 vs 0.91 (one seed each; the benchmark has the intervals).
TOY_SETTINGS: dict[str, Any] = dict(
    resolution=16, selection="xattn-kv", parametrization="full", lr=3e-4, steps=300,
    ema_decay=0.99, batch_size=4, sampling_steps=10, trajectory_reuse=4,
    timestep_weighting="snr",
)


def toy_config(concepts: Sequence[str], **overrides: Any) -> EraseConfig:
    return EraseConfig(concepts=tuple(concepts), **(TOY_SETTINGS | overrides))


def last_token_fn(model: ToyModel) -> Callable[[Sequence[str]], list[int]]:
    def last(texts: Sequence[str]) -> list[int]:
        cap = model.tokenizer.max_length - 2
        return [min(len(model.tokenizer.words(t)), cap) for t in texts]

    return last


def toy_denoiser(model: ToyModel) -> DiffusersDenoiser:
    return DiffusersDenoiser(model.unet, model.alphas_cumprod)


def erase_toy(model: ToyModel, config: EraseConfig, callback: Callback | None = None
              ) -> EraseResult:
    """Erase ``config.concepts`` from the toy model (weights untouched; the result holds deltas)."""
    cond = encode_conditioning(model.encode, config, last_token_fn(model))
    return erase(toy_denoiser(model), cond, config, callback)
