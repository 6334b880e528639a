"""The denoiser protocol: what the engine needs from a diffusion model, and nothing more.

An epsilon-prediction model eps(x_t, t, context) with its DDPM schedule alpha_bar_t
(Ho et al. 2020, https://arxiv.org/abs/2006.11239), the torch module holding the layers that
train, and a map from its own layer names to canonical (diffusers) names used in files. Extra
conditioning (SDXL's pooled text and size embedding, later) travels as keyword tensors.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Tensor = torch.Tensor

NUM_TRAIN_TIMESTEPS = 1000


def scaled_linear_alphas_cumprod(
    steps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """SD-1's schedule: betas = linspace(sqrt(b0), sqrt(b1), T)^2; returns alpha_bar (T,) float64."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@runtime_checkable
class Denoiser(Protocol):
    """What the trainer, the sampler and the metrics take."""

    module: nn.Module  # holds the layers that train (named_modules() gives native names)
    alphas_cumprod: Tensor  # (T,) alpha_bar_t, float64

    def __call__(self, x_t: Tensor, t: Tensor, context: Tensor, **extra: Any) -> Tensor:
        """eps prediction (B, C, H, W) for x_t (B, C, H, W), t (B,), context (B, L, D)."""
        ...

    def canonical_name(self, native: str) -> str:
        """diffusers-style layer name for one of ``module``'s own layer names."""
        ...

    def native_name(self, canonical: str) -> str:
        """Inverse of ``canonical_name``."""
        ...


class DiffusersDenoiser:
    """Adapter for diffusers' ``UNet2DConditionModel`` (SD-1.x, and the toy world's UNet)."""

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor | None = None) -> None:
        self.module = unet
        self.alphas_cumprod = (
            scaled_linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.double()
        )

    def __call__(self, x_t: Tensor, t: Tensor, context: Tensor, **extra: Any) -> Tensor:
        return self.module(x_t, t, encoder_hidden_states=context, **extra).sample

    @property
    def in_channels(self) -> int:
        return int(self.module.config.in_channels)

    @property
    def context_dim(self) -> int:
        dim = self.module.config.cross_attention_dim
        return int(dim if isinstance(dim, int) else dim[0])

    def canonical_name(self, native: str) -> str:
        return native

    def native_name(self, canonical: str) -> str:
        return canonical


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
