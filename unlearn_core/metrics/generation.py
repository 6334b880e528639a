"""Making the images the metrics look at: a base model and its erased version on the same noise.

Each image's starting noise x_T comes from its own seed (``torch.Generator(seed)``), so a base and
an erased model given the same seeds see the same evaluation noise (common random numbers), and
differences between them are not seed luck. Sampling is the engine's own DDIM with classifier-free
guidance (``unlearn_core.sampling``). The erased model is either a second denoiser, or the base
denoiser with an erasure (anything with ``applied(denoiser, strength)``, e.g. ``EraseResult``)
added for the duration of a ``with`` block; the base weights are never written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from ..delta import Delta, applied
from ..denoiser import Denoiser, module_device, module_dtype
from ..errors import ConfigError
from ..sampling import ddim_sample

Tensor = torch.Tensor
Decode = Callable[[Tensor], Tensor]  # final latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1]


@runtime_checkable
class Erasure(Protocol):
    """Something that runs a denoiser with an erasure added: ``EraseResult``, ``DeltaErasure``."""

    def applied(self, denoiser: Denoiser, strength: float = 1.0) -> contextlib.AbstractContextManager:
        ...


class DeltaErasure:
    """An erasure read from a file (``files.load_erasure(...).deltas``), keyed by canonical names."""

    def __init__(self, deltas: Mapping[str, Delta], metadata: Mapping[str, Any] | None = None) -> None:
        self.deltas = dict(deltas)
        self.metadata = dict(metadata or {})

    @contextlib.contextmanager
    def applied(self, denoiser: Denoiser, strength: float = 1.0) -> Iterator[None]:
        native = {denoiser.native_name(n): d for n, d in self.deltas.items()}
        with applied(denoiser.module, native, strength):
            yield


@contextlib.contextmanager
def erased_denoiser(base: Denoiser, erased: Denoiser | Erasure, strength: float = 1.0
                    ) -> Iterator[Denoiser]:
    """The erased model for the ``with`` block: ``erased`` itself, or ``base`` with the erasure on."""
    if isinstance(erased, Erasure) and not hasattr(erased, "alphas_cumprod"):
        with erased.applied(base, strength):
            yield base
        return
    if strength != 1.0:
        raise ConfigError("strength", strength, "a strength needs an erasure to scale, but the erased "
                          "model was given as a finished model", "set strength to 1.0, or pass the "
                          "erasure (EraseResult or file) instead of the erased model")
    yield erased


def initial_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T (B, *shape): row i drawn from N(0, I) with ``torch.Generator().manual_seed(seeds[i])``.

    The toy world's ``initial_noise`` is this one at its image size, so its evaluations and these
    agree.
    """
    rows = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    if not rows:
        raise ConfigError("seeds", list(seeds), "no seed given", "give at least one seed")
    return torch.cat(rows).to(device, dtype)


def expand_context(context: Tensor, batch: int, name: str = "conditioning") -> Tensor:
    """(1 or B, L, D) -> (B, L, D)."""
    if context.dim() != 3:
        raise ConfigError(name, tuple(context.shape), "conditioning must be (B, L, D) embeddings",
                          "encode the prompt with the model's text encoder")
    if context.shape[0] == batch:
        return context
    if context.shape[0] == 1:
        return context.expand(batch, -1, -1)
    raise ConfigError(name, tuple(context.shape), f"{batch} images need 1 or {batch} embeddings",
                      "give one embedding for all images or one per image")


def unit_from_signed(x: Tensor) -> Tensor:
    """Decode for models that work in image space in [-1, 1] (the toy world): (x + 1) / 2, clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def signed_from_unit(images: Tensor) -> Tensor:
    """The inverse: images in [0, 1] -> [-1, 1] (2x - 1), for a model or judge that reads them."""
    return images * 2 - 1


@torch.no_grad()
def generate_images(
    denoiser: Denoiser,
    x_T: Tensor,
    cond: Tensor,
    uncond: Tensor,
    decode: Decode,
    guidance: float,
    num_steps: int,
    batch_size: int = 16,
) -> Tensor:
    """Full DDIM runs from x_T (B, C, h, w) -> decoded images (B, 3, H, W) in [0, 1], on the CPU."""
    device, dtype = module_device(denoiser.module), module_dtype(denoiser.module)
    n = x_T.shape[0]
    cond, uncond = expand_context(cond, n), expand_context(uncond, n, "uncond")
    out = []
    for i in range(0, n, batch_size):
        sl = slice(i, i + batch_size)
        x0 = ddim_sample(denoiser, x_T[sl].to(device, dtype), cond[sl].to(device, dtype),
                         uncond[sl].to(device, dtype), guidance, num_steps)
        out.append(decode(x0).float().clamp(0, 1).cpu())
    return torch.cat(out)
