"""Running the engine on the toy model: the same ``erase`` as on SD, with the toy text encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..conditioning import encode_conditioning
from ..config import EraseConfig
from ..denoiser import DiffusersDenoiser
from ..result import EraseResult
from ..trainer import Callback, erase
from .model import ToyModel
from .settings import AXES, DEFAULT_VALUE_RATE, SET_WITH_DEFAULT_STEPS, TOY_RETAIN_WEIGHT, TOY_SETTINGS


def toy_config(concepts: Sequence[str], model: ToyModel | None = None,
               **overrides: Any) -> EraseConfig:
    """The toy settings (``TOY_SETTINGS``) for ``concepts``, with ``overrides`` over them. Given
    the ``model`` and no ``steps``, a set that holds a default value's neighbours or swaps a
    value its own target draws gets ``SET_WITH_DEFAULT_STEPS`` (``toy_steps``); without the
    model, the toy settings' steps."""
    config = EraseConfig(concepts=tuple(concepts), **(TOY_SETTINGS | overrides))
    if model is not None and "steps" not in overrides:
        config = config.replace(steps=toy_steps(model, config))
    return config


def toy_steps(model: ToyModel, config: EraseConfig) -> int:
    """The toy world's steps for ``config``'s concepts when the caller names none: at least
    ``SET_WITH_DEFAULT_STEPS`` for a training run of two or more concepts in which a default
    value's neighbours are held (the retain term of ``erase_toy``) or a value of a wholly erased
    kind is swapped (``self_drawn_values``), else ``config.steps``."""
    if len(config.concepts) > 1 and (_held_neighbours(model, config)[1]
                                     or _swapped(model, config)):
        return max(config.steps, SET_WITH_DEFAULT_STEPS)
    return config.steps


def _own_pairs(config: EraseConfig) -> bool:
    """Whether the run trains on the toy world's own pairs: a training run naming no contexts."""
    return config.method == "train" and not config.contexts


def _swapped(model: ToyModel, config: EraseConfig) -> tuple[str, ...]:
    """The run's ``self_drawn_values`` where it trains on the toy world's own pairs; else none."""
    if not _own_pairs(config):
        return ()
    return self_drawn_values(model, config.concepts, config.esd_eta)


