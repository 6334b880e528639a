"""`unlearn erase` on a real (tiny) diffusers-format SD-1-shaped folder on disk."""

import pytest
from unlearn_testkit.sd1_fixture import make_sd1_folder

from unlearn_core.cli import build_parser, command_parsers, main
from unlearn_core.config import config_fields, field_help
from unlearn_core.files import read_metadata


def test_every_config_field_is_a_flag_with_its_help():
    erase_parser = command_parsers()["erase"]
    helps = {a.dest: a.help for a in erase_parser._actions}
    for name in config_fields():
        assert name in helps, name
        # argparse %-formats help strings, so a literal % is stored as %%
        assert helps[name].replace("%%", "%").startswith(field_help(name))


@pytest.mark.parametrize("extra,suffix", [
    (["--parametrization", "lora", "--lora-rank", "2"], "lora_down.weight"),
    (["--parametrization", "full", "--svd-rank", "2"], "lora_down.weight"),
    (["--parametrization", "full"], "diff"),
    (["--method", "uce", "--retain-prompt", "a bird"], "diff"),
])
def test_erase_writes_a_file_with_summary(tmp_path, capsys, extra, suffix):
    model = make_sd1_folder(tmp_path / "sd1")
    out = tmp_path / "erasure.safetensors"
    code = main(["erase", "--model", str(model), "--concept", "a cat", "--concept", "a dog",
                 "--steps", "2", "--resolution", "8", "--sampling-steps", "3", "--lr", "1e-3",
                 "--output", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert ("done: 2 steps" if "uce" not in extra else "done: closed-form UCE") in captured.out
    assert str(out) in captured.out
    meta = read_metadata(out)
    assert meta["config"]["concepts"] == ["a cat", "a dog"]
    assert len(meta["base_weights_sha256"]) == 64
    from safetensors.torch import load_file

    assert all(k.split(".", 1)[1] in (suffix, "lora_up.weight", "alpha") for k in load_file(out))


@pytest.mark.parametrize("flag", ["--recipe", "--preset"])  # --preset: the former name
def test_recipe_is_under_the_flags_and_booleans_take_no_value(flag):
    from unlearn_core.cli.common import config_from_args

    parser = build_parser()
    args = parser.parse_args(["erase", "--model", "m", "--output", "o.safetensors", "--concept",
                              "a cat", flag, "sdd-paper", "--sampling-steps", "20",
                              "--gradient-checkpointing"])
    cfg = config_from_args(args)
    # the recipe's settings, except where a flag says otherwise
    assert (cfg.batch_size, cfg.trajectory_reuse, cfg.timestep_weighting) == (1, 1, "none")
    assert cfg.sampling_steps == 20 and cfg.gradient_checkpointing is True
    plain = config_from_args(parser.parse_args(["erase", "--model", "m", "--output", "o",
                                                "--concept", "a", "--no-gradient-checkpointing"]))
    assert plain.gradient_checkpointing is False and plain.sampling_steps == 10
    with pytest.raises(SystemExit):
        parser.parse_args(["erase", "--model", "m", "--output", "o", "--concept", "a",
                           flag, "turbo"])
