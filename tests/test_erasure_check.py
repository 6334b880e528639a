"""The in-loop erasure check (``check_every``, ``stop_patience``): the residual is 1 for the
untouched weights and falls as the concept is erased; the check only reads (a checked run trains
exactly as an unchecked one), stopping early returns what a run of that many steps returns, a
resumed run keeps its checks, and the settings are refused together with a message."""

import pytest
import torch
from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

from unlearn_core import Cancelled, ConfigError, EraseConfig, erase
from unlearn_core.erasure_check import (
    PROMPTS,
    STATES,
    build_probes,
    describe,
    plateaued,
    probe_pairs,
    residuals,
    should_stop,
)
from unlearn_core.resume import CheckpointPlan
from unlearn_core.trainer import prepare, training

FAST = dict(resolution=8, sampling_steps=4, lr=2e-3, ema_decay=0.5, parametrization="full")


def test_untouched_weights_have_residual_one_and_the_probe_is_fixed():
    cond = tiny_conditioning(n_concepts=2)
    cfg = EraseConfig(concepts=("a", "b"), steps=1, check_every=1, **FAST)
    found = []
    for _ in range(2):
        run, state = prepare(tiny_denoiser(), cond, cfg)
        with training(run, state):
            probes = build_probes(run, state)
            found.append((residuals(run, state, probes), probes))
    (first, probes), (again, probes_again) = found
    assert first == pytest.approx([1.0, 1.0], abs=1e-5)
    assert len(probes) == 2 and all(p.x.shape[0] == STATES for p in probes)  # one prompt each
    assert torch.equal(probes[0].x, probes_again[0].x) and torch.equal(probes[1].t, probes_again[1].t)
    assert not torch.equal(probes[0].x, probes[1].x)  # each concept its own trajectory


def test_probe_pairs_take_the_bare_concept_first_and_spread_over_the_contexts():
    pairs = [(torch.tensor(i), None) for i in range(10)]
    chosen = [int(p) for p, _ in probe_pairs(pairs)]
    assert chosen[0] == 0 and len(chosen) == PROMPTS and len(set(chosen)) == PROMPTS
    assert chosen[-1] >= 6  # spread, not the first four
    assert probe_pairs(pairs[:3]) == pairs[:3]


def test_residual_falls_as_the_concept_is_erased_and_the_check_only_reads():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=12, check_every=4, **FAST)
    seen = []
    checked = erase(tiny_denoiser(), cond, cfg, callback=seen.append)
    plain = erase(tiny_denoiser(), cond, cfg.replace(check_every=0))
    checks = checked.metadata["erasure_check"]["checks"]
    assert [n for n, _ in checks] == [4, 8, 12]
    assert [info.step for info in seen if info.residuals is not None] == [4, 8, 12]
    first, last = checks[0][1][0], checks[-1][1][0]
    assert last < first < 1.0, checks
    # the check reads the weights and spends evaluations, nothing else
    assert checked.loss_history == plain.loss_history
    for name, delta in plain.deltas.items():
        assert torch.equal(delta.weight(), checked.deltas[name].weight())
    assert "erasure_check" not in plain.metadata
    extra = checked.metadata["unet_evals_nograd"] - plain.metadata["unet_evals_nograd"]
    assert extra >= 3 * STATES  # three checks at least, plus the probe's trajectory and targets
    assert describe(checked.metadata).startswith("erasure check: residual")


def test_stop_patience_needs_the_check():
    with pytest.raises(ConfigError, match="stop_patience") as err:
        EraseConfig(concepts=("c",), stop_patience=2)
    assert "check_every" in str(err.value)
    with pytest.raises(ConfigError, match="check_every"):
        EraseConfig(concepts=("c",), check_every=-1)


def test_plateau_rule():
    # falling steadily: never a plateau; flat for two checks after the best: a plateau
    assert not plateaued([1.0, 0.9, 0.8, 0.7], patience=2)
    assert plateaued([1.0, 0.5, 0.495, 0.52], patience=2)
    assert not plateaued([1.0, 0.5, 0.495, 0.52], patience=3)
    # a gain of less than 2% of the best is no gain; rising again is none either
    assert plateaued([1.0, 0.6, 0.595, 0.59], patience=2)
    assert not plateaued([1.0, 0.6, 0.7, 0.5], patience=2)
    assert not plateaued([1.0, 0.6, 0.6], patience=0)
    cfg = EraseConfig(concepts=("a", "b"), check_every=5, stop_patience=2)
    flat_a = [(5, [1.0, 0.9]), (10, [0.5, 0.8]), (15, [0.5, 0.7]), (20, [0.5, 0.6])]
    assert not should_stop(cfg, flat_a)  # b still falls
    flat_both = flat_a + [(25, [0.5, 0.6]), (30, [0.5, 0.6])]
    assert should_stop(cfg, flat_both)
    assert not should_stop(cfg.replace(stop_patience=0), flat_both)


def test_stop_patience_ends_a_run_whose_residual_stopped_falling():
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=80, check_every=2, stop_patience=2,
                      **(FAST | {"lr": 1e-2}))
    seen = []
    res = erase(tiny_denoiser(), cond, cfg, callback=seen.append)
    meta = res.metadata["erasure_check"]
    series = [found[0] for _, found in meta["checks"]]
    n = meta["steps_run"]
    assert meta["stopped_early"] and n < 80 and len(res.loss_history) == n
    assert plateaued(series, 2) and not plateaued(series[:-1], 2)  # the first plateau
    assert seen[-1].step == n and seen[-1].stopping and not any(i.stopping for i in seen[:-1])
    assert f"stopped after {n} steps" in describe(res.metadata)
    # what a run of that many steps returns
    short = erase(tiny_denoiser(), cond, cfg.replace(steps=n, check_every=0, stop_patience=0))
    for name, delta in short.deltas.items():
        assert torch.equal(delta.weight(), res.deltas[name].weight())
    longer = erase(tiny_denoiser(), cond, cfg.replace(steps=4))
    assert longer.metadata["erasure_check"]["steps_run"] == 4
    assert "ran every step" in describe(longer.metadata)


def test_a_resumed_run_keeps_its_checks(tmp_path):
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("c",), steps=8, check_every=2, **FAST)
    whole = erase(tiny_denoiser(), cond, cfg)
    plan = CheckpointPlan(tmp_path / "e.safetensors.ckpt", every=4, resume=True)
    with pytest.raises(Cancelled):
        erase(tiny_denoiser(), cond, cfg, callback=lambda info: info.step == 5, checkpoint=plan)
    resumed = erase(tiny_denoiser(), cond, cfg, checkpoint=plan)
    assert resumed.metadata["erasure_check"]["checks"] == whole.metadata["erasure_check"]["checks"]
    assert resumed.loss_history == whole.loss_history


def test_the_command_reports_the_check_and_writes_it_into_the_file(tmp_path, capsys):
    from unlearn_core.cli import main
    from unlearn_core.files import read_metadata

    out = tmp_path / "red.safetensors"
    assert main(["erase", "--model", "toy", "--concept", "red", "--steps", "4", "--batch-size", "2",
                 "--check-every", "2", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "erasure check: residual" in printed and "at step 4" in printed
    check = read_metadata(out)["erasure_check"]
    assert [n for n, _ in check["checks"]] == [2, 4] and check["steps_run"] == 4
