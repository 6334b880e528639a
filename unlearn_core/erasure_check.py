"""The in-loop erasure check: how far the returned weights have gone towards the erasure's
target, on fixed probe states, every ``check_every`` steps. With ``stop_patience``, training ends
at the first check where every concept's residual has gone that many checks without a new best
(lower by ``PLATEAU_GAIN``, relative): more steps no longer move it towards the target.

Probe states. Before the first step, for each concept, up to ``PROMPTS`` of the prompts it trains
(the bare concept and its contexts, evenly spaced over them) each get one guided trajectory of
the *base* model (trained deltas off), and ``STATES`` states are taken from it at distinct DDIM
steps. At each state the target is computed once from the frozen base: the anchor's prediction
e_0 (objective sdd) or e_0 - eta (e_c - e_0) (esd), where e_c is the base's prediction for the
prompt. Nothing of this depends on training, so a resumed run rebuilds the same probe.

The residual of a concept at a check is

    r = sum w ||eps_w(x, c) - target||^2 / sum w ||e_c(x) - target||^2

over its probe states, with w proportional to (1 - alpha_bar_t) / alpha_bar_t (the square of the
loss's SNR weight: the squared error in x0 space, so the high-noise states, where the image's
content is decided, count, and at low noise a large eps error changes the image little), where
eps_w are the predictions of the weights training would return now (the EMA teacher, or the
student with result="student"): 1 before training, 0 when they predict the target exactly.
It is a distance in the model's own prediction space, the same quantity on SD as on the toy
model, with no judge or image model. What residual means "erased" for a kind
of concept is a measurement, not a law: on the toy world a colour was erased at 0.08-0.14 and
the circle at 0.65-0.74 (BENCHMARKS.md §5i), so no threshold on it is offered; the plateau rule
acts on its shape instead, and is not the default either.

Cost: the trajectories once (PROMPTS x sampling_steps x 2 per concept), the targets once, then
PROMPTS x STATES no-grad evaluations per concept per check; all counted in the erasure's UNet
evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .distributed import key_seed
from .objectives import base_pair, negative_guidance
from .sampling import TrajectorySampler

Tensor = torch.Tensor

PROMPTS = 4  # prompts per concept the probe draws from
STATES = 3  # states per prompt, at distinct DDIM steps of its trajectory
PLATEAU_GAIN = 0.02  # stop_patience: a check that lowers the best residual by less is no gain


@dataclass
class Probe:
    """One concept's fixed probe states, their prompts and the targets."""

    x: Tensor  # (n, C, H, W)
    t: Tensor  # (n,)
    prompt: Tensor  # (n, L, D)
    target: Tensor  # (n, C, H, W), float32
    base: Tensor  # (n, C, H, W), float32: e_c, the base model's prediction for the prompt
    weight: Tensor  # (n,): proportional to (1 - alpha_bar) / alpha_bar: eps error -> x0 space


def probe_pairs(pairs: list[tuple[Tensor, Tensor]], k: int = PROMPTS) -> list[tuple[Tensor, Tensor]]:
    """Up to ``k`` of a concept's (prompt, anchor) pairs, evenly spaced, the bare concept first."""
    if len(pairs) <= k:
        return list(pairs)
    return [pairs[(i * len(pairs)) // k] for i in range(k)]


@torch.no_grad()
def build_probes(run, state) -> list[Probe]:
    """Every concept's probe (see the module docstring); the trained deltas are off throughout."""
    cfg, cond = run.config, run.cond
    device, dtype = cond.empty.device, cond.empty.dtype
    shape = run.samplers[0].shape
    probes = []
    with state.deltas.disabled():
        for i, pairs in enumerate(run.tasks):
            xs, ts, prompts, targets, bases = [], [], [], [], []
            for j, (prompt, anchor) in enumerate(probe_pairs(pairs)):
                sampler = TrajectorySampler(
                    run.denoiser, shape, prompt, cond.empty, cfg.guidance, cfg.sampling_steps,
                    key_seed(cfg.seed, "probe", i, j), device, dtype, reuse=1, evals=state.evals)
                states = sampler.draw(min(STATES, cfg.sampling_steps), 0)
                n = states.x.shape[0]
                e_0, e_c = (e.float() for e in base_pair(
                    run.denoiser, state.deltas, states.x, states.t, prompt.expand(n, -1, -1),
                    anchor.expand(n, -1, -1)))
                state.evals.nograd += 2 * n
                aim = negative_guidance(e_0, e_c, cfg.esd_eta) if cfg.objective == "esd" else e_0
                bases.append(e_c)
                xs.append(states.x)
                ts.append(states.t)
                prompts.append(prompt.expand(n, -1, -1))
                targets.append(aim)
            t = torch.cat(ts)
            weight = run.coefficients.snr_weight.to(t.device)[t] ** 2  # the loss's, squared
            probes.append(Probe(torch.cat(xs), t, torch.cat(prompts), torch.cat(targets),
                                torch.cat(bases), weight))
    return probes


def residual(p: Probe, eps: Tensor) -> float:
    """How much of the way from e_c to the target is left (see the module docstring)."""
    w = p.weight.view(-1, 1, 1, 1)
    return float((w * (eps - p.target) ** 2).sum() / (w * (p.base - p.target) ** 2).sum()
                 .clamp_min(1e-12))


@torch.no_grad()
def predictions(run, state, probes: list[Probe]) -> list[Tensor]:
    """Each probe's predictions under the weights training would return now."""
    deltas = state.deltas
    out = []
    with deltas.returned(state.teacher, run.config.result):
        for p in probes:
            out.append(run.denoiser(p.x, p.t, p.prompt).float())
            state.evals.nograd += p.x.shape[0]
    return out


def residuals(run, state, probes: list[Probe]) -> list[float]:
    """Each concept's residual under the weights training would return now."""
    return [residual(p, eps) for p, eps in zip(probes, predictions(run, state, probes),
                                               strict=True)]


def describe(metadata: dict) -> str | None:
    """One line on an erasure's check (its metadata's ``erasure_check``), or None without one."""
    check = metadata.get("erasure_check")
    if not check or not check.get("checks"):
        return None
    step, found = check["checks"][-1]
    worst = max(found)
    line = f"erasure check: residual {worst:.3f} at step {step}"
    if check["stopped_early"]:
        return f"{line}: it stopped falling, training stopped after {step} steps"
    if check["stop_patience"] > 0:
        return f"{line}, still falling at the last step: ran every step"
    return line


def plateaued(series: list[float], patience: int, gain: float = PLATEAU_GAIN) -> bool:
    """The last ``patience`` checks brought no new best by more than ``gain`` (relative)."""
    last_gain = 0  # the index of the last check that set a new best by more than gain
    best = series[0] if series else 0.0
    for k, r in enumerate(series[1:], 1):
        if r < (1 - gain) * best:
            last_gain = k
        best = min(best, r)
    return patience > 0 and len(series) - 1 - last_gain >= patience


def should_stop(config, checks: list[tuple[int, list[float]]]) -> bool:
    """Stop after the last of ``checks``: every concept's residual has stopped falling for
    ``stop_patience`` checks (never, when it is 0)."""
    if not checks or config.stop_patience <= 0:
        return False
    for i in range(len(checks[-1][1])):
        series = [found[i] for _, found in checks]
        if not plateaued(series, config.stop_patience):
            return False
    return True

