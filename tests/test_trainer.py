"""The loop end to end on a tiny UNet: every loss x objective x selection, reproducibility,
callbacks, cancel, non-finite loss, several concepts and retain prompts."""

import itertools

import pytest
import torch
from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

from unlearn_core import Cancelled, EraseConfig, TrainingError, erase
from unlearn_core.sampling import TrajectorySampler, band_timestep, ddim_timesteps

FAST = dict(resolution=8, sampling_steps=4, lr=1e-3)


@pytest.mark.parametrize(
    "loss,objective,selection",
    list(itertools.product(["l2", "jensen_shannon", "cramer_wold", "jensen_shannon_gaussian"],
                           ["sdd", "esd"], ["xattn", "xattn-kv", "noxattn", "full"])),
)
def test_every_combination_runs_finite_and_reproducible(loss, objective, selection):
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=2, batch_size=2, loss=loss, objective=objective,
                      selection=selection, parametrization="lora", lora_rank=2, seed=3, **FAST)
    calls = []
    a = erase(tiny_denoiser(), cond, cfg, callback=calls.append)
    assert [c.step for c in calls] == [1, 2] and all(c.total == 2 for c in calls)
    assert all(torch.isfinite(torch.tensor(a.loss_history)))
    b = erase(tiny_denoiser(), cond, cfg)
    assert a.loss_history == b.loss_history
    for name in a.deltas:
        assert torch.equal(a.deltas[name].weight(), b.deltas[name].weight())


def test_seed_changes_the_run():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=2, **FAST)
    a = erase(tiny_denoiser(), cond, cfg)
    b = erase(tiny_denoiser(), cond, cfg.replace(seed=1))
    assert a.loss_history != b.loss_history


def test_teacher_is_the_ema_of_the_student():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=3, ema_decay=0.9, parametrization="full", **FAST)
    teacher = erase(tiny_denoiser(), cond, cfg)
    student = erase(tiny_denoiser(), cond, cfg.replace(result="student"))
    name = next(iter(teacher.deltas))
    t, s = teacher.deltas[name].weight(), student.deltas[name].weight()
    # After 3 steps the teacher has moved only part of the way (1 - 0.9^3 of a constant drift).
    assert 0 < t.norm() < s.norm()
    frozen = erase(tiny_denoiser(), cond, cfg.replace(ema_decay=1.0))
    assert frozen.deltas[name].weight().abs().max() == 0


def test_several_concepts_taken_in_turn_and_retain_term():
    cond = tiny_conditioning(n_concepts=3, n_retain=2)
    cfg = EraseConfig(concepts=("a", "b", "c"), retain_prompts=("r1", "r2"), retain_weight=1.0,
                      steps=3, **FAST)
    res = erase(tiny_denoiser(), cond, cfg)
    assert len(res.loss_history) == 3
    # student + retain student per step, for each of the 2 states (the default batch)
    assert res.metadata["unet_evals_grad"] == 3 * 2 * (1 + 1)


def test_cancel_from_callback_and_nonfinite_loss():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=5, **FAST)
    d = tiny_denoiser()
    before = {k: v.clone() for k, v in d.module.state_dict().items()}
    with pytest.raises(Cancelled, match="step 2 of 5"):
        erase(d, cond, cfg, callback=lambda info: info.step == 2)
    assert all(torch.equal(v, before[k]) for k, v in d.module.state_dict().items())
    assert not d.module._forward_hooks and all(not m._forward_hooks for m in d.module.modules())

    class NanAfter:
        def __init__(self, inner, n):
            self.inner, self.n, self.calls = inner, n, 0
            self.module, self.alphas_cumprod = inner.module, inner.alphas_cumprod

        def __call__(self, x, t, c):
            self.calls += 1
            out = self.inner(x, t, c)
            return out * float("nan") if x.requires_grad or self.calls > self.n else out

        canonical_name = native_name = staticmethod(lambda n: n)

    with pytest.raises(TrainingError, match="at step 1 of 5"):
        erase(NanAfter(d, 0), cond, cfg)
    assert not any(m._forward_hooks for m in d.module.modules())


def test_trajectory_sampler_band_and_no_full_run_at_zero():
    ts = ddim_timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50
    g = torch.Generator().manual_seed(0)
    for k in [0, 1, 25, 49]:
        t = band_timestep(k, 50, 1000, g)
        assert 1000 - (k + 1) * 20 <= t <= 1000 - k * 20 - 1
    d = tiny_denoiser()
    cond = tiny_conditioning()
    s = TrajectorySampler(d, (4, 8, 8), cond.trajectory, cond.empty, 3.0, 10, g,
                          torch.device("cpu"))
    s._sample(0)  # n = 0: the state is z_T itself, no UNet call (SDD's code ran all steps)
    assert s.unet_evals == 0 and list(s._states) == [0]
    s._sample(3)
    assert s.unet_evals == 6 and sorted(s._states) == [0, 1, 2, 3]


def test_trajectory_reuse_saves_sampling():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=4, batch_size=2, **FAST)
    fresh = erase(tiny_denoiser(), cond, cfg.replace(trajectory_reuse=1)).metadata[
        "unet_evals_nograd"]
    reused = erase(tiny_denoiser(), cond, cfg.replace(trajectory_reuse=4)).metadata
    # one trajectory to the last step (3 guided steps = 6) + targets (2 per step)
    assert reused["unet_evals_nograd"] == 6 + 4 * 2
    assert fresh > reused["unet_evals_nograd"]  # a new trajectory per step costs more


@pytest.mark.parametrize("guidance", [3.0, 1.0, 0.0])
def test_kept_uncond_is_the_prediction_at_the_state_and_timestep(guidance):
    d = tiny_denoiser()
    cond = tiny_conditioning()
    s = TrajectorySampler(d, (4, 8, 8), cond.trajectory, cond.empty, guidance, 5,
                          torch.Generator().manual_seed(0), torch.device("cpu"), reuse=2,
                          keep_uncond=True)
    states = s.draw(3)
    # every state of a trajectory with a kept target, including the last, got its prediction
    assert sorted(s._uncond) == list(range(5))
    assert s.unet_evals == 5 * (1 if guidance == 0.0 else 2)
    assert set(states.t.tolist()) <= set(ddim_timesteps(5).tolist())
    with torch.no_grad():
        direct = d(states.x, states.t, cond.empty.expand(3, -1, -1))
    assert torch.allclose(states.uncond, direct, atol=1e-5)
    s.draw(3)  # the second draw reuses the trajectory: no new UNet pass
    assert s.unet_evals == 5 * (1 if guidance == 0.0 else 2)


def test_trajectory_target_costs_no_target_pass():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=4, batch_size=2, trajectory_reuse=4,
                      target_from="trajectory", ema_decay=0.5, **FAST)
    kept = erase(tiny_denoiser(), cond, cfg)
    # one guided trajectory through all 4 steps, no target passes; the student's 2 per step
    assert kept.metadata["unet_evals_nograd"] == 4 * 2
    assert kept.metadata["unet_evals_grad"] == 4 * 2
    assert all(torch.isfinite(torch.tensor(kept.loss_history))) and kept.loss_history[0] > 0
    assert any(d.weight().abs().sum() > 0 for d in kept.deltas.values())


def test_trajectory_target_is_ignored_by_esd():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=2, batch_size=2, objective="esd",
                      target_from="trajectory", **FAST)
    res = erase(tiny_denoiser(), cond, cfg)
    assert res.metadata["unet_evals_grad"] == 2 * 2
    assert res.metadata["unet_evals_nograd"] > 2 * 2 * 2  # ESD's two base passes per state
