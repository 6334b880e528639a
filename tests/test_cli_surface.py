"""What a user of the `unlearn` command meets first: help for every command, parsing that does not
load torch, and one plain line (exit code 2) for every failure the user can cause; --debug and
UNLEARN_DEBUG=1 add the traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from unlearn_core.cli import SUBCOMMANDS, build_parser, main
from unlearn_core.config import config_fields, field_help

torch.set_num_threads(1)
COMMANDS = ["erase", *SUBCOMMANDS]
REPO = Path(__file__).resolve().parents[1]


def _no_space(text: str) -> str:  # help is wrapped at spaces and after hyphens
    return "".join(text.split())


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in COMMANDS],
                         ids=lambda a: " ".join(a))
def test_help_of_every_command(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: unlearn") and len(out.splitlines()) > 5, out
    if argv == ["--help"]:
        assert all(c in out for c in COMMANDS)


def test_erase_help_shows_every_field_help_as_written(capsys):
    # a "%" in a field's help (e.g. "+15-19%") must reach the screen, not break argparse
    with pytest.raises(SystemExit):
        main(["erase", "--help"])
    out = _no_space(capsys.readouterr().out)
    for name in config_fields():
        assert _no_space(field_help(name)) in out, name
    assert "(default: None)" not in out


def test_demo_and_bench_help_say_what_threads_does(capsys):
    for command in ("demo", "bench", "probe"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = _no_space(capsys.readouterr().out)
        assert _no_space("--threads THREADS torch CPU threads; 0 = automatic: 1 for a small model") in out


def test_parsing_imports_no_heavy_module():
    """--help of every command and an argument error, in a fresh interpreter: neither torch, nor
    diffusers, nor open_clip, nor transformers is imported (each costs seconds and 100s of MiB)."""
    script = textwrap.dedent(f"""
        import json, sys
        from unlearn_core.cli import main
        codes = []
        for argv in {[["--help"]] + [[c, "--help"] for c in COMMANDS]!r} + [["demo", "--steps", "x"],
                                                                           ["bench", "--nope"]]:
            try:
                main(argv)
            except SystemExit as e:
                codes.append(e.code)
        heavy = [m for m in ("torch", "diffusers", "open_clip", "transformers", "numpy")
                 if m in sys.modules]
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0] * (len(COMMANDS) + 1) + [2, 2]
    assert result["heavy"] == []


