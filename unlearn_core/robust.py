"""Adversarial erasure (``robust="adversarial"``): erase the concept and what an attacker would
use to bring it back.

After AdvUnlearn ("Defensive Unlearning with Adversarial Training for Robust Concept Erasure in
Diffusion Models", Zhang et al. 2024) and STEREO ("STEREO: A Two-Stage Framework for Adversarially
Robust Concept Erasing from Text-to-Image Diffusion Models", Srivatsan et al. 2025), as a bilevel
loop inside the erasure:

- inner (every ``robust_every`` steps): the attack of ``unlearn_core.attacks`` against the *current
  student* -- ``robust_inner_steps`` Adam steps on ``robust_tokens`` conditioning rows, minimising
  the denoising loss on images of the concept (generated once by the base model, deltas off, at
  the first step: ``ROBUST_IMAGES`` per concept). Two adversaries per concept, warm-started from
  their last rows, in turn: rows appended to the concept prompt (the prompt attack) and new rows
  in the empty prompt (the concept inversion). One adversary per kind, always refined: a pool of
  adversaries with fresh restarts, noise on their rows, fewer and longer fresh attacks, and 32
  concept images instead of 8 were each measured and none lowered the attacks' success on the
  toy world (BENCHMARKS.md §6a);
- outer (every step): on noised concept images, the student's prediction under the adversaries'
  conditioning (every kind learned so far, in turn over the batch) is pulled to the objective's
  target for the concept, times ``robust_weight``, added to the objective's loss. Under ``esd``
  (AdvUnlearn's formulation) that target is the frozen base model's negative guidance away from
  the *concept prompt*, e_0 - eta (e_c - e_0), deltas off: whatever conditioning the attacker
  finds, the student is to predict what the erasure predicts for the concept itself. Under
  ``sdd`` it is the student's own empty-prompt prediction (no grad). The retain and anchor terms
  of the trainer still hold the base model's predictions on the prompts they name.

Cost per step: ``batch_size`` UNet evaluations with gradient and ``2 * batch_size`` without under
``esd`` (``batch_size`` under ``sdd``) for the outer term, plus ``robust_inner_steps *
batch_size`` with gradient every ``robust_every`` steps, and the concept images once
(``ROBUST_IMAGES`` x ``sampling_steps`` x 2 with guidance). ``StepInfo.adversarial_evals`` and the
metadata count them.
"""

from __future__ import annotations

import torch

from .attacks.core import attacked_rows, learn_context, row_bound
from .conditioning import Conditioning
from .config import EraseConfig
from .delta import DeltaSet
from .denoiser import Denoiser
from .losses import LOSSES
from .objectives import esd_target
from .sampling import EvalCounter, ddim_sample, single_pass

Tensor = torch.Tensor

ROBUST_IMAGES = 8  # concept images (x_0) per concept, from the base model
IMAGE_CHUNK = 8  # of those, sampled at once
INNER_LR = 0.05  # Adam step of the inner attack, relative to the row norm bound
# row norm bound of the inner attack per kind, x the longest row of the prompts
NORM_SCALE = {"prompt_attack": 2.0, "concept_inversion": 2.0}
KINDS = ("prompt_attack", "concept_inversion")