def _held_neighbours(model: ToyModel, config: EraseConfig
                     ) -> tuple[tuple[str, ...], tuple[str, ...], float]:
    """(the run's default values, the captions ``erase_toy`` holds to the base model, the share
    of the run's concepts they hold): nothing unless a training run names neither contexts nor
    retain prompts of its own."""
    from .phrasings import neighbours

    if not _own_pairs(config):
        return (), (), 0.0
    defaults = default_values(model, config.concepts)
    if config.retain_prompts:
        return defaults, (), 0.0
    # each default value's neighbours, once: their union is held, their count sets the weight
    own = [neighbours([d], erased=config.concepts) for d in defaults]
    held = tuple(sorted(set().union(*own)))
    return defaults, held, sum(1 for n in own if n) / len(config.concepts)


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
    concept on one thread, so with the shipped judges the answer is kept in ``model.known`` (a
    set's steps and its erasure both ask; an erasure never changes the model's weights)."""
    if judges is not None:
        return _default_values(model, concepts, judges, images, seed)
    key = ("default_values", tuple(concepts), images, seed)
    if key not in model.known:
        model.known[key] = _default_values(model, concepts, None, images, seed)
    return model.known[key]


def _default_values(model: ToyModel, concepts: Sequence[str], judges: dict | None,
                    images: int, seed: int) -> tuple[str, ...]:
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


def self_drawn_values(model: ToyModel, concepts: Sequence[str], eta: float = 1.0,
                      images: int = 24, seed: int = 50_000) -> tuple[str, ...]:
    """The ``concepts`` of a kind they erase wholly (every value of it) whose own target draws
    them: the images drawn by a value's targets (its captions' anchors without the run's
    concepts, with negative guidance ``eta``; ``images`` of them) show that value in more than
    ``DEFAULT_VALUE_RATE`` of them, so training towards them cannot erase it. Pushed away from
    any texture, the toy model draws a flat fill: with every texture erased, solid's target draws
    solid in 0.92 of images (striped's and dotted's draw solid too, not themselves), and every
    texture collapsed into solid, solid's own captions included (BENCHMARKS.md §5v); no colour's
    target draws its own colour above 0.14. Such a value is anchored on another value of its
    kind instead, erased too (``phrasings.anchor``). Deterministic (fixed noise), kept in
    ``model.known``; nothing is drawn unless a kind is erased wholly."""
    from .phrasings import axis_of

    whole = [k for k, values in AXES.items() if all(v in concepts for v in values)]
    if not whole:
        return ()
    key = ("self_drawn_values", tuple(concepts), eta, images, seed)
    if key not in model.known:
        defaults = default_values(model, concepts)
        model.known[key] = tuple(
            c for c in concepts if axis_of(c) in whole and DEFAULT_VALUE_RATE < _target_shares(
                model, c, concepts, defaults, eta, images, seed)[AXES[axis_of(c)].index(c)])
    return model.known[key]


@torch.no_grad()
def _target_shares(model: ToyModel, value: str, concepts: Sequence[str],
                   defaults: Sequence[str], eta: float, images: int, seed: int) -> list[float]:
    """The share of each value of ``value``'s kind in ``images`` drawn by its targets (its pairs
    in turn, image i with noise seed ``seed + i``): DDIM with the toy sampler's guidance, where
    the caption's prediction is the ESD target ``e_anchor - eta (e_caption - e_anchor)`` of the
    frozen model. ``trainer`` never samples a target, so this loop is the toy world's own."""
    from ..objectives import negative_guidance
    from ..sampling import ddim_step, ddim_timesteps
    from .evaluate import concept_axis
    from .generation import DEFAULT_GUIDANCE, DEFAULT_STEPS, initial_noise
    from .judges import judge
    from .phrasings import context_pairs

    axis = concept_axis(value)[0]
    denoiser, ab = toy_denoiser(model), model.alphas_cumprod
    ts = ddim_timesteps(DEFAULT_STEPS, len(ab))
    pairs = context_pairs(value, erased=concepts, defaults=defaults)
    chosen = [pairs[i % len(pairs)] for i in range(images)]
    caption = model.encode([c for c, _ in chosen])
    anchor = model.encode([a for _, a in chosen])
    empty = model.encode([""] * images)
    x = initial_noise([seed + i for i in range(images)])
    for k in range(DEFAULT_STEPS):
        t = ts[k].expand(images)
        prev = ab[ts[k + 1]] if k + 1 < DEFAULT_STEPS else ab[0]
        e_u = denoiser(x, t, empty)
        aim = negative_guidance(denoiser(x, t, anchor), denoiser(x, t, caption), eta)
        x = ddim_step(x, e_u + DEFAULT_GUIDANCE * (aim - e_u), ab[ts[k]], prev)
    counts = torch.bincount(judge(x.clamp(-1, 1))[axis], minlength=len(AXES[axis]) + 1)
    return (counts[:-1].float() / images).tolist()


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
    caption would still show it); where the run erases a kind wholly, a value of it whose own
    target draws it (``self_drawn_values``: solid, with every texture erased) is replaced by
    another value of the kind, erased too. Unless the config names its own
    retain prompts, the captions with another value of such a concept's kind in its place that
    name no concept of the run are held to the base model (with the config's ``retain_weight``,
    or where it is 0 ``TOY_RETAIN_WEIGHT`` times the share of the run's concepts whose
    neighbours are held); with none left, no retain term. ``options`` go to ``erase``
    (``parallel``, ``checkpoint``, ``judge``); with ``judge_every`` and no judge given, the toy
    world's own judges (``toy_judge``) stop the training."""
    from .phrasings import context_pairs

    defaults, held, share = _held_neighbours(model, config)
    if held:
        # the retain term runs at every step, the concepts take the trajectories in turn: scaled
        # by the share of the run's concepts whose neighbours it holds, each of them is held as
        # hard per trajectory of its own as when it is erased alone (BENCHMARKS.md §5q)
        config = config.replace(retain_prompts=held,
                                retain_weight=config.retain_weight or TOY_RETAIN_WEIGHT * share)
    swapped = _swapped(model, config)
    cond = encode_conditioning(
        model.encode, config, last_token_fn(model),
        context_pairs=lambda concept: context_pairs(concept, erased=config.concepts,
                                                    defaults=defaults, swapped=swapped))
    if config.judge_every and options.get("judge") is None:
        options["judge"] = toy_judge(config.concepts)
    return erase(toy_denoiser(model), cond, config, callback, **options)
