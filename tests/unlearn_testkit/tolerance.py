"""Tolerances for float32 results, derived from the computation rather than measured on one CPU.

Two float32 evaluations of the same expression differ when their sums run in another order: another
batch size, thread count, SIMD width (AVX2 against AVX-512) or kernel picks another blocking. The
rounding error of a sum of ``n`` terms grows like ``eps * sqrt(n)`` relative to the terms' size
(the usual statistical estimate: independent roundings add like a random walk; the worst case is
``eps * n``). A result that passes through ``chain`` such reductions one after another, each
feeding the next with values of the same size, collects about ``chain`` times that. ``k`` covers
the tail of the distribution.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 2**-23 ~ 1.19e-7: float32's relative rounding step
K = 4.0


def fp32_atol(n: int, magnitude: float = 1.0, chain: float = 1.0, k: float = K) -> float:
    """Absolute tolerance for float32 values of size ``magnitude`` computed through ``chain``
    reductions of length up to ``n``: ``k * eps32 * sqrt(n) * chain * magnitude``."""
    if n < 1 or chain <= 0 or magnitude < 0:
        raise ValueError(f"fp32_atol: n={n}, chain={chain}, magnitude={magnitude}")
    return k * EPS32 * math.sqrt(n) * chain * float(magnitude)


def sampling_chain(steps: int, guidance: float) -> float:
    """The ``chain`` of a guided DDIM run: each step combines two UNet evaluations as
    ``u + g (c - u)``, whose errors add with weights ``|1 - g| + |g|``, and feeds the next step."""
    return steps * (abs(1.0 - guidance) + abs(guidance))


def longest_reduction(module: torch.nn.Module) -> int:
    """The most inputs any one output of ``module``'s convolutions and linear layers sums over
    (for the small test models here these are longer than their attention and normalisation
    reductions)."""
    n = 1
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            n = max(n, m.in_channels // m.groups * math.prod(m.kernel_size))
        elif isinstance(m, torch.nn.Linear):
            n = max(n, m.in_features)
    return n
