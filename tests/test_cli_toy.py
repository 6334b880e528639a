"""``unlearn erase --model toy`` (the whole CLI without weights), ``--concepts-file`` and
``python -m unlearn_core``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unlearn_core.cli import main
from unlearn_core.cli.erase import read_concepts_file
from unlearn_core.files import load_erasure, read_metadata

TINY = ["--steps", "2", "--sampling-steps", "2"]


def test_erase_from_the_toy_model_writes_a_file_probe_can_read(tmp_path, capsys):
    out = tmp_path / "cross.safetensors"
    assert main(["erase", "--model", "toy", "--concept", "cross", "--output", str(out), *TINY]) == 0
    assert "wrote" in capsys.readouterr().out
    assert "cross" in str(read_metadata(out))
    # It loads against the toy model's layers, as `unlearn probe --erasure` reads it.
    from unlearn_core.cli.common import layer_shapes
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import toy_denoiser

    loaded = load_erasure(out, layer_shapes(toy_denoiser(load_toy_model()).module))
    assert loaded.deltas and any(float(d.weight().abs().sum()) > 0 for d in loaded.deltas.values())
    assert loaded.metadata["config"]["concepts"] == ["cross"]


def test_concepts_file_adds_to_concept_flags(tmp_path, capsys):
    listing = tmp_path / "concepts.txt"
    listing.write_text("# colours\nred\n\n  blue  \n", encoding="utf-8")
    assert read_concepts_file(str(listing)) == ("red", "blue")
    out = tmp_path / "e.safetensors"
    assert main(["erase", "--model", "toy", "--concept", "cross", "--concepts-file",
                 str(listing), "--output", str(out), *TINY]) == 0
    text = str(read_metadata(out))
    assert all(c in text for c in ("cross", "red", "blue"))


@pytest.mark.parametrize("content,expected", [
    (None, "the file does not exist"),
    ("# only a comment\n\n", "holds no concept"),
    (b"\xff\xfe\x00", "is not UTF-8 text"),
])
def test_a_bad_concepts_file_is_named(tmp_path, capsys, content, expected):
    listing = tmp_path / "concepts.txt"
    if isinstance(content, bytes):
        listing.write_bytes(content)
    elif content is not None:
        listing.write_text(content)
    code = main(["erase", "--model", "toy", "--concepts-file", str(listing), "--output",
                 str(tmp_path / "e.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "--concepts-file = " in err and expected in err


def test_a_word_outside_the_toy_world_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import unlearn_core.toyworld as toyworld

    monkeypatch.setattr(toyworld, "load_toy_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["erase", "--model", "toy", "--concept", "dragon", "--output",
                 str(tmp_path / "e.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "not a toy-world concept" in err and "cross" in err


def test_python_m_unlearn_core_is_the_cli():
    run = subprocess.run([sys.executable, "-m", "unlearn_core", "erase", "--help"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "--concepts-file" in run.stdout and "'toy'" in run.stdout


def test_a_set_holding_a_default_value_takes_the_longer_steps_unless_told(tmp_path, capsys,
                                                                           monkeypatch):
    # the budgets made small so the runs are quick; the rule is the one the CLI applies
    from unlearn_core.toyworld import erasure, settings

    monkeypatch.setitem(settings.TOY_SETTINGS, "steps", 2)
    monkeypatch.setattr(erasure, "SET_WITH_DEFAULT_STEPS", 3)
    runs = {"pair": ["--concept", "circle", "--concept", "red"],  # circle: a default value
            "told": ["--concept", "circle", "--concept", "red", "--steps", "2"],
            "plain": ["--concept", "cross", "--concept", "red"]}
    steps = {}
    for name, flags in runs.items():
        out = tmp_path / f"{name}.safetensors"
        assert main(["erase", "--model", "toy", *flags, "--sampling-steps", "2",
                     "--output", str(out)]) == 0
        steps[name] = read_metadata(out)["config"]["steps"]
    assert steps == {"pair": 3, "told": 2, "plain": 2}
