"""DDIM sampling (eta = 0) with classifier-free guidance, and SDD's training-state sampler.

DDIM: Song et al. 2021 (https://arxiv.org/abs/2010.02502); guidance: Ho & Salimans 2022
(https://arxiv.org/abs/2207.12598), eps = eps_u + w (eps_c - eps_u), with the conditional and
unconditional passes in one batch. The timesteps follow LDM's uniform discretisation
(t_k = k*T/N + 1), as SDD's official code does.

Training states (SDD, Kim et al. 2023): from z_T ~ N(0, I) run the first n ~ U{0..N-1} DDIM steps
with the EMA teacher, then label the state with a DDPM timestep drawn inside the band of the step
reached. n = 0 means z_T itself (the official code runs the whole trajectory then; we do not).

Randomness is keyed (``distributed.keyed_generator``), so that any share of the states can be
drawn alone, by one process of a data-parallel run: the trajectory's z_T by (seed, trajectory
index); the depths of one draw's states (distinct while batch <= N) by (seed, draw), a permutation
of which slot s takes element s; each state's timestep in its band by (seed, draw, slot). A draw
is one group of states from one trajectory: the trainer's step n, or with several trajectories a
step (``trajectories_per_step`` = G) draw n*G + g for its group g. Every process that draws from a
trajectory runs it in full (no gradient).

With ``keep_uncond`` the sampler also keeps the teacher's empty-prompt prediction at every state,
which the guided pass computes anyway: that is the SDD target for a teacher target at no extra
UNet pass (``target_from="trajectory"``). Such states carry the sampler's own timestep t_k (the one
the kept prediction was made at) instead of a random timestep in the band.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .denoiser import Denoiser
from .distributed import keyed_generator

Tensor = torch.Tensor


def ddim_timesteps(num_steps: int, num_train: int = 1000) -> Tensor:
    """Descending DDIM timesteps, e.g. N=50 -> [981, 961, ..., 1]."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"num_steps must be in 1..{num_train}, got {num_steps}")
    stride = num_train // num_steps
    ts = torch.arange(0, num_steps) * stride + 1
    return ts.clamp(max=num_train - 1).flip(0)


def single_pass(guidance: float, need_uncond: bool) -> bool:
    """Whether a guided step needs one UNet pass per latent instead of two (cond + uncond)."""
    return guidance == 0.0 or (guidance == 1.0 and not need_uncond)


