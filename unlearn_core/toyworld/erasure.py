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
from .settings import DEFAULT_VALUE_RATE, TOY_RETAIN_WEIGHT, TOY_SETTINGS


def toy_config(concepts: Sequence[str], **overrides: Any) -> EraseConfig:
    return EraseConfig(concepts=tuple(concepts), **(TOY_SETTINGS | overrides))


def last_token_fn(model: ToyModel) -> Callable[[Sequence[str]], list[int]]:
    def last(texts: Sequence[str]) -> list[int]:
        cap = model.tokenizer.max_length - 2
        return [min(len(model.tokenizer.words(t)), cap) for t in texts]

    return last


def toy_denoiser(model: ToyModel) -> DiffusersDenoiser:
    return DiffusersDenoiser(model.unet, model.alphas_cumprod)


def default_values(model: ToyModel, concepts: Sequence[str], judges: dict | None = None,
                   images: int = 96, seed: int = 50_000) -> tuple[str, ...]:
    """The concepts the untouched model draws by default: judged the concept in more than
    ``DEFAULT_VALUE_RATE`` of ``images`` samples of its anchors (the captions naming it, with it
    left out). Their anchors show them, so an erasure towards those anchors stops short; the
    toy world's are circle (0.62-0.66 on two noise seeds) and solid (0.65-0.70), every other
    item 0.02-0.55 (BENCHMARKS.md §5e). Deterministic (fixed noise); 96 images cost 5-14 s per
    concept on one thread."""
    from .evaluate import judged_rates
    from .phrasings import context_pairs

    if judges is None:
        from . import load_judges

        judges = load_judges()
    out = []
    for concept in concepts:
        anchors = sorted({a for _, a in context_pairs(concept, erased=concepts)})
        captions = [anchors[i % len(anchors)] for i in range(images)]
        (rate,) = judged_rates(model, judges, [concept], captions, seed)
        if rate > DEFAULT_VALUE_RATE:
            out.append(concept)
    return tuple(out)


def toy_judge(concepts: Sequence[str], judges: dict | None = None) -> Callable:
    """The toy world's judge for ``judge_every`` (``judge_stop.Judge``): sampled images
    (B, 3, 16, 16) show concept number i when the judge of its axis names it."""
    from .evaluate import concept_axis
    from .judges import judge

    axes = [concept_axis(c) for c in concepts]

    def shows(images, concept: int):
        axis, index = axes[concept]
        return judge(images.float().clamp(-1, 1), judges)[axis] == index

    return shows


def erase_toy(model: ToyModel, config: EraseConfig, callback: Callback | None = None,
              **options: Any) -> EraseResult:
    """Erase ``config.concepts`` from the toy model (weights untouched; the result holds deltas).

    Unless the config names its own contexts, each concept is erased inside every caption of the
    toy grammar that names it, towards the caption without any erased concept
    (``phrasings.context_pairs``). Where a caption names a concept of the run the model draws by
    default (``default_values``), the anchor names another value of its kind in its place --
    in that concept's own pairs and in those of every other concept of the run (left out, its
    caption would still show it). Unless the config names its own retain prompts, the captions
    with another value of such a concept's kind in its place that name no concept of the run
    are held to the base model (with the config's ``retain_weight``, or where it is 0
    ``TOY_RETAIN_WEIGHT`` times the share of the run's concepts whose neighbours are held);
    with none left, no retain term. ``options`` go to
    ``erase`` (``parallel``, ``checkpoint``, ``judge``); with ``judge_every`` and no judge
    given, the toy world's own judges (``toy_judge``) stop the training."""
    from .phrasings import context_pairs, neighbours

    defaults = (default_values(model, config.concepts)
                if config.method == "train" and not config.contexts else ())
    # each default value's neighbours, once: their union is held, their count sets the weight
    own = [neighbours([d], erased=config.concepts) for d in defaults
           ] if not config.retain_prompts else []
    held = tuple(sorted(set().union(*own)))
    if held:
        # the retain term runs at every step, the concepts take the trajectories in turn: scaled
        # by the share of the run's concepts whose neighbours it holds, each of them is held as
        # hard per trajectory of its own as when it is erased alone (BENCHMARKS.md §5q)
        weight = TOY_RETAIN_WEIGHT * sum(1 for n in own if n) / len(config.concepts)
        config = config.replace(retain_prompts=held,
                                retain_weight=config.retain_weight or weight)
    cond = encode_conditioning(
        model.encode, config, last_token_fn(model),
        context_pairs=lambda concept: context_pairs(concept, erased=config.concepts,
                                                    defaults=defaults))
    if config.judge_every and options.get("judge") is None:
        options["judge"] = toy_judge(config.concepts)
    return erase(toy_denoiser(model), cond, config, callback, **options)
