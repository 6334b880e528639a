"""A faithful re-implementation of the official SDD training loop's *structure*, for the speed
benchmark only (Kim et al. 2023, https://arxiv.org/abs/2307.05977):

- two full UNets in memory (student and EMA teacher: ``copy.deepcopy``),
- every step samples a fresh trajectory from z_T with the teacher, 50 DDIM steps up to a random
  n ~ U{0..49}, guided with scale 3, the conditional and unconditional passes *not* batched,
- fp32, batch 1, full fine-tuning of the cross-attention weights, AdamW lr 1e-5,
- loss L2(student(z_t, c), sg[student(z_t, empty)]), EMA 0.999 over the whole UNet.
(n = 0 samples no step here; the official code's n = 0 bug would make it slower still.)
It runs on the same Denoiser protocol as our engine, so both are timed on the same model.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from unlearn_core.denoiser import DiffusersDenoiser
from unlearn_core.sampling import band_timestep, ddim_step, ddim_timesteps
from unlearn_core.selection import select_layers


class ReferenceSDD:
    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, emb_concept: torch.Tensor,
                 emb_empty: torch.Tensor, resolution: int, seed: int = 0, lr: float = 1e-5,
                 ema_decay: float = 0.999, ddim_steps: int = 50, guidance: float = 3.0) -> None:
        self.student = unet
        self.teacher = copy.deepcopy(unet)  # the second full UNet the official code keeps
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.trained = [m.weight for m in select_layers(self.student, "xattn").values()]
        for p in self.trained:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.trained, lr=lr, weight_decay=1e-4)
        self.ab = alphas_cumprod
        self.c, self.e = emb_concept, emb_empty
        self.res, self.decay, self.steps, self.w = resolution, ema_decay, ddim_steps, guidance
        self.g = torch.Generator().manual_seed(seed)
        self.unet_evals = 0
        self.student_d = DiffusersDenoiser(self.student, alphas_cumprod)
        self.teacher_d = DiffusersDenoiser(self.teacher, alphas_cumprod)

    # The loop's three random draws, in the order it makes them: the trajectory's length, its
    # z_T, the training timestep in the band of the state reached. (tests/test_trainer.py
    # overrides them to feed the trainer's draws to this loop.)
    def _depth(self) -> int:
        """n ~ U{0..N-1}."""
        return int(torch.randint(0, self.steps, (1,), generator=self.g))

    def _noise(self) -> torch.Tensor:
        """z_T ~ N(0, I), (1, 4, res, res)."""
        return torch.randn(1, 4, self.res, self.res, generator=self.g)

    def _timestep(self, n: int) -> int:
        """A DDPM timestep in the band of DDIM step n."""
        return band_timestep(n, self.steps, 1000, self.g)

    @torch.no_grad()
    def _sample(self, n: int) -> torch.Tensor:
        ts = ddim_timesteps(self.steps)
        dev = self.c.device
        x = self._noise().to(dev)
        for k in range(n):
            t = ts[k].reshape(1).to(dev)
            eps_c = self.teacher_d(x, t, self.c)  # separate passes, as the official code
            eps_u = self.teacher_d(x, t, self.e)
            self.unet_evals += 2
            eps = eps_u + self.w * (eps_c - eps_u)
            ab_prev = self.ab[ts[k + 1]] if k + 1 < self.steps else self.ab[0]
            x = ddim_step(x, eps, self.ab[ts[k]], ab_prev)
        return x

    def step(self, n: int | None = None) -> float:
        """One training step; ``n`` = the trajectory length (random, as the official code, when
        None)."""
        if n is None:
            n = self._depth()
        x = self._sample(n)
        t = torch.tensor([self._timestep(n)]).to(x.device)
        with torch.no_grad():
            target = self.student_d(x, t, self.e)
        eps = self.student_d(x, t, self.c)
        loss = F.mse_loss(eps, target)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.opt.step()
        with torch.no_grad():  # EMA over every parameter of the second UNet
            for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                pt.lerp_(ps, 1 - self.decay)
        self.unet_evals += 2
        return float(loss.detach())

    def run(self, steps: int, stratified: bool = False, sync=lambda: None) -> list[float]:
        """Time ``steps`` steps. ``stratified``: trajectory lengths evenly spread over 0..N-1
        (mean (N-1)/2, the expectation of the official U{0..N-1}) instead of random draws, so a
        few timed steps cost what the average step of a long run costs. ``sync`` waits for the
        device before each clock read."""
        lengths = [int((k + 0.5) * self.steps / steps) for k in range(steps)] if stratified \
            else [None] * steps
        times = []
        for n in lengths:
            sync()
            t0 = time.perf_counter()
            self.step(n)
            sync()
            times.append(time.perf_counter() - t0)
        return times