def guided_eps(
    denoiser: Denoiser, x: Tensor, t: Tensor, cond: Tensor, uncond: Tensor, guidance: float,
    on_uncond: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """eps_u + w (eps_c - eps_u); both passes in one batch. x (B,C,H,W), cond/uncond (B,L,D).

    ``on_uncond(eps_u)`` sees the empty-prompt prediction; when it is given, that pass is run even
    at guidance 1, where the guided prediction does not need it.
    """
    if single_pass(guidance, on_uncond is not None):
        eps = denoiser(x, t, uncond if guidance == 0.0 else cond)
        if on_uncond is not None:
            on_uncond(eps)
        return eps
    eps = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
    eps_u, eps_c = eps.chunk(2)
    if on_uncond is not None:
        on_uncond(eps_u)
    return eps_u + guidance * (eps_c - eps_u)


def ddim_step(x: Tensor, eps: Tensor, ab_t: Tensor, ab_prev: Tensor) -> Tensor:
    """One deterministic DDIM step from alpha_bar_t to alpha_bar_prev (scalars or (B,))."""
    ab_t = ab_t.reshape(-1, 1, 1, 1).to(x.dtype)
    ab_prev = ab_prev.reshape(-1, 1, 1, 1).to(x.dtype)
    x0 = (x - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
    return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps


@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    x_T: Tensor,
    cond: Tensor,
    uncond: Tensor,
    guidance: float = 3.0,
    num_steps: int = 50,
    start: int = 0,
    stop: int | None = None,
    on_state: Callable[[int, Tensor], None] | None = None,
    on_uncond: Callable[[int, Tensor], None] | None = None,
) -> Tensor:
    """Run DDIM steps ``start..stop-1`` (of ``num_steps``) from x_T; returns the last state.

    ``on_state(k, x)`` sees the state *before* step k (k = start .. stop-1) and, with k = stop,
    the result. ``on_uncond(k, eps_u)`` sees the empty-prompt prediction made at that state.
    With start=0 and stop=None this is a full sampling run ending at x_0.
    """
    stop = num_steps if stop is None else stop
    ts = ddim_timesteps(num_steps, len(denoiser.alphas_cumprod))
    ab = denoiser.alphas_cumprod
    x = x_T
    batch = x.shape[0]
    for k in range(start, stop):
        if on_state is not None:
            on_state(k, x)
        t = ts[k]
        ab_prev = ab[ts[k + 1]] if k + 1 < num_steps else ab[0]
        keep = None if on_uncond is None else (lambda e, k=k: on_uncond(k, e))
        eps = guided_eps(denoiser, x, t.expand(batch).to(x.device), cond, uncond, guidance, keep)
        x = ddim_step(x, eps.to(x.dtype), ab[t].to(x.device), ab_prev.to(x.device))
    if on_state is not None:
        on_state(stop, x)
    return x


def band_timestep(k: int, num_steps: int, num_train: int, generator: torch.Generator) -> int:
    """A DDPM timestep inside the band of DDIM step k: [T - (k+1)T/N, T - kT/N - 1]."""
    stride = num_train // num_steps
    hi = num_train - k * stride - 1
    lo = max(0, num_train - (k + 1) * stride)
    return int(torch.randint(lo, hi + 1, (1,), generator=generator).item())


@dataclass
class EvalCounter:
    """UNet evaluations of one erasure, counted per latent (a CFG pass counts 2). The sampler, the
    trainer's target and retain passes and the robust term each add what they spend."""

    nograd: int = 0
    grad: int = 0
    adversarial: int = 0  # of nograd + grad: spent by robust="adversarial"
    sampling: int = 0  # of nograd: spent by the trajectory sampler

    @property
    def total(self) -> int:
        return self.nograd + self.grad


@dataclass
class TrainingStates:
    """States z_t drawn from one trajectory. x (B,C,H,W), t (B,) int64; with ``keep_uncond``,
    ``uncond`` (B,C,H,W) is the sampling weights' empty-prompt prediction at (x, t)."""

    x: Tensor
    t: Tensor
    uncond: Tensor | None = None


class TrajectorySampler:
    """Draws SDD training states; one trajectory serves ``reuse`` consecutive steps.

    ``seed`` keys every draw (a ``torch.Generator`` is read for its initial seed)."""

    def __init__(self, denoiser: Denoiser, shape: tuple[int, int, int], cond: Tensor,
                 uncond: Tensor, guidance: float, num_steps: int, seed: int | torch.Generator,
                 device: torch.device, dtype: torch.dtype = torch.float32, reuse: int = 1,
                 keep_uncond: bool = False, evals: EvalCounter | None = None) -> None:
        self.denoiser = denoiser
        self.shape = shape
        self.cond, self.uncond = cond, uncond
        self.guidance, self.num_steps, self.reuse = guidance, num_steps, reuse
        self.seed = seed.initial_seed() if isinstance(seed, torch.Generator) else int(seed)
        self.device, self.dtype = device, dtype
        self.keep_uncond = keep_uncond
        self.num_train = len(denoiser.alphas_cumprod)
        # a counter shared with the rest of the erasure, if given, else the sampler's own
        self.evals = evals if evals is not None else EvalCounter()
        self._trajectory: int | None = None  # the index of the trajectory held
        self._states: dict[int, Tensor] = {}
        self._uncond: dict[int, Tensor] = {}
        self._draws = 0

    def set_prompt(self, cond: Tensor) -> None:
        """Sample later states from ``cond`` (1, L, D); the next draw starts a fresh trajectory."""
        if cond is not self.cond:
            self.cond = cond
            self._trajectory = None

    def _sample(self, stop: int) -> None:
        g = keyed_generator(self.seed, "trajectory", self._trajectory)
        x_T = torch.randn((1, *self.shape), generator=g).to(self.device, self.dtype)
        states: dict[int, Tensor] = {}
        uncond: dict[int, Tensor] = {}
        keep = (lambda k, e: uncond.__setitem__(k, e)) if self.keep_uncond else None
        ddim_sample(self.denoiser, x_T, self.cond, self.uncond, self.guidance, self.num_steps,
                    0, stop, lambda k, x: states.__setitem__(k, x), keep)
        spent = stop * (1 if single_pass(self.guidance, self.keep_uncond) else 2)
        self.evals.nograd += spent
        self.evals.sampling += spent
        self._states, self._uncond = states, uncond

    @property
    def unet_evals(self) -> int:
        """No-grad UNet evaluations spent on sampling (a CFG pass counts 2)."""
        return self.evals.sampling

    def depths(self, batch: int, step: int) -> list[int]:
        """The DDIM step each slot of ``step``'s batch is taken at: distinct while batch <= N."""
        g = keyed_generator(self.seed, "depths", step)
        if batch <= self.num_steps:
            return torch.randperm(self.num_steps, generator=g)[:batch].tolist()
        return torch.randint(0, self.num_steps, (batch,), generator=g).tolist()

    def draw(self, batch: int, step: int | None = None, slots: range | None = None,
             trajectory: int | None = None) -> TrainingStates:
        """The states of ``slots`` (default: all) of draw ``step``'s batch of ``batch`` states at
        distinct random DDIM steps (with replacement if batch > N), from trajectory
        ``trajectory`` (default ``step // reuse``). ``step`` defaults to the number of draws so
        far.

        Call under the weights that should sample (the EMA teacher); no gradient is kept.
        """
        step = self._draws if step is None else step
        trajectory = step // self.reuse if trajectory is None else trajectory
        slots = range(batch) if slots is None else slots
        every = self.depths(batch, step)
        idx = [every[s] for s in slots]
        if self._trajectory != trajectory:
            # A trajectory that serves later steps too is run as far as any draw can need; a
            # single-use one only as far as these states need (on average half the steps). Kept
            # predictions are made *at* a state, so they need one step more than the state.
            self._trajectory = trajectory
            last = self.num_steps - 1 if self.reuse > 1 else max(idx)
            self._sample(last + 1 if self.keep_uncond else last)
        self._draws = step + 1
        xs = torch.cat([self._states[k] for k in idx])
        if self.keep_uncond:
            ts = ddim_timesteps(self.num_steps, self.num_train)[idx]
            eps_u = torch.cat([self._uncond[k] for k in idx])
            return TrainingStates(x=xs, t=ts.to(self.device), uncond=eps_u)
        ts = torch.tensor([band_timestep(k, self.num_steps, self.num_train,
                                         keyed_generator(self.seed, "timestep", step, s))
                           for k, s in zip(idx, slots)])
        return TrainingStates(x=xs, t=ts.to(self.device))

    def state_dict(self) -> dict:
        """The trajectory held (for a checkpoint: a resumed run continues on it)."""
        return {"trajectory": -1 if self._trajectory is None else self._trajectory,
                "states": {str(k): v.cpu() for k, v in self._states.items()},
                "uncond": {str(k): v.cpu() for k, v in self._uncond.items()}}

    def load_state_dict(self, data: dict) -> None:
        self._trajectory = None if data["trajectory"] < 0 else int(data["trajectory"])
        self._states = {int(k): v.to(self.device) for k, v in data["states"].items()}
        self._uncond = {int(k): v.to(self.device) for k, v in data["uncond"].items()}
