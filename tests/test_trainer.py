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


@pytest.mark.parametrize("result", ["teacher", "student"])
def test_step_info_weights_are_the_erasure_so_far(result):
    # what StepInfo.weights() gives at a step is what a run of that many steps returns, and a
    # copy: later steps do not change it
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=3, ema_decay=0.9, parametrization="full",
                      result=result, **FAST)
    at_two = {}
    erase(tiny_denoiser(), cond, cfg,
          callback=lambda info: at_two.update(info.weights()) if info.step == 2 else None)
    two_steps = erase(tiny_denoiser(), cond, cfg.replace(steps=2))
    assert set(at_two) == set(two_steps.deltas)
    for name, delta in two_steps.deltas.items():
        assert delta.weight().abs().max() > 0
        assert torch.equal(at_two[name].weight(), delta.weight())


def test_several_concepts_taken_in_turn_and_retain_term():
    cond = tiny_conditioning(n_concepts=3, n_retain=2)
    cfg = EraseConfig(concepts=("a", "b", "c"), retain_prompts=("r1", "r2"), retain_weight=1.0,
                      steps=3, **FAST)
    res = erase(tiny_denoiser(), cond, cfg)
    assert len(res.loss_history) == 3
    # student + retain student per step, for each of the 2 states (the default batch)
    assert res.metadata["unet_evals_grad"] == 3 * 2 * (1 + 1)


def test_retain_term_holds_the_retain_prompt_to_the_base_model():
    """With the term on, the retain prompt's prediction stays nearer the base model's than
    without it, while the concept is still trained."""
    cond = tiny_conditioning(n_concepts=1, n_retain=1)
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([900, 600, 300, 50])

    def drift(weight: float) -> tuple[float, float]:
        d = tiny_denoiser()
        with torch.no_grad():
            base_r = d(x, t, cond.retain[0].expand(4, -1, -1))
            base_c = d(x, t, cond.concepts[0].expand(4, -1, -1))
        cfg = EraseConfig(concepts=("c",), retain_prompts=("r",), retain_weight=weight,
                          steps=20, seed=0, **(FAST | {"lr": 1e-2}))
        res = erase(d, cond, cfg)
        with torch.no_grad(), res.applied(d):
            after_r = d(x, t, cond.retain[0].expand(4, -1, -1))
            after_c = d(x, t, cond.concepts[0].expand(4, -1, -1))
        return float((after_r - base_r).norm()), float((after_c - base_c).norm())

    free_r, free_c = drift(0.0)
    held_r, held_c = drift(1.0)
    assert free_c > 0 and held_c > 0.25 * free_c  # the concept still moves
    assert held_r < 0.7 * free_r, (held_r, free_r)


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
    """Four steps from one trajectory cost one trajectory's sampling; a fresh trajectory per step
    costs each step's own (as deep as its deepest state): exactly these counts, so reuse is
    strictly cheaper by the ratio they give."""
    cond = tiny_conditioning()
    steps, batch, n = 4, 2, FAST["sampling_steps"]
    cfg = EraseConfig(concepts=("c",), steps=steps, batch_size=batch, objective="sdd", **FAST)
    fresh = erase(tiny_denoiser(), cond, cfg.replace(trajectory_reuse=1)).metadata
    reused = erase(tiny_denoiser(), cond, cfg.replace(trajectory_reuse=4)).metadata
    targets = steps * batch  # one no-grad target pass per state (the student's, sdd; esd's 2)
    sampler = TrajectorySampler(tiny_denoiser(), (4, 8, 8), cond.trajectory, cond.empty, 3.0, n,
                                cfg.seed, torch.device("cpu"))
    # a guided step costs 2 (cond + uncond); a fresh trajectory stops at its deepest state
    fresh_sampling = sum(2 * max(sampler.depths(batch, s)) for s in range(steps))
    reused_sampling = 2 * (n - 1)  # one trajectory run to the last state any draw can need
    assert reused["unet_evals_nograd"] == reused_sampling + targets
    assert fresh["unet_evals_nograd"] == fresh_sampling + targets
    assert reused_sampling < fresh_sampling
    ratio = (fresh["unet_evals_nograd"] - targets) / (reused["unet_evals_nograd"] - targets)
    assert ratio == fresh_sampling / reused_sampling > 1


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
                      target_from="trajectory", ema_decay=0.5, objective="sdd", **FAST)
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