def test_lazy_packages_resolve_every_public_name():
    """The packages import their names on first use; each one still resolves, including
    ``metrics.clip_score`` (the function) after its submodule of the same name was imported."""
    script = textwrap.dedent("""
        import importlib, inspect, sys
        from unlearn_core.metrics.clip_score import load_clip  # the submodule first
        import unlearn_core.metrics as metrics
        assert inspect.isfunction(metrics.clip_score), metrics.clip_score
        for name in ("unlearn_core", "unlearn_core.metrics", "unlearn_core.toyworld"):
            package = importlib.import_module(name)
            for public in package.__all__:
                assert getattr(package, public) is not None, (name, public)
                assert public in dir(package), (name, public)
        from unlearn_core import erase, EraseConfig
        from unlearn_core.trainer import erase as erase_itself
        assert erase is erase_itself and EraseConfig.__module__ == "unlearn_core.config"
        try:
            import unlearn_core
            unlearn_core.no_such_name
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_python_dash_m_help_runs():
    done = subprocess.run([sys.executable, "-m", "unlearn_core.cli", "erase", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--gradient-checkpointing" in done.stdout and "+15-19%" in done.stdout


def test_debug_flag_parses_before_and_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--debug", "demo"]).debug is True
    assert parser.parse_args(["demo", "--debug"]).debug is True
    assert parser.parse_args(["demo"]).debug is False


# ---- failures a user can cause: one line naming the input and the fix, exit code 2 ----------

def _fails(argv, capsys, *expected, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"unlearn {argv[0]}: error: "), err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.mark.parametrize("command", ["erase", "score", "probe"])
def test_bogus_device_is_refused_before_anything_loads(command, tmp_path, capsys):
    argv = {"erase": ["erase", "--model", str(tmp_path / "missing"), "--output",
                      str(tmp_path / "e.safetensors"), "--concept", "a cat"],
            "score": ["score", str(tmp_path / "missing.png"), "--prompt", "a cat"],
            "probe": ["probe", "--concept", "cross"]}[command]
    # the device is checked first: the missing model / image is not what is reported
    _fails([*argv, "--device", "bogus"], capsys, "--device = 'bogus'", "use auto, cpu, cuda")


def test_cuda_without_a_gpu(tmp_path, capsys, monkeypatch):
    from unlearn_testkit.sd1_fixture import make_sd1_folder

    import unlearn_core.sd1 as sd1

    model = make_sd1_folder(tmp_path / "sd1")
    capsys.readouterr()  # the fixture's own progress output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sd1, "SD1Pipeline", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "e.safetensors"
    line = _fails(["erase", "--model", str(model), "--output", str(out), "--concept", "a cat",
                   "--device", "cuda"], capsys, "--device = 'cuda'", "use --device cpu")
    assert "no CUDA GPU" in line or "without CUDA" in line
    assert not out.exists()


def test_cuda_index_past_the_last_gpu(capsys, monkeypatch):
    from unlearn_core.devices import resolve_device
    from unlearn_core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"there is 1 CUDA GPU\. Fix: use cuda:0 to cuda:0"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("CPU") == "cpu"


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_damaged_model_folder(damage, tmp_path, capsys):
    from unlearn_testkit.sd1_fixture import make_sd1_folder

    model = make_sd1_folder(tmp_path / "sd1")
    capsys.readouterr()  # the fixture's own progress output
    if damage == "weights":
        weights = next((model / "unet").glob("diffusion_pytorch_model.*"))
        weights.write_bytes(weights.read_bytes()[:1000])  # a truncated download
        expected = ("could not be loaded", "unet", "copy or convert the model folder again")
    else:
        (model / "unet" / "config.json").write_text('{"cross_attention_dim": 768,')
        expected = ("config.json: not valid JSON", "copy or convert it again")
    out = tmp_path / "e.safetensors"
    _fails(["erase", "--model", str(model), "--output", str(out), "--concept", "a cat",
            "--steps", "1", "--device", "cpu"], capsys, *expected)
    assert not out.exists()


def test_score_on_a_file_that_is_not_an_image(tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not pixels")
    _fails(["score", str(fake), "--prompt", "a cat"], capsys, str(fake), "not an image",
           "give image files")
    _fails(["score", str(fake), "--prompt-file", str(tmp_path / "none.txt")], capsys,
           "--prompt-file", "does not exist")


@pytest.mark.parametrize("argv,expected", [
    (["demo", "--threads", "-1"], "--threads = -1"),
    (["demo", "--concept", "dragon"], "not a toy-world concept"),
    (["bench", "--seeds", "0"], "--seeds = 0"),
    (["bench", "--set", "lr"], "FIELD=VALUE"),
    (["bench", "--set", "batch_size=many"], "'many' is not a whole number"),
    (["bench", "--set", "steps=0"], "--steps = 0"),  # --set steps=N is --steps N
    (["bench", "--set", "seed=3"], "use --seeds N instead"),
    (["bench", "--tasks", "nope"], "unknown task"),
    (["probe", "--concept", "cross", "--threads", "-2"], "--threads = -2"),
])
def test_toy_commands_refuse_bad_values(argv, expected, capsys, monkeypatch):
    import unlearn_core.toyworld as toyworld

    # refused before the toy model is loaded
    monkeypatch.setattr(toyworld, "load_toy_model", lambda *a, **k: pytest.fail("model loaded"))
    _fails(argv, capsys, expected)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, tmp_path, capsys, monkeypatch):
    argv = ["erase", "--model", str(tmp_path / "missing"), "--output",
            str(tmp_path / "e.safetensors"), "--concept", "a cat"]
    if how == "flag":
        argv.append("--debug")
    else:
        monkeypatch.setenv("UNLEARN_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("unlearn erase: error: model = ")


def test_an_unexpected_error_is_one_line_and_exit_1(capsys, monkeypatch):
    import unlearn_core.cli.demo as demo

    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(demo, "run", broken)
    line = _fails(["demo"], capsys, "unexpected RuntimeError: something inside broke",
                  "--debug", code=1)
    assert "bug" in line


def test_an_os_error_names_the_file(capsys, monkeypatch):
    import unlearn_core.cli.demo as demo

    def no_space(args):
        raise OSError(28, "No space left on device", "/data/out/grid.png")

    monkeypatch.setattr(demo, "run", no_space)
    _fails(["demo"], capsys, "/data/out/grid.png: No space left on device", "free disk space")


@pytest.mark.parametrize("damage", ["alpha", "truncated"])
def test_probe_names_a_broken_erasure_file(damage, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from unlearn_core.files import save_erasure
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import erase_toy, toy_config

    result = erase_toy(load_toy_model(), toy_config(["cross"], parametrization="lora",
                                                    lora_rank=2, steps=1))
    path = save_erasure(tmp_path / "erasure.safetensors", result.deltas, result.metadata)
    if damage == "alpha":
        tensors = load_file(path)
        key = next(k for k in tensors if k.endswith(".alpha"))
        tensors[key] = torch.ones(2)  # a LoRA alpha is one number
        save_file(tensors, path)
        expected = ("alpha", "Fix:")
    else:
        path.write_bytes(path.read_bytes()[:200])
        expected = ("Fix:",)
    capsys.readouterr()
    _fails(["probe", "--concept", "cross", "--erasure", str(path), "--seeds", "0",
            "--sampling-steps", "2"], capsys, str(path.name), *expected)
