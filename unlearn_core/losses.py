"""Distances between the student's noise prediction and its target.

"Towards robust concept erasure in diffusion models" proposes L2, Jensen-Shannon and Cramér-Wold
in place of SDD's L2. Each entry of ``LOSSES`` is a callable
``(eps_student, eps_target, **options) -> scalar tensor`` on predictions of shape (B, C, H, W).

- ``l2``: mean squared error (SDD, Kim et al. 2023).
- ``jensen_shannon``: each channel's values become a distribution by a softmax over the H*W
  positions (temperature tau): P = softmax(e_s/tau), Q = softmax(e_0/tau), M = (P+Q)/2,
  JS = KL(P||M)/2 + KL(Q||M)/2, in log space (log M by logsumexp). Bounded by ln 2. Blind to a
  constant added to a whole channel (softmax is shift-invariant).
- ``cramer_wold``: the CWAE two-sample distance (Tabor et al. 2018, https://arxiv.org/abs/1805.09235)
  between the *batch* of student predictions and the *batch* of targets, each flattened to R^D:
  d^2 = 1/(2 n^2 sqrt(pi*gamma)) [sum phi_D(|xi-xj|^2/4g) + sum phi_D(|yi-yj|^2/4g)
  - 2 sum phi_D(|xi-yj|^2/4g)], phi_D(s) = (1 + 4s/(2D-3))^(-1/2). A distance between sets: at
  batch 1 it is only a saturating function of the L2 distance, so train with batch >= 2. The
  ``sliced`` mode averages the exact 1-D Gaussian-smoothed term over random unit directions.
- ``jensen_shannon_gaussian``: JS between the two Gaussian reverse steps the predictions imply,
  a function of Delta = scale * |e_s - e_0| only: JS = ln 2 - E_x~N(0,1)[softplus(Delta x -
  Delta^2/2)], by a Gauss-Hermite sum (~Delta^2/8 when small, -> ln 2 when large).

``build_loss(config, generator)`` binds the configured distance to its options, the timestep
weighting and the per-timestep scale the Gaussian JS needs: the trainer calls the result as
``loss(eps_student, eps_target, t, coefficients)`` whatever the loss is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import EraseConfig

Tensor = torch.Tensor
LossFn = Callable[..., Tensor]

LN2 = math.log(2.0)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"predictions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"predictions need a batch axis, got shape {tuple(a.shape)}")


def l2(eps_student: Tensor, eps_target: Tensor) -> Tensor:
    """Mean squared error over every value. Shapes (B, ...) -> scalar."""
    _check_pair(eps_student, eps_target)
    return F.mse_loss(eps_student, eps_target)


def jensen_shannon(
    eps_student: Tensor, eps_target: Tensor, temperature: float = 1.0, axis: str = "spatial"
) -> Tensor:
    """JS divergence between softmax distributions, mean over batch (and channels).

    axis="spatial": one distribution per (sample, channel) over the H*W positions.
    axis="all": one distribution per sample over all C*H*W values.
    """
    _check_pair(eps_student, eps_target)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if axis == "spatial":
        if eps_student.dim() < 3:
            raise ValueError("axis='spatial' needs predictions of shape (B, C, ...)")
        flat_s = eps_student.flatten(2)  # (B, C, H*W)
        flat_t = eps_target.flatten(2)
    elif axis == "all":
        flat_s = eps_student.flatten(1)  # (B, C*H*W)
        flat_t = eps_target.flatten(1)
    else:
        raise ValueError(f"axis must be 'spatial' or 'all', got {axis!r}")
    # Softmax in float32 at least: bf16 log-probabilities lose the small differences JS measures.
    work = torch.promote_types(flat_s.dtype, torch.float32)
    log_p = torch.log_softmax(flat_s.to(work) / temperature, dim=-1)
    log_q = torch.log_softmax(flat_t.to(work) / temperature, dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - LN2
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    js = 0.5 * (kl_pm + kl_qm)
    return js.clamp_min(0.0).mean().to(eps_student.dtype)


def silverman_gamma(n: int) -> float:
    """CWAE's default smoothing for n samples: gamma = (4 / (3 n))^(2/5)."""
    return (4.0 / (3.0 * n)) ** 0.4


def _phi_d(s: Tensor, dim: int) -> Tensor:
    # Asymptotic form of the CW kernel in R^D (Tabor et al. 2018, eq. for phi_D); good for D >~ 20.
    return (1.0 + 4.0 * s / (2.0 * dim - 3.0)).rsqrt()


def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    # Explicit differences (not the |x|^2+|y|^2-2xy trick): exact zeros on identical rows, so the
    # distance of a set to itself is exactly 0 in any dtype.
    return (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)  # (n, m)


