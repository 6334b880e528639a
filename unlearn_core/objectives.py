"""What the concept's prediction is pulled towards.

- ``sdd`` (Kim et al. 2023, https://arxiv.org/abs/2307.05977): target = sg[eps(z_t, empty, t)],
  the model's own empty-prompt prediction; from the student as in the official code, or from the
  EMA teacher.
- ``esd`` (Gandikota et al. 2023, https://arxiv.org/abs/2303.07345): target =
  e_0 - eta (e_c - e_0) from the frozen base model (negative guidance away from the concept).
"""

from __future__ import annotations

import torch

from .delta import DeltaSet
from .denoiser import Denoiser

Tensor = torch.Tensor


@torch.no_grad()
def sdd_target(denoiser: Denoiser, deltas: DeltaSet, teacher: list[Tensor], x_t: Tensor,
               t: Tensor, emb_empty: Tensor, target_from: str) -> Tensor:
    """Empty-prompt prediction (B, C, H, W), no gradient."""
    if target_from == "teacher":
        with deltas.swapped(teacher):
            return denoiser(x_t, t, emb_empty)
    if target_from == "base":
        with deltas.disabled():
            return denoiser(x_t, t, emb_empty)
    return denoiser(x_t, t, emb_empty)


@torch.no_grad()
def base_pair(denoiser: Denoiser, deltas: DeltaSet, x_t: Tensor, t: Tensor, emb_concept: Tensor,
              emb_empty: Tensor) -> tuple[Tensor, Tensor]:
    """(e_0, e_c): the frozen base's (deltas off) predictions for the anchor and the concept, in
    one batch."""
    with deltas.disabled():
        eps = denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([emb_empty, emb_concept]))
    e_0, e_c = eps.chunk(2)
    return e_0, e_c


def negative_guidance(e_0: Tensor, e_c: Tensor, eta: float) -> Tensor:
    """ESD's target e_0 - eta (e_c - e_0)."""
    return e_0 - eta * (e_c - e_0)


@torch.no_grad()
def esd_target(denoiser: Denoiser, deltas: DeltaSet, x_t: Tensor, t: Tensor, emb_concept: Tensor,
               emb_empty: Tensor, eta: float) -> Tensor:
    """e_0 - eta (e_c - e_0) from the frozen base (deltas off); both passes in one batch."""
    return negative_guidance(*base_pair(denoiser, deltas, x_t, t, emb_concept, emb_empty), eta)
