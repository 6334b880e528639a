"""The partial-diffusion probe (Sharma et al. 2024, "Unlearning or Concealment? A Critical Analysis
and Evaluation Metrics for Unlearning in Diffusion Models", https://arxiv.org/abs/2409.05668).

From a fixed-seed x_T, the *base* model runs the first k = psi * N (rounded half up) of N DDIM
steps of the concept prompt's guided trajectory and the *erased* model runs the remaining N - k.
(At N = 50, psi = 0.001 is under half a step and rounds to 0, the erased model alone, and 0.01
is half a step and rounds up to 1; more sampling steps resolve small psi.
``ProbeResult.base_steps`` records the k each psi got.) An erasure that
only conceals the concept lets it come back once the base model has laid out the image's coarse
structure. For each psi the finished images are scored for the concept's presence (CLIP score
against the concept prompt, or a judge's confidence), and

    CCS-style score = mean over psi of the mean presence over seeds      (lower is better),

reported with the curve itself. psi = 0 is the erased model alone and psi = 1 the base model
alone; both are computed as references. The base trajectory is sampled once and its states
reused for every psi; psis that round to the same k are run once. Generic over the denoiser
protocol: two denoisers, or one denoiser plus an erasure (``EraseResult``, ``DeltaErasure``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..denoiser import Denoiser, module_device, module_dtype
from ..errors import Cancelled, ConfigError
from ..sampling import ddim_sample
from .config import ProbeConfig
from .generation import Decode, Erasure, erased_denoiser, expand_context, initial_noise
from .images import labelled_grid
from .plots import probe_plot
from .scorers import Scorer

Tensor = torch.Tensor
Progress = Callable[[int, int], "bool | None"]  # (done, total) UNet steps; return True to cancel


def base_steps_for(psis: Sequence[float], num_steps: int) -> list[int]:
    """Base-model DDIM steps for each psi: psi * N rounded half up, in 0..N."""
    return [min(num_steps, max(0, math.floor(p * num_steps + 0.5))) for p in psis]


@dataclass
class ProbeResult:
    """The probe's outcome. ``presence`` (P, B) per psi and seed; ``curve`` (P,) its mean over
    seeds; ``ccs`` the mean of the curve. ``images`` (P, B, 3, H, W) the finished images;
    ``erased_images``/``base_images`` (B, 3, H, W) the psi = 0 and psi = 1 references with their
    presence (B,)."""

    concept: str
    psis: tuple[float, ...]
    base_steps: tuple[int, ...]
    num_steps: int
    presence: Tensor
    curve: Tensor
    ccs: float
    images: Tensor
    erased_images: Tensor
    base_images: Tensor
    erased_presence: Tensor
    base_presence: Tensor
    score_name: str = "presence"
    config: dict[str, Any] = field(default_factory=dict)

    def monotone_violations(self, tolerance: float = 0.0) -> list[tuple[float, float, float]]:
        """(psi_a, psi_b, drop) where the curve falls by more than ``tolerance`` from psi_a to the
        next larger psi_b. Empty when the curve is non-decreasing in psi (within tolerance)."""
        order = sorted(range(len(self.psis)), key=lambda i: self.psis[i])
        out = []
        for a, b in zip(order, order[1:]):
            drop = float(self.curve[a] - self.curve[b])
            if drop > tolerance:
                out.append((self.psis[a], self.psis[b], drop))
        return out

    def plot(self) -> Tensor:
        """The curve as an image (3, H, W) in [0, 1]."""
        return probe_plot(self.psis, self.presence, self.concept, self.score_name, self.ccs,
                          float(self.erased_presence.mean()), float(self.base_presence.mean()))

    def grid(self) -> Tensor:
        """The finished images as one labelled image: rows = erased alone, each psi, base alone;
        columns = seeds. (3, H, W) in [0, 1]."""
        rows = torch.cat([self.erased_images[None], self.images, self.base_images[None]])
        # "psi", not the Greek letter: PIL's default font has no glyph for it
        labels = (["erased model alone (psi=0)"]
                  + [f"psi={p:g} ({k}/{self.num_steps} base steps)"
                     for p, k in zip(self.psis, self.base_steps)]
                  + ["base model alone (psi=1)"])
        seeds = self.config.get("seeds") or []
        columns = [f"seed {s}" for s in seeds]
        if len(seeds) != rows.shape[1]:  # x_T was given directly, not drawn from the seeds
            columns = [f"#{i}" for i in range(rows.shape[1])]
        return labelled_grid([(f"finished by the erased model: {self.concept}", rows)], labels,
                             columns)

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "score": self.score_name,
            "ccs": self.ccs,
            "psis": list(self.psis),
            "base_steps": list(self.base_steps),
            "num_steps": self.num_steps,
            "curve": [float(v) for v in self.curve],
            "presence": [[float(v) for v in row] for row in self.presence],
            "erased_alone": float(self.erased_presence.mean()),
            "base_alone": float(self.base_presence.mean()),
            "config": self.config,
        }

    def markdown(self) -> str:
        lines = [f"**Partial-diffusion probe** of {self.concept!r} ({self.score_name}; lower is "
                 "better)", "", f"CCS-style score: **{self.ccs:.4g}** (mean over psi); erased model "
                 f"alone {float(self.erased_presence.mean()):.4g}, base model alone "
                 f"{float(self.base_presence.mean()):.4g}", "",
                 "| psi | base steps | presence (mean over seeds) |", "|---:|---:|---:|"]
        for p, k, v in zip(self.psis, self.base_steps, self.curve.tolist()):
            lines.append(f"| {p:g} | {k}/{self.num_steps} | {v:.4g} |")
        return "\n".join(lines)


def _decode_all(decode: Decode, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([decode(x[i : i + batch_size]).float().clamp(0, 1).cpu()
                      for i in range(0, x.shape[0], batch_size)])


def _start_noise(config: ProbeConfig, x_T: Tensor | None, latent_shape: Sequence[int] | None
                 ) -> Tensor:
    """The given ``x_T``, or one noise image per seed of ``config.seeds`` at ``latent_shape``."""
    if x_T is not None:
        return x_T
    if latent_shape is None:
        raise ConfigError("latent_shape", None, "neither x_T nor the latent shape given",
                          "pass latent_shape=(C, h, w) (SD-1 at 512 px: (4, 64, 64))")
    return initial_noise(config.seeds, latent_shape)


@torch.no_grad()
def partial_diffusion_probe(
    base: Denoiser,
    erased: Denoiser | Erasure,
    cond: Tensor,
    uncond: Tensor,
    scorer: Scorer,
    config: ProbeConfig,
    decode: Decode,
    latent_shape: Sequence[int] | None = None,
    x_T: Tensor | None = None,
    on_progress: Progress | None = None,
) -> ProbeResult:
    """Run the probe. ``cond``/``uncond``: the concept prompt's and the empty prompt's embeddings
    (1 or B, L, D); ``decode``: final latents -> images (B, 3, H, W) in [0, 1]; ``x_T`` (B, C, h, w)
    or ``latent_shape`` (C, h, w) with ``config.seeds``. ``on_progress(done, total)`` after every
    UNet step of each batch (a CFG pair counts once); returning True cancels (raises ``Cancelled``).
    """
    n = config.sampling_steps
    x_T = _start_noise(config, x_T, latent_shape)
    device, dtype = module_device(base.module), module_dtype(base.module)
    batch = x_T.shape[0]
    x_T = x_T.to(device, dtype)
    cond = expand_context(cond, batch).to(device, dtype)
    uncond = expand_context(uncond, batch, "uncond").to(device, dtype)
    base_steps = base_steps_for(config.psis, n)
    runs = sorted(set(base_steps) | {0})  # 0: the erased model alone, always reported
    chunks = [slice(i, i + config.batch_size) for i in range(0, batch, config.batch_size)]
    total = len(chunks) * (n + sum(n - k for k in runs if k < n))  # sampler calls, per chunk
    done = 0

    def tick(k: int, stop: int) -> None:
        # ddim_sample reports the state before each step k < stop, then the result (k = stop).
        nonlocal done
        if k < stop:
            done += 1
            if on_progress is not None and on_progress(done, total):
                raise Cancelled("the probe was cancelled")

    # 1. The base trajectory, once; keep the states the erased model will start from.
    wanted = {k for k in runs if k < n}
    states: dict[int, list[Tensor]] = {k: [] for k in wanted}
    base_final = []

    def on_base_state(k: int, x: Tensor) -> None:
        if k in wanted:
            states[k].append(x)
        tick(k, n)

    for sl in chunks:
        base_final.append(ddim_sample(base, x_T[sl], cond[sl], uncond[sl], config.guidance, n,
                                      on_state=on_base_state))
    finals = {n: torch.cat(base_final)}

    # 2. The erased model finishes each distinct start state (k = 0: the erased model alone).
    with erased_denoiser(base, erased, config.strength) as model:
        for k in sorted(wanted):
            start = torch.cat(states[k])  # (B, C, h, w)
            finals[k] = torch.cat([
                ddim_sample(model, start[sl], cond[sl], uncond[sl], config.guidance, n, start=k,
                            on_state=lambda j, x: tick(j, n))
                for sl in chunks
            ])

    # 3. Decode and score.
    images = {k: _decode_all(decode, x, config.batch_size) for k, x in finals.items()}
    prompts = [config.concept] * batch
    presence_by_k = {k: scorer(img, prompts).float().cpu() for k, img in images.items()}
    presence = torch.stack([presence_by_k[k] for k in base_steps])  # (P, B)
    curve = presence.mean(1)
    return ProbeResult(
        concept=config.concept, psis=tuple(config.psis), base_steps=tuple(base_steps), num_steps=n,
        presence=presence, curve=curve, ccs=float(curve.mean()),
        images=torch.stack([images[k] for k in base_steps]),
        erased_images=images[0], base_images=images[n],
        erased_presence=presence_by_k[0], base_presence=presence_by_k[n],
        score_name=getattr(scorer, "name", "presence"), config=config.to_dict(),
    )