def cramer_wold(
    eps_student: Tensor,
    eps_target: Tensor,
    mode: str = "closed_form",
    bandwidth: float = 0.0,
    directions: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Squared Cramér-Wold distance between the batch of student and the batch of target predictions.

    Each sample is flattened to a point of R^D; the batch is the set. bandwidth 0 = Silverman.
    mode "sliced" projects on ``directions`` random unit vectors (drawn with ``generator``).
    """
    _check_pair(eps_student, eps_target)
    work = torch.promote_types(eps_student.dtype, torch.float32)
    x = eps_student.flatten(1).to(work)  # (n, D)
    y = eps_target.flatten(1).to(work)
    n, dim = x.shape
    gamma = bandwidth if bandwidth > 0 else silverman_gamma(n)
    norm = 1.0 / (2.0 * n * n * math.sqrt(math.pi * gamma))
    if mode == "closed_form":
        if dim < 4:
            raise ValueError("closed-form Cramér-Wold needs D >= 4 values per sample; use 'sliced'")

        def k(a: Tensor, b: Tensor) -> Tensor:
            return _phi_d(_sq_dists(a, b) / (4.0 * gamma), dim).sum()

    elif mode == "sliced":
        if directions < 1:
            raise ValueError(f"directions must be >= 1, got {directions}")
        v = torch.randn(dim, directions, generator=generator, device="cpu", dtype=torch.float32)
        v = (v / v.norm(dim=0, keepdim=True)).to(device=x.device, dtype=work)  # (D, K)
        px, py = x @ v, y @ v  # (n, K)

        def k(a: Tensor, b: Tensor) -> Tensor:
            # exact 1-D term: Gaussian-smoothed densities, averaged over directions
            diff = a[:, None, :] - b[None, :, :]  # (n, n, K)
            return torch.exp(-diff.pow(2) / (4.0 * gamma)).sum((0, 1)).mean()

        x, y = px, py
    else:
        raise ValueError(f"mode must be 'closed_form' or 'sliced', got {mode!r}")
    d2 = norm * (k(x, x) + k(y, y) - 2.0 * k(x, y))
    return d2.clamp_min(0.0).to(eps_student.dtype)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite.hermgauss(48)


def jensen_shannon_gaussian(
    eps_student: Tensor, eps_target: Tensor, scale: Tensor | float = 1.0
) -> Tensor:
    """JS between N(mu_s, s^2 I) and N(mu_t, s^2 I) reverse steps; Delta = scale * |e_s - e_t|.

    ``scale`` (per sample, shape (B,)) is beta_t / (sqrt(alpha_t) sqrt(1-alpha_bar_t) sigma_t).
    """
    _check_pair(eps_student, eps_target)
    work = torch.promote_types(eps_student.dtype, torch.float32)
    diff = (eps_student - eps_target).flatten(1).to(work)
    scale_t = torch.as_tensor(scale, dtype=work, device=diff.device).reshape(-1)
    delta_sq = diff.pow(2).sum(-1) * scale_t.pow(2)  # (B,)
    # JS is even and smooth in Delta; the clamp keeps d|d|/dd finite at d = 0.
    delta = delta_sq.clamp_min(1e-30).sqrt()[:, None]
    nodes = torch.as_tensor(_GH_NODES * math.sqrt(2.0), dtype=work, device=diff.device)
    weights = torch.as_tensor(_GH_WEIGHTS / math.sqrt(math.pi), dtype=work, device=diff.device)
    expect = (F.softplus(delta * nodes - delta_sq[:, None] / 2.0) * weights).sum(-1)
    return (LN2 - expect).clamp_min(0.0).mean().to(eps_student.dtype)


LOSSES: dict[str, LossFn] = {
    "l2": l2,
    "jensen_shannon": jensen_shannon,
    "cramer_wold": cramer_wold,
    "jensen_shannon_gaussian": jensen_shannon_gaussian,
}


@dataclass(frozen=True)
class TimestepCoefficients:
    """Per-DDPM-timestep factors of the loss, indexed by t: ``snr_weight`` (x0-space weight,
    mean 1 over t) and ``js_scale`` (the Gaussian JS's |mu_s - mu_t| / sigma_t per unit of eps)."""

    snr_weight: Tensor  # (T,)
    js_scale: Tensor  # (T,)


def timestep_coefficients(alphas_cumprod: Tensor) -> TimestepCoefficients:
    """The SNR weight and the Gaussian-JS scale of every timestep of the schedule."""
    ab = alphas_cumprod.double()
    snr_w = (1.0 / ab - 1.0).sqrt()
    snr_w = snr_w / snr_w.mean()
    ab_prev = torch.cat([torch.ones(1, dtype=ab.dtype), ab[:-1]])
    beta = 1.0 - ab / ab_prev
    alpha = 1.0 - beta
    # |mu_s - mu_t| / sigma_t with sigma_t^2 = beta_t (DDPM's "large" variance, defined at t = 0)
    js_scale = beta.sqrt() / (alpha.sqrt() * (1.0 - ab).sqrt())
    return TimestepCoefficients(snr_weight=snr_w.float(), js_scale=js_scale.float())


StepLoss = Callable[[Tensor, Tensor, Tensor, TimestepCoefficients], Tensor]


def build_loss(config: EraseConfig, generator: torch.Generator | None = None) -> StepLoss:
    """``config.loss`` with its options bound: ``loss(eps_student, eps_target, t, coefficients)``.

    Both predictions are taken in float32; with ``timestep_weighting="snr"`` each sample is
    weighted by its timestep's SNR weight first; the Gaussian JS gets its per-timestep scale.
    ``generator`` draws the sliced Cramér-Wold directions.
    """
    fn = LOSSES[config.loss]
    if config.loss == "jensen_shannon":
        fn = functools.partial(fn, temperature=config.js_temperature, axis=config.js_axis)
    elif config.loss == "cramer_wold":
        fn = functools.partial(fn, mode=config.cw_mode, bandwidth=config.cw_bandwidth,
                               directions=config.cw_directions, generator=generator)
    weighted = config.timestep_weighting == "snr"
    gaussian = config.loss == "jensen_shannon_gaussian"

    def loss(eps_student: Tensor, eps_target: Tensor, t: Tensor,
             coefficients: TimestepCoefficients) -> Tensor:
        eps_student, eps_target = eps_student.float(), eps_target.float()
        if weighted:
            w = coefficients.snr_weight.to(t.device)[t].view(-1, 1, 1, 1)
            eps_student, eps_target = eps_student * w, eps_target * w
        if gaussian:
            return fn(eps_student, eps_target, scale=coefficients.js_scale.to(t.device)[t])
        return fn(eps_student, eps_target)

    return loss
