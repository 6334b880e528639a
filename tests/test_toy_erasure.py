"""The engine on the toy world: a short erasure moves efficacy down and keeps other prompts; the
demo and the quick benchmark run end to end and write what they promise."""

from __future__ import annotations

import json

import pytest
import torch

from unlearn_core.cli import main
from unlearn_core.toyworld import load_judges, load_toy_model
from unlearn_core.toyworld.erasure import erase_toy, toy_config
from unlearn_core.toyworld.evaluate import evaluate, retention_ratio, split_prompts


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load_toy_model(), load_judges()


def test_prompt_split_by_concept():
    erased, kept = split_prompts(["cross"])
    assert len(erased) == 12 and len(kept) == 36
    assert all("cross" in p for p in erased.prompts)
    assert not any("cross" in p for p in kept.prompts)
    erased3, kept3 = split_prompts(["triangle", "dotted", "blue"])
    assert len(kept3) == 3 * 3 * 2 and len(erased3) == 48 - 18


def test_default_toy_erasure_moves_efficacy_down(world):
    model, judges = world
    before = evaluate(model, judges, ["cross"], repeats=2, with_clip=False)
    result = erase_toy(model, toy_config(["cross"]))  # the demo's settings (300 steps)
    after = evaluate(model, judges, ["cross"], result, repeats=2, with_clip=False)
    # Same prompts, same evaluation noise: the drop is the erasure's, not noise between seeds.
    assert before.efficacy >= 0.8
    assert after.efficacy <= before.efficacy - 0.3, (before.efficacy, after.efficacy)
    assert retention_ratio(after, before) >= 0.85


def test_uce_erases_a_shape(world):
    model, judges = world
    before = evaluate(model, judges, ["cross"], repeats=2, with_clip=False)
    result = erase_toy(model, toy_config(["cross"], method="uce"))
    after = evaluate(model, judges, ["cross"], result, repeats=2, with_clip=False)
    print(f"UCE on the toy world: efficacy {before.efficacy:.2f} -> {after.efficacy:.2f}, "
          f"retention {retention_ratio(after, before):.3f}")
    assert after.efficacy < before.efficacy


def test_demo_writes_grid_and_summary_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "20", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "efficacy" in text and "retention" in text and "CLIP score" in text
    summary = json.loads((out / "summary.json").read_text())
    for key in ("efficacy", "retention", "base_accuracy", "uncond_rate", "seconds", "config"):
        assert key in summary, key
    assert set(summary["base_accuracy"]) == {"shape", "colour", "texture"}
    assert summary["config"]["steps"] == 20
    from PIL import Image

    assert Image.open(out / "grid.png").size[0] > 200
    stamp = (out / "summary.json").stat().st_mtime_ns
    assert main(["demo", "--steps", "20", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").stat().st_mtime_ns == stamp


def test_bench_quick_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    table = (out / "bench.md").read_text()
    assert "| shape | train | l2 | sdd |" in table and "| shape | uce |" in table
    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"train", "uce"}
    assert all(0 <= r["efficacy"] <= 1 and r["retention"] > 0 for r in runs)
    assert (out / "bench.png").stat().st_size > 1000
