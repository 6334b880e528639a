"""Generating toy images and judging them: the toy world's measurement loop.

Sampling is the engine's own DDIM with classifier-free guidance (``unlearn_core.sampling``) over
the diffusers denoiser adapter, so what the benchmark measures is what the engine trains against.
Each image's starting noise x_T comes from its own seed, so two models given the same seeds see
the same evaluation noise (common random numbers): differences between them are not seed luck.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..denoiser import DiffusersDenoiser
from ..metrics.generation import initial_noise as metrics_initial_noise
from ..sampling import ddim_sample
from .dataset import COLOURS, IMAGE_SIZE, SHAPES, TEXTURES, caption
from .judges import Judge, judge
from .model import ToyModel

DEFAULT_GUIDANCE = 3.0
DEFAULT_STEPS = 20


def initial_noise(seeds: Sequence[int], shape: tuple[int, int, int] = (3, IMAGE_SIZE, IMAGE_SIZE)) -> torch.Tensor:
    """x_T (B, 3, 16, 16): image i drawn from N(0, I) with its own ``torch.Generator(seeds[i])``
    (the metrics' ``initial_noise`` at the toy image size, so both draw the same noise)."""
    return metrics_initial_noise(seeds, shape)


@torch.no_grad()
def generate(
    model: ToyModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    guidance: float = DEFAULT_GUIDANCE,
    steps: int = DEFAULT_STEPS,
    unet: nn.Module | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Images (B, 3, 16, 16) in [-1, 1], one per (prompt, seed), by DDIM (η = 0) with CFG.

    ``unet`` replaces the model's UNet (e.g. an erased one) with the same text encoder, so a base
    and an erased model can be compared on identical prompts and noise.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"generate needs one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    if not prompts:
        return torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    denoiser = DiffusersDenoiser(unet if unet is not None else model.unet, model.alphas_cumprod)
    device = next(denoiser.module.parameters()).device
    dtype = next(denoiser.module.parameters()).dtype
    x_T = initial_noise(seeds).to(device, dtype)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        cond = model.encode(chunk).to(device, dtype)  # (b, L, D)
        uncond = model.encode([""] * len(chunk)).to(device, dtype)
        x0 = ddim_sample(denoiser, x_T[i : i + batch_size], cond, uncond, guidance=guidance, num_steps=steps)
        out.append(x0.float().clamp(-1, 1).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class PromptSet:
    """Full-caption prompts with their labels: ``prompts`` B strings, labels (B,) int64."""

    prompts: tuple[str, ...]
    shape: torch.Tensor
    colour: torch.Tensor
    texture: torch.Tensor

    def labels(self) -> dict[str, torch.Tensor]:
        return {"shape": self.shape, "colour": self.colour, "texture": self.texture}

    def __len__(self) -> int:
        return len(self.prompts)


def all_prompts(repeats: int = 1, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = COLOURS,
                textures: Sequence[str] = TEXTURES) -> PromptSet:
    """Every (shape, colour, texture) combination as "a {colour} {shape}, {texture}", ``repeats`` times."""
    triples = [
        (SHAPES.index(s), COLOURS.index(c), TEXTURES.index(t))
        for _ in range(repeats) for s in shapes for c in colours for t in textures
    ]
    s, c, t = (torch.tensor(x) for x in zip(*triples))
    return PromptSet(tuple(caption(*tr) for tr in triples), s, c, t)


def accuracy(predicted: dict[str, torch.Tensor], prompts: PromptSet) -> dict[str, float]:
    """Share of images whose judged class equals the prompt's label, per axis."""
    labels = prompts.labels()
    return {axis: (predicted[axis] == labels[axis]).float().mean().item() for axis in labels}


@torch.no_grad()
def judged_accuracy(
    model: ToyModel,
    judges: dict[str, Judge],
    repeats: int = 1,
    seed: int = 0,
    guidance: float = DEFAULT_GUIDANCE,
    steps: int = DEFAULT_STEPS,
    unet: nn.Module | None = None,
) -> dict[str, float]:
    """Generate every combination ``repeats`` times (48 per repeat) and judge it; per-axis accuracy.

    Seeds are ``seed, seed + 1, ...`` in prompt order.
    """
    prompts = all_prompts(repeats)
    seeds = range(seed, seed + len(prompts))
    images = generate(model, prompts.prompts, list(seeds), guidance, steps, unet=unet)
    return accuracy(judge(images, judges), prompts)
