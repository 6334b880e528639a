"""Stopping on a judge (``judge_every``): the floor comes from the untouched model's empty-prompt
samples, training stops at the first check where every concept has been judged erased
``judge_patience`` checks in a row (and returns what a run of that many steps returns: the judge
only reads), a resumed run keeps its checks, no judge is refused before any work, and the command
wires the toy world's judges and, on SD-1.x, a CLIP model and its threshold."""

import pytest
import torch
from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

from unlearn_core import Cancelled, ConfigError, EraseConfig, erase
from unlearn_core.judge_stop import FLOOR_IMAGES, describe, erased, judge_prompts, judged_stop
from unlearn_core.resume import CheckpointPlan

FAST = dict(resolution=8, sampling_steps=3, lr=2e-3, ema_decay=0.5, parametrization="full")


class ScriptedJudge:
    """Shows the concept in the share ``plan[k]`` of the images of its k-th call (call 0 is the
    floor's). Records what it was shown."""

    def __init__(self, plan):
        self.plan, self.calls = list(plan), []

    def __call__(self, latents, concept):
        share = self.plan[min(len(self.calls), len(self.plan) - 1)]
        self.calls.append((latents.clone(), concept))
        n = latents.shape[0]
        return torch.arange(n) < round(share * n)


def test_the_rule():
    assert erased(0.0, 0.0) and not erased(0.125, 0.0)  # floor 0: no image may show it
    assert erased(0.25, 0.5) and not erased(0.26, 0.5)  # at most half the floor's share
    cfg = EraseConfig(concepts=("a", "b"), judge_every=5, judge_patience=2)
    floors = [0.5, 0.2]
    assert not judged_stop(cfg, floors, [(5, [0.0, 0.0])])  # one check is not two in a row
    assert judged_stop(cfg, floors, [(5, [0.0, 0.0]), (10, [0.25, 0.1])])
    assert not judged_stop(cfg, floors, [(5, [0.0, 0.0]), (10, [0.25, 0.2])])  # b back
    assert not judged_stop(cfg, floors, [(5, [0.0, 0.5]), (10, [0.0, 0.0])])
    assert judged_stop(cfg.replace(judge_patience=1), floors, [(5, [0.0, 0.5]), (10, [0.0, 0.0])])


def test_each_check_walks_on_through_the_prompts():
    pairs = [(torch.tensor(i), None) for i in range(5)]
    seen = [[int(p) for p in judge_prompts(pairs, 3, check)] for check in range(3)]
    assert seen == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]


