"""Every bad input gets a message naming the input and the fix, before any model is loaded."""

import json

import pytest

from unlearn_core import ConfigError, EraseConfig, ModelError
from unlearn_core.cli import main


@pytest.mark.parametrize("kwargs,field,text", [
    (dict(concepts=()), "concepts", "name at least one concept"),
    (dict(concepts=("  ",)), "concepts", "remove blank lines"),
    (dict(concepts=("a", "")), "concepts", "blank"),
    (dict(loss="wasserstein"), "loss", "choose one of: l2, jensen_shannon, cramer_wold"),
    (dict(objective="ga"), "objective", "choose one of: sdd, esd"),
    (dict(selection="attn"), "selection", "use one of xattn, xattn-kv, noxattn, full, esd-x"),
    (dict(steps=0), "steps", "set steps to 1 or more"),
    (dict(steps=2.5), "steps", "whole number"),
    (dict(lr=0.0), "lr", "set lr above 0"),
    (dict(lr=-1e-5), "lr", "set lr above 0"),
    (dict(lora_rank=0), "lora_rank", "set lora_rank to 1 or more"),
    (dict(guidance=-1.0), "guidance", "set guidance to 0.0 or more"),
    (dict(ema_decay=1.5), "ema_decay", "set ema_decay to 1.0 or less"),
    (dict(lr=float("nan")), "lr", "finite"),
    (dict(retain_weight=1.0), "retain_weight", "add retain_prompts"),
    (dict(loss="cramer_wold", batch_size=1), "batch_size", "set batch_size to 2 or more"),
    (dict(gradient_checkpointing="yes"), "gradient_checkpointing", "true/false"),
])
def test_config_rejects_with_field_and_fix(kwargs, field, text):
    args = {"concepts": ("van gogh",)} | kwargs
    with pytest.raises(ConfigError) as e:
        EraseConfig(**args)
    assert e.value.field == field
    assert field in str(e.value) and text in str(e.value) and "Fix:" in str(e.value)


def test_aliases_and_json_round_trip():
    cfg = EraseConfig(concepts=["a", " b "], selection="ESD-u")
    assert cfg.selection == "noxattn" and cfg.concepts == ("a", "b")
    assert EraseConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="unknown config fields"):
        EraseConfig.from_dict({"concepts": ["a"], "learning_rate": 1})


def test_defaults_are_the_fast_loop_and_the_paper_preset_is_sdds():
    from unlearn_core.config import RECIPES

    cfg = EraseConfig(concepts=("a",))
    assert all(getattr(cfg, k) == v for k, v in RECIPES["fast"].items())
    paper = cfg.replace(**RECIPES["sdd-paper"])
    assert (paper.sampling_steps, paper.batch_size, paper.trajectory_reuse,
            paper.timestep_weighting) == (50, 1, 1, "none")


def test_lora_rank_larger_than_a_layer_allows():
    from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

    from unlearn_core import erase

    cfg = EraseConfig(concepts=("c",), parametrization="lora", lora_rank=33, resolution=8)
    with pytest.raises(ConfigError, match="lora_rank = 33.*set lora_rank to 32 or less"):
        erase(tiny_denoiser(), tiny_conditioning(), cfg)


def test_cli_messages_before_loading(tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    cases = [
        (["--model", str(tmp_path / "nope"), "--concept", "x"], "the path does not exist"),
        (["--model", str(tmp_path), "--concept", "x"], "no unet/config.json"),
        (["--model", str(tmp_path), "--concept", " "], "concepts"),
        (["--model", str(tmp_path), "--concept", "x", "--steps", "0"], "set steps to 1"),
    ]
    for args, text in cases:
        assert main(["erase", "--output", str(out), *args]) == 2
        assert text in capsys.readouterr().err
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(
        {"cross_attention_dim": 2048, "in_channels": 4, "addition_embed_type": "text_time"}))
    assert main(["erase", "--output", str(out), "--model", str(tmp_path), "--concept", "x"]) == 2
    err = capsys.readouterr().err
    assert "not a Stable Diffusion 1.x UNet" in err and "SDXL" in err
    out.write_bytes(b"keep me")
    assert main(["erase", "--output", str(out), "--model", str(tmp_path), "--concept", "x"]) == 2
    assert "the file exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main(["erase", "--output", str(tmp_path / "e.pt"), "--model", str(tmp_path),
                 "--concept", "x"]) == 2
    assert ".safetensors" in capsys.readouterr().err


def test_model_error_for_non_sd1_config():
    from unlearn_core.sd1 import check_sd1_config

    with pytest.raises(ModelError, match="cross_attention_dim 1024"):
        check_sd1_config({"cross_attention_dim": 1024, "in_channels": 4}, "m")