class AdversarialTerm:
    """The robust term of one erasure: ``term(step, concept)`` -> the loss to add. The UNet
    evaluations it spends go to ``evals`` (grad / nograd, and all of them to ``adversarial``)."""

    def __init__(self, denoiser: Denoiser, deltas: DeltaSet, cond: Conditioning,
                 config: EraseConfig, shape: tuple[int, int, int], device: torch.device,
                 dtype: torch.dtype, evals: EvalCounter | None = None) -> None:
        self.denoiser, self.deltas, self.config = denoiser, deltas, config
        self.cond, self.shape, self.device, self.dtype = cond, shape, device, dtype
        self.generator = torch.Generator().manual_seed(config.seed + 3)
        length = cond.empty.shape[1]
        self.rows = {k: attacked_rows(k, length, min(config.robust_tokens, length - 1))
                     for k in KINDS}
        longest = row_bound(*cond.concepts, cond.empty)
        self.bound = {k: NORM_SCALE[k] * longest for k in KINDS}
        self.targets: list[Tensor] = []
        # where a fresh attack starts, per concept and kind: the prompt's own rows
        self.starts = [{"prompt_attack": c, "concept_inversion": cond.empty}
                       for c in cond.concepts]
        # per concept, the adversarial conditioning of each kind learned so far, in the order
        # the kinds were first attacked
        self.adversaries: list[dict[str, Tensor]] = [{} for _ in cond.concepts]
        self.turn = [0] * len(cond.concepts)
        self.inner_runs = 0
        self.last_inner_loss = float("nan")
        self.evals = evals if evals is not None else EvalCounter()

    @property
    def unet_evals(self) -> int:
        """The UNet evaluations this term has spent (with and without gradient)."""
        return self.evals.adversarial

    def _spend(self, grad: int = 0, nograd: int = 0) -> None:
        self.evals.grad += grad
        self.evals.nograd += nograd
        self.evals.adversarial += grad + nograd

    @torch.no_grad()
    def _make_targets(self) -> None:
        cfg = self.config
        for concept in self.cond.concepts:
            x_T = torch.randn((ROBUST_IMAGES, *self.shape), generator=self.generator)
            x0 = []
            for chunk in x_T.split(IMAGE_CHUNK):  # bounded memory; the same images at any chunk
                n = chunk.shape[0]
                with self.deltas.disabled():
                    x0.append(ddim_sample(self.denoiser, chunk.to(self.device, self.dtype),
                                          concept.expand(n, -1, -1),
                                          self.cond.empty.expand(n, -1, -1), cfg.guidance,
                                          cfg.sampling_steps).float())
            self.targets.append(torch.cat(x0))
            self._spend(nograd=ROBUST_IMAGES * cfg.sampling_steps * (
                1 if single_pass(cfg.guidance, False) else 2))

    def term(self, step: int, concept: int) -> Tensor:
        cfg = self.config
        if not self.targets:
            self._make_targets()
        if step % cfg.robust_every == 0:  # inner loop: attack the current student
            self._inner(concept)
        # outer term on noised concept images: the student under the adversaries' conditioning
        # is pulled to the objective's target for the concept
        batch = cfg.batch_size
        x0 = self.targets[concept]
        ab = self.denoiser.alphas_cumprod
        pick = torch.randint(0, x0.shape[0], (batch,), generator=self.generator)
        t = torch.randint(0, len(ab), (batch,), generator=self.generator)
        noise = torch.randn((batch, *x0.shape[1:]), generator=self.generator).to(self.device)
        a = ab[t].to(self.device, torch.float32).view(-1, 1, 1, 1)
        x_t = (a.sqrt() * x0[pick.to(self.device)] + (1 - a).sqrt() * noise).to(self.dtype)
        t = t.to(self.device)
        target = self._target(x_t, t, concept).float()
        eps = self.denoiser(x_t, t, self._adversarial_batch(concept, batch)).float()
        self._spend(grad=batch)
        return cfg.robust_weight * LOSSES["l2"](eps, target)

    def _inner(self, concept: int) -> None:
        """One inner attack on the current student: the next kind's adversary of ``concept``,
        warm-started from its last rows (the first time from the prompt's own)."""
        cfg = self.config
        kind = KINDS[self.turn[concept] % len(KINDS)]
        self.turn[concept] += 1
        adversaries = self.adversaries[concept]
        start = adversaries.get(kind, self.starts[concept][kind])
        learned = learn_context(self.denoiser, start, self.rows[kind],
                                self.targets[concept], cfg.robust_inner_steps, cfg.batch_size,
                                INNER_LR, self.bound[kind], self.generator)
        adversaries[kind] = learned.context.to(self.device, self.dtype)
        self._spend(grad=learned.grad_evals)
        self.inner_runs += 1
        self.last_inner_loss = learned.losses[-1]

    def _adversarial_batch(self, concept: int, batch: int) -> Tensor:
        """(batch, L, D): the adversaries of ``concept`` of every kind learned so far, in turn
        over the rows."""
        learned = list(self.adversaries[concept].values())
        return torch.cat([learned[i % len(learned)] for i in range(batch)])

    @torch.no_grad()
    def _target(self, x_t: Tensor, t: Tensor, concept: int) -> Tensor:
        """What the adversarial prediction is pulled to: under ``esd`` the frozen base model's
        negative guidance away from the concept prompt (as the objective's own target), under
        ``sdd`` the student's empty-prompt prediction."""
        batch = x_t.shape[0]
        empty = self.cond.empty.expand(batch, -1, -1)
        if self.config.objective == "esd":
            self._spend(nograd=2 * batch)
            return esd_target(self.denoiser, self.deltas, x_t, t,
                              self.cond.concepts[concept].expand(batch, -1, -1), empty,
                              self.config.esd_eta)
        self._spend(nograd=batch)
        return self.denoiser(x_t, t, empty)

    def metadata(self) -> dict:
        cfg = self.config
        return {"robust": {
            "mode": cfg.robust, "every": cfg.robust_every, "inner_steps": cfg.robust_inner_steps,
            "tokens": cfg.robust_tokens, "weight": cfg.robust_weight, "inner_runs": self.inner_runs,
            "images_per_concept": ROBUST_IMAGES, "inner_lr": INNER_LR,
            "row_bound": {k: round(b, 6) for k, b in self.bound.items()},
            "last_inner_loss": self.last_inner_loss},
            "unet_evals_adversarial": self.unet_evals}
