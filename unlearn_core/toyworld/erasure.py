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
from .settings import TOY_SETTINGS


def toy_config(concepts: Sequence[str], **overrides: Any) -> EraseConfig:
    return EraseConfig(concepts=tuple(concepts), **(TOY_SETTINGS | overrides))


def last_token_fn(model: ToyModel) -> Callable[[Sequence[str]], list[int]]:
    def last(texts: Sequence[str]) -> list[int]:
        cap = model.tokenizer.max_length - 2
        return [min(len(model.tokenizer.words(t)), cap) for t in texts]

    return last


def toy_denoiser(model: ToyModel) -> DiffusersDenoiser:
    return DiffusersDenoiser(model.unet, model.alphas_cumprod)


def erase_toy(model: ToyModel, config: EraseConfig, callback: Callback | None = None,
              **options: Any) -> EraseResult:
    """Erase ``config.concepts`` from the toy model (weights untouched; the result holds deltas).

    Unless the config names its own contexts, each concept is erased inside every caption of the
    toy grammar that names it, towards the caption without any erased concept
    (``phrasings.context_pairs``). ``options`` go to ``erase`` (``parallel``, ``checkpoint``)."""
    from .phrasings import context_pairs

    cond = encode_conditioning(
        model.encode, config, last_token_fn(model),
        context_pairs=lambda concept: context_pairs(concept, erased=config.concepts))
    return erase(toy_denoiser(model), cond, config, callback, **options)
