"""Stopping when a judge sees the concept gone: a step budget that follows each erasure.

A fixed step count is set by the hardest concept: on the toy world a colour is erased in
about 150 steps, a default value (the shape the model draws when asked for nothing) needs
300-400 (BENCHMARKS.md §5g, §5i), and every step past the erasure moves the rest of the model for
nothing. A distance in the model's predictions does not tell when the concept is gone (the
residual of ``erasure_check.py`` stood at 0.08 for an erased colour and 0.74 for an erased
circle), so this asks a judge of images: every ``judge_every`` steps, ``judge_images`` images
of each concept's prompts are sampled from the weights training would return, and the judge
says which of them show the concept.

The judge is the caller's (``Judge``): on the toy world its shape/colour/texture classifiers
(``toyworld.erasure.toy_judge``), on SD a CLIP score against a threshold. The trainer only
samples latents and counts.

The rule. Before the first step the untouched model samples ``FLOOR_IMAGES`` images of the empty
prompt; the share the judge calls each concept is its floor (what the model draws when nothing
is asked: a concept is erased when asking for it no longer raises that). A check calls a concept
erased when the share of its images judged to show it is at most ``STOP_FRACTION`` of its floor
(so with a floor of 0, none may show it); training stops at the first check where every
concept has been called erased at ``judge_patience`` checks in a row, and at ``steps`` at the
latest. Each check samples fresh noise and walks on through the concept's prompts (the bare
concept and every caption it is erased inside), so consecutive checks see different images, and
over a run every phrasing trained.

Cost: ``FLOOR_IMAGES`` guided samples once, then ``judge_images`` per concept per check, each a
``sampling_steps``-step guided DDIM run (2 UNet evaluations a step), counted in the erasure's
UNet evaluations. The judge's own cost (a classifier, or a VAE decode and CLIP) is not a UNet
evaluation and is not counted there. In a data-parallel run every process samples and judges
the same images (the noise is keyed on the seed and the check), so all stop at the same step;
each counts what it spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from .distributed import keyed_generator
from .errors import ConfigError
from .sampling import ddim_sample, single_pass

Tensor = torch.Tensor

FLOOR_IMAGES = 32  # empty-prompt samples of the untouched model that set every concept's floor
STOP_FRACTION = 0.5  # erased: judged in at most this share of the floor's rate


class Judge(Protocol):
    """``judge(latents, concept) -> (B,) bool``: which of the sampled latents (B, C, h, w) show
    concept number ``concept`` (its index in ``config.concepts``). It decodes them itself."""

    def __call__(self, latents: Tensor, concept: int) -> Tensor:
        ...


def check_judge(config, judge: Judge | None) -> None:
    """``judge_every`` needs a judge; refused before anything is sampled."""
    if config.judge_every > 0 and judge is None:
        raise ConfigError("judge_every", config.judge_every, "stopping on a judge needs a judge of "
                          "the concept's images, and none was given",
                          "give one (on SD-1.x a CLIP model: unlearn erase --clip-arch and "
                          "--clip-weights, the Advanced node's judge_clip; the toy world brings "
                          "its own) or set judge_every to 0")


def judge_prompts(pairs: Sequence[tuple[Tensor, Tensor]], n: int, check: int) -> list[Tensor]:
    """The ``n`` prompts check number ``check`` samples for one concept: on through its
    (prompt, anchor) pairs from where the previous check stopped, the bare concept first."""
    return [pairs[(check * n + k) % len(pairs)][0] for k in range(n)]


@torch.no_grad()
def sample(run, state, prompts: Tensor, key: tuple, untouched: bool = False) -> Tensor:
    """Guided DDIM samples (latents) of ``prompts`` (B, L, D) from the weights training would
    return (the untouched model's with ``untouched``), from noise keyed on ``key``."""
    cfg, cond, deltas = run.config, run.cond, state.deltas
    shape = run.samplers[0].shape
    b = prompts.shape[0]
    x_T = torch.randn((b, *shape), generator=keyed_generator(cfg.seed, "judge", *key))
    x_T = x_T.to(cond.empty.device, cond.empty.dtype)
    with deltas.disabled() if untouched else deltas.returned(state.teacher, cfg.result):
        x0 = ddim_sample(run.denoiser, x_T, prompts, cond.empty.expand(b, -1, -1), cfg.guidance,
                         cfg.sampling_steps)
    state.evals.nograd += (1 if single_pass(cfg.guidance, False) else 2) * b * cfg.sampling_steps
    return x0


def floors(run, state, judge: Judge) -> list[float]:
    """Each concept's floor: the share of the untouched model's empty-prompt samples it judges
    to show the concept."""
    empty = run.cond.empty.expand(FLOOR_IMAGES, -1, -1)
    x0 = sample(run, state, empty, ("floor",), untouched=True)
    return [float(judge(x0, i).float().mean()) for i in range(len(run.tasks))]


def rates(run, state, judge: Judge, check: int) -> list[float]:
    """Each concept's share of ``judge_images`` fresh samples of its prompts judged to show it."""
    n = run.config.judge_images
    out = []
    for i, pairs in enumerate(run.tasks):
        prompts = torch.cat([p.expand(1, -1, -1) for p in judge_prompts(pairs, n, check)])
        x0 = sample(run, state, prompts, ("check", check, i))
        out.append(float(judge(x0, i).float().mean()))
    return out


def erased(rate: float, floor: float) -> bool:
    """The check's verdict for one concept: judged in at most STOP_FRACTION of its floor."""
    return rate <= STOP_FRACTION * floor + 1e-9


def judged_stop(config, floor: Sequence[float], checks: list[tuple[int, list[float]]]) -> bool:
    """Stop after the last of ``checks``: every concept erased at each of the last
    ``judge_patience`` checks (never while there are fewer: so never without judge_every)."""
    last = checks[-config.judge_patience:]
    if len(last) < config.judge_patience:
        return False
    return all(erased(r, f) for _, found in last for r, f in zip(found, floor, strict=True))


def describe(metadata: dict) -> str | None:
    """One line on an erasure's judged stop (its metadata's ``judge_stop``), or None."""
    info = metadata.get("judge_stop")
    if not info or not info.get("checks"):
        return None
    step, found = info["checks"][-1]
    shares = ", ".join(f"{r:.2f}" for r in found)
    floor = ", ".join(f"{f:.2f}" for f in info["floors"])
    if info["stopped_early"]:
        return (f"judged erased (shares {shares}; floors {floor}) at {info['judge_patience']} checks "
                f"in a row: training stopped after {step} of {info['steps']} steps")
    return (f"judge at step {step}: shares {shares} (floors {floor}); not judged erased "
            f"{info['judge_patience']} checks in a row, so every step ran")


class ScoreJudge:
    """A ``Judge`` from a scorer (``metrics.scorers``: a CLIP score on SD) and a threshold: the
    latents are decoded to images in [0, 1] by ``decode``, each is scored against the concept's
    own name, and it shows the concept when the score is at least ``threshold`` (the same rule
    as the attacks' success, so one threshold serves both)."""

    def __init__(self, scorer, decode, concepts: Sequence[str], threshold: float) -> None:
        self.scorer, self.decode = scorer, decode
        self.concepts, self.threshold = tuple(concepts), float(threshold)

    @torch.no_grad()
    def __call__(self, latents: Tensor, concept: int) -> Tensor:
        images = self.decode(latents).float().clamp(0, 1)
        scores = self.scorer(images, [self.concepts[concept]] * images.shape[0])
        return scores.cpu() >= self.threshold