def test_sdd_paper_recipe_is_the_official_loop():
    """``RECIPES["sdd-paper"]`` against benchmarks/reference_sdd.py (the official SDD loop's
    structure: two full UNets, a fresh 50-step trajectory per step sampled by the EMA teacher,
    batch 1, L2 to the student's empty-prompt prediction, AdamW, clip, EMA), given the same random
    draws: the same training states, the same losses and the same weights after a few steps."""
    import copy
    import sys
    from pathlib import Path

    from unlearn_core.config import RECIPES
    from unlearn_core.distributed import keyed_generator
    from unlearn_core.selection import select_layers
    from unlearn_core.trainer import prepare, step, training

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from reference_sdd import ReferenceSDD

    # lr 1e-3 instead of the recipe's 1e-5, given to both loops: the EMA teacher then moves
    # (1 - 0.999) x 3e-3, far above float32's resolution of the reference's full weights (at
    # 1e-5 its first moves are a few ulps of the weights, rounding noise on that side alone)
    seed, steps, res, lr = 5, 3, 8, 1e-3
    cfg = EraseConfig(concepts=("c",), **{**RECIPES["sdd-paper"], "steps": steps,
                                           "resolution": res, "seed": seed, "lr": lr})
    cond = tiny_conditioning()
    cond.trajectory = cond.concepts[0]  # one concept: the joint prompt is the concept's own

    class KeyedReference(ReferenceSDD):
        """The reference loop drawing what the trainer draws at each step (the trainer keys its
        draws by (seed, step, ...) so that processes can share a batch; the distributions are
        SDD's), and recording the states it trains on."""

        k = 0
        states: list = []
        timesteps: list = []

        def _depth(self):
            return int(torch.randperm(self.steps, generator=keyed_generator(seed, "depths",
                                                                            self.k))[0])

        def _noise(self):
            return torch.randn((1, 4, res, res), generator=keyed_generator(seed, "trajectory",
                                                                          self.k))

        def _timestep(self, n):
            t = band_timestep(n, self.steps, 1000, keyed_generator(seed, "timestep", self.k, 0))
            self.timesteps.append(t)
            return t

        def _sample(self, n):
            x = super()._sample(n)
            self.states.append(x)
            return x

        def step(self, n=None):
            loss = super().step(n)
            self.k += 1
            return loss

    unet = tiny_denoiser().module
    base = copy.deepcopy(unet)
    # the reference at its own (SDD's) settings: 50 steps, guidance 3, EMA 0.999, AdamW 1e-4
    # weight decay, clip 1; only the learning rate is the test's
    ref = KeyedReference(unet, tiny_denoiser().alphas_cumprod, cond.concepts[0], cond.empty, res,
                         lr=lr)
    ref_losses = [ref.step() for _ in range(steps)]

    run, state = prepare(tiny_denoiser(), cond, cfg)
    ours, draw = [], run.sampler.draw
    run.sampler.draw = lambda *a, **k: ours.append(draw(*a, **k)) or ours[-1]
    with training(run, state):
        our_losses = [step(run, state) for _ in range(steps)]

    # float32: the engine batches the guided pair and adds the delta through a hook; the
    # reference runs the passes apart and writes the weights: equal up to rounding
    assert [s.t.tolist() for s in ours] == [[t] for t in ref.timesteps]
    for mine, theirs in zip(ours, ref.states, strict=True):
        assert torch.allclose(mine.x, theirs, rtol=1e-4, atol=1e-5)
    assert our_losses == pytest.approx(ref_losses, rel=1e-4)
    layers = list(select_layers(base, "xattn"))
    trained = dict(zip(layers, state.deltas.parameters(), strict=True))
    teacher = dict(zip(layers, state.teacher, strict=True))
    ref_student = dict(select_layers(ref.student, "xattn"))
    ref_teacher = dict(select_layers(ref.teacher, "xattn"))
    base_layers = dict(select_layers(base, "xattn"))
    for name, w0 in base_layers.items():
        # the reference rounds its full weights at every update: (steps + 1) ulps of the largest;
        # and AdamW divides each gradient element by its own size, so an element whose gradient
        # is near AdamW's eps moves by a different share of lr when rounding changes it: 0.2% of
        # the largest change (measured: 0.045%)
        ulps = (steps + 1) * torch.finfo(torch.float32).eps * float(w0.weight.abs().max())
        for mine, theirs in ((trained[name], ref_student[name].weight),
                             (teacher[name], ref_teacher[name].weight)):
            their_delta = theirs.detach() - w0.weight.detach()
            scale = float(their_delta.abs().max())
            assert scale > 10 * ulps  # the weights moved: the comparison means something
            assert torch.allclose(mine.detach(), their_delta, rtol=0,
                                  atol=max(ulps, 2e-3 * scale)), name