def test_training_stops_once_judged_erased_and_returns_what_that_many_steps_return():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=40, judge_every=4, judge_images=3, **FAST)
    # floor 1.0 (every empty-prompt image shows it), then shown in all, all, none, none, none
    judge = ScriptedJudge([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    seen = []
    res = erase(tiny_denoiser(), cond, cfg, callback=seen.append, judge=judge)
    info = res.metadata["judge_stop"]
    assert info["floors"] == [1.0] and info["stopped_early"] and info["steps_run"] == 20
    assert info["judge_patience"] == 3  # the default: three checks in a row
    assert [n for n, _ in info["checks"]] == [4, 8, 12, 16, 20]
    assert len(res.loss_history) == 20 and seen[-1].step == 20 and seen[-1].stopping
    assert [i.step for i in seen if i.judged is not None] == [4, 8, 12, 16, 20]
    # the floor's images, then judge_images per check, each from fresh noise
    assert judge.calls[0][0].shape[0] == FLOOR_IMAGES
    assert [c[0].shape[0] for c in judge.calls[1:]] == [3] * 5
    assert not torch.equal(judge.calls[1][0], judge.calls[2][0])
    assert "training stopped after 20 of 40 steps" in describe(res.metadata)
    # the judge only reads: the same weights as a run of 20 steps without it
    plain = erase(tiny_denoiser(), cond, cfg.replace(steps=20, judge_every=0))
    assert plain.loss_history == res.loss_history and "judge_stop" not in plain.metadata
    for name, delta in plain.deltas.items():
        assert torch.equal(delta.weight(), res.deltas[name].weight())
    # its cost: guided samples (2 UNet evaluations a step) for the floor and every check
    extra = res.metadata["unet_evals_nograd"] - plain.metadata["unet_evals_nograd"]
    assert extra == 2 * cfg.sampling_steps * (FLOOR_IMAGES + 5 * 3)


def test_a_concept_never_judged_erased_runs_every_step():
    cond = tiny_conditioning(n_concepts=2)
    cfg = EraseConfig(concepts=("a", "b"), steps=6, judge_every=2, judge_images=2, **FAST)
    # floor 0.5 for both; then a is always erased but b never is (shown in every image)
    judge = ScriptedJudge([0.5, 0.5] + [0.0, 1.0] * 10)
    res = erase(tiny_denoiser(), cond, cfg, judge=judge)
    info = res.metadata["judge_stop"]
    assert info["steps_run"] == 6 and not info["stopped_early"]
    assert [found for _, found in info["checks"]] == [[0.0, 1.0]] * 3
    assert [c for _, c in judge.calls] == [0, 1] + [0, 1] * 3
    assert "every step ran" in describe(res.metadata)


def test_no_judge_is_refused_before_any_work():
    calls = []
    with pytest.raises(ConfigError, match="judge_every") as err:
        erase(tiny_denoiser(), tiny_conditioning(), EraseConfig(concepts=("c",), judge_every=5,
                                                                 **FAST), callback=calls.append)
    assert "--judge-clip" not in str(err.value) and "--clip-weights" in str(err.value)
    assert calls == []
    with pytest.raises(ConfigError, match="judge_images"):
        EraseConfig(concepts=("c",), judge_images=0)


def test_a_resumed_run_keeps_its_floor_and_checks(tmp_path):
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=8, judge_every=2, judge_images=2, **FAST)
    whole = erase(tiny_denoiser(), cond, cfg, judge=ScriptedJudge([1.0]))
    plan = CheckpointPlan(tmp_path / "e.safetensors.ckpt", every=4, resume=True)
    with pytest.raises(Cancelled):
        erase(tiny_denoiser(), cond, cfg, callback=lambda info: info.step == 5, checkpoint=plan,
              judge=ScriptedJudge([1.0]))
    judge = ScriptedJudge([1.0])
    resumed = erase(tiny_denoiser(), cond, cfg, checkpoint=plan, judge=judge)
    assert resumed.metadata["judge_stop"] == whole.metadata["judge_stop"]
    assert resumed.loss_history == whole.loss_history
    # the saved floor is used: no empty-prompt samples again, only the checks after step 4
    assert [latents.shape[0] for latents, _ in judge.calls] == [2, 2]


def test_the_toy_command_stops_on_the_toy_judges(tmp_path, capsys):
    from unlearn_core.cli import main
    from unlearn_core.files import read_metadata

    out = tmp_path / "red.safetensors"
    assert main(["erase", "--model", "toy", "--concept", "red", "--steps", "4", "--batch-size", "2",
                 "--judge-every", "2", "--judge-images", "4", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    # four steps cannot erase red: the toy judges see it in the images of both checks
    assert "not judged erased" in printed and "toy model, 4 steps" in printed
    info = read_metadata(out)["judge_stop"]
    assert [n for n, _ in info["checks"]] == [2, 4] and info["steps_run"] == 4
    assert all(found[0] >= 0.5 for _, found in info["checks"]) and info["floors"][0] < 0.5


def test_on_sd_the_judge_is_a_clip_model_with_a_threshold(tmp_path, capsys):
    from test_metrics_cli import add_tiny_vae, random_tiny_clip_file
    from unlearn_testkit.sd1_fixture import make_sd1_folder

    from unlearn_core.cli import main
    from unlearn_core.files import read_metadata
    from unlearn_core.toyworld.clip import CLIP_NAME

    root = make_sd1_folder(tmp_path / "sd1")
    add_tiny_vae(root)
    clip = random_tiny_clip_file(tmp_path)
    base = ["erase", "--model", str(root), "--concept", "a cat", "--steps", "8", "--resolution", "8",
            "--sampling-steps", "2", "--lr", "1e-3", "--judge-every", "2", "--judge-images", "2"]
    # refused before anything loads: no CLIP model, then a weights file that is not there
    assert main([*base, "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "--judge-every" in capsys.readouterr().err
    assert main([*base, "--clip-arch", CLIP_NAME, "--clip-weights", str(tmp_path / "none.pt"),
                 "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "--clip-weights" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    # a threshold no CLIP score reaches: floor 0 and nothing shown, so it stops at the 3rd check
    out = tmp_path / "never.safetensors"
    assert main([*base, "--clip-arch", CLIP_NAME, "--clip-weights", str(clip),
                 "--judge-threshold", "101", "--output", str(out)]) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    info = read_metadata(out)["judge_stop"]
    assert info["floors"] == [0.0] and info["steps_run"] == 6 and info["stopped_early"]
    # a threshold every score reaches: always shown, so every step runs
    out = tmp_path / "always.safetensors"
    assert main([*base, "--clip-arch", CLIP_NAME, "--clip-weights", str(clip),
                 "--judge-threshold", "0", "--output", str(out)]) == 0
    info = read_metadata(out)["judge_stop"]
    assert info["floors"] == [1.0] and info["steps_run"] == 8
    assert [found for _, found in info["checks"]] == [[1.0]] * 4
