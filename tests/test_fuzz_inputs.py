"""Property tests over config fields, prompt strings and file contents, from seeded
generators (the same cases every run):

- nothing but the pack's own errors (``UnlearnError``) escapes the public API;
- the CLI answers every refused input with exit code 2 and a message, never a traceback;
- a refused call touches no model and writes no file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch
from safetensors.torch import save
from unlearn_testkit.sd1_fixture import make_sd1_folder
from unlearn_testkit.tiny import state_hash, tiny_conditioning, tiny_denoiser

from unlearn_core.config import EraseConfig, config_fields
from unlearn_core.delta import Delta
from unlearn_core.errors import UnlearnError
from unlearn_core.files import load_erasure, read_metadata, save_erasure
from unlearn_core.keys import kohya_name
from unlearn_core.prompts import check_config_prompts

torch.set_num_threads(1)

NASTY = [None, True, False, 0, 1, -1, 2, 10**400, -(10**30), 0.5, -0.0, 1e-300, 1e308,
         float("nan"), float("inf"), float("-inf"), "", " ", "abc", "nan", "1", "\x00", "日本語",
         "a\nb", "x" * 5000, [], ["a"], [""], [1, 2], ("a", None), {}, {"a": 1}, b"bytes",
         object()]


def random_text(rng: random.Random, max_len: int = 300) -> str:
    alphabet = ["a", "Z", " ", "\n", "\t", ",", ".", "(", ")", ":", "\x00", "\x7f", "\u200b",
                "\u202e", "é", "日", "🙂", "\ud800", "\\", "/", "..", "'", '"', "%", "{}"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(max_len)))


def random_config_values(rng: random.Random) -> dict:
    fields = list(config_fields())
    values = {"concepts": ("a cat",)}
    for name in rng.sample(fields, rng.randrange(1, 6)):
        if rng.random() < 0.3:
            values[name] = random_text(rng, 40)
        else:
            values[name] = rng.choice(NASTY)
    return values


# ---- the public API -------------------------------------------------------------------------

def test_config_refuses_with_the_pack_error_only():
    rng = random.Random(15)
    accepted = refused = 0
    for _ in range(1500):
        values = random_config_values(rng)
        try:
            config = EraseConfig(**values)
        except UnlearnError as e:
            refused += 1
            assert "Fix:" in str(e), str(e)
            continue
        accepted += 1
        for f in dataclasses.fields(config):  # what is accepted is well-formed
            value = getattr(config, f.name)
            if isinstance(f.default, float) and not isinstance(value, bool):
                assert math.isfinite(value), (f.name, value)
        assert EraseConfig.from_dict(json.loads(config.to_json())) == config
    assert accepted > 20 and refused > 1000
    for junk in (None, 3, "x", ["concepts"], {1: 2}):
        with pytest.raises(UnlearnError):
            EraseConfig.from_dict(junk)


def test_prompt_strings_are_accepted_or_refused_by_the_rule():
    rng = random.Random(16)
    for _ in range(500):
        texts = [random_text(rng, 200) for _ in range(rng.randrange(1, 4))]
        try:
            config = EraseConfig(concepts=tuple(texts), retain_prompts=(random_text(rng),))
        except UnlearnError:
            continue
        try:
            check_config_prompts(config, lambda t: len(t.split()))
        except UnlearnError as e:
            assert "tokens long" in str(e)


def test_bad_conditioning_is_refused_before_the_model_is_touched():
    rng = random.Random(17)
    denoiser = tiny_denoiser()
    before = state_hash(denoiser.module)
    config = EraseConfig(concepts=("c",), steps=1, resolution=8, sampling_steps=2)
    makers = [
        lambda: torch.full((1, 6, 32), float("nan")),
        lambda: torch.randn(1, 6, 16),
        lambda: torch.randn(6, 32),
        lambda: torch.randn(2, 6, 32),
        lambda: torch.ones(1, 6, 32, dtype=torch.long),
        lambda: "a cat",
    ]
    for _ in range(30):
        cond = tiny_conditioning()
        slot = rng.choice(["concepts", "empty", "trajectory", "retain"])
        bad = rng.choice(makers)()
        if slot == "concepts":
            cond.concepts = [bad]
        elif slot == "retain":
            cond.retain = [bad]
        else:
            setattr(cond, slot, bad)
        method = rng.choice(["train", "uce"])
        cfg = config.replace(method=method,
                             **({"retain_prompts": ("r",)} if slot == "retain" else {}))
        with pytest.raises(UnlearnError):
            from unlearn_core import erase

            erase(denoiser, cond, cfg)
    after = state_hash(denoiser.module)
    assert all(torch.equal(before[k], after[k]) for k in before)


LAYER = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
SHAPES = {LAYER: (8, 4), "mid_block.attentions.0.transformer_blocks.0.attn2.to_v": (8, 4)}


def random_file_bytes(rng: random.Random) -> bytes:
    """Valid files, mutated: random tensors, keys, dtypes, shapes, metadata; truncations and
    flipped bytes."""
    key = kohya_name(rng.choice(list(SHAPES)))
    kind = rng.randrange(6)
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool,
                        torch.uint8])

    def tensor(*shape):
        return (torch.randn(*shape) * rng.choice([1, 1e30, 1e-30])).to(dtype)

    if kind == 0:
        tensors = {f"{key}.diff": tensor(*rng.choice([(8, 4), (4, 8), (8,), (8, 4, 1, 1), (0, 4)]))}
    elif kind == 1:
        r = rng.choice([0, 1, 2, 9])
        tensors = {f"{key}.lora_down.weight": tensor(r, 4), f"{key}.lora_up.weight": tensor(8, r)}
        if rng.random() < 0.7:
            tensors[f"{key}.alpha"] = rng.choice([torch.tensor(2.0), torch.tensor([1.0, 2.0]),
                                                  torch.tensor(float("nan")), torch.tensor(0.0),
                                                  torch.zeros(0), torch.tensor(1e38)])
    elif kind == 2:
        tensors = {rng.choice([f"{key}.lora_down.weight", f"{key}.weird", "x", f"{key}",
                               "lora_te_text_model.diff"]): tensor(8, 4)}
    elif kind == 3:
        tensors = {}
    else:
        tensors = {f"{key}.diff": tensor(8, 4)}
    meta = {"config": rng.choice(["{", "[]", json.dumps({"concepts": ["x"]}), "\x00"]),
            "ss_network_dim": rng.choice(["8", "nan", "Dynamic"])}
    data = bytearray(save(tensors, metadata=meta))
    if kind == 4:  # truncated
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 5:  # flipped bytes
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(data))
            data[i] = rng.randrange(256)
    return bytes(data)


def test_file_contents_load_cleanly_or_are_refused_by_name(tmp_path):
    rng = random.Random(18)
    loaded = 0
    for i in range(400):
        path = tmp_path / f"f{i}.safetensors"
        path.write_bytes(random_file_bytes(rng))
        try:
            result = load_erasure(path, SHAPES)
        except UnlearnError as e:
            assert "Fix:" in str(e) or "do not fit" in str(e) or "match no layer" in str(e), str(e)
            continue
        loaded += 1
        for name, d in result.deltas.items():  # what loads is safe to apply
            w = d.weight()
            assert tuple(w.shape) == SHAPES[name] and torch.isfinite(w).all()
        try:
            read_metadata(path)
        except UnlearnError:
            pass
    assert loaded > 10


def test_save_refuses_without_writing(tmp_path):
    rng = random.Random(19)
    cases = [
        ({LAYER: Delta(diff=torch.full((8, 4), float("nan")))}, {}),
        ({}, {}),
        ({LAYER: Delta(diff=torch.ones(8, 4))}, {}),  # the name exists (below)
    ]
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"keep")
    for _ in range(20):
        deltas, meta = rng.choice(cases)
        target = rng.choice([existing, tmp_path / "new.safetensors", tmp_path / "x.txt",
                             tmp_path / "missing" / "a.safetensors"])
        if deltas and target.name == "new.safetensors" and torch.isfinite(
                next(iter(deltas.values())).weight()).all():
            continue  # a valid save
        with pytest.raises(UnlearnError):
            save_erasure(target, deltas, meta)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]
        assert existing.read_bytes() == b"keep"


# ---- the CLI --------------------------------------------------------------------------------

FLAG_VALUES = ["nan", "inf", "-inf", "-1", "0", "1e400", "9" * 400, "abc", "", "日本語",
               "x" * 400, "0.5", "3"]


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return make_sd1_folder(tmp_path_factory.mktemp("sd1") / "model")


def test_cli_refuses_with_exit_2_and_touches_nothing(sd1, tmp_path, capsys, monkeypatch):
    """Random flag values: each run is refused (exit 2, one message, no output file, the model
    never loaded) or accepted (the model is loaded: the config was valid)."""
    import unlearn_core.sd1 as sd1_module
    from unlearn_core.cli import main

    class Loaded(UnlearnError):
        pass

    def loading(*args, **kwargs):
        raise Loaded("loaded")

    monkeypatch.setattr(sd1_module, "SD1Pipeline", loading)
    rng = random.Random(20)
    flags = [f for f in config_fields() if not isinstance(config_fields()[f].default, tuple)]
    refused = accepted = 0
    for i in range(60):
        out = tmp_path / f"out{i}.safetensors"
        argv = ["erase", "--model", str(sd1), "--output", str(out), "--concept",
                rng.choice(["a cat", "x" * 200, " ", "日本語"])]
        for name in rng.sample(flags, rng.randrange(1, 4)):
            argv += ["--" + name.replace("_", "-"), rng.choice(FLAG_VALUES)]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: a value of the wrong type; its own usage message
            code = e.code
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        assert not out.exists()
        if "loaded" in err:
            accepted += 1
            continue
        refused += 1
        assert code == 2, (argv, err)
        assert err.strip(), argv
    assert refused > 20
    # The accepting path is exercised whatever the random draw gave: a plain valid run reaches
    # the model loading (and so would have trained).
    out = tmp_path / "valid.safetensors"
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "a cat",
                 "--steps", "3"])
    assert code == 2 and "loaded" in capsys.readouterr().err and not out.exists()
