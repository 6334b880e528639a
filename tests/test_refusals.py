"""Refusals before heavy work, and finished work kept, on the library and the CLI:

- one prompt-length rule (``unlearn_core.prompts``), used by the CLI here and by the nodes
  (tests/test_nodes_refusals.py): a text longer than SD-1's text encoder reads is refused with
  its token count and the limit, before any model is loaded;
- the LoRA rank is checked against the layer sizes from ``unet/config.json`` before loading;
- an SVD rank larger than the layers is recorded as the rank written;
- an output name taken while the run trained: the work is written beside it, and said so;
- CLIP score and directional similarity of no images are errors, not NaN.
"""

from __future__ import annotations

import logging

import pytest
import torch
from unlearn_testkit.sd1_fixture import make_sd1_folder

from unlearn_core.cli import main
from unlearn_core.config import EraseConfig
from unlearn_core.errors import ConfigError
from unlearn_core.files import read_metadata
from unlearn_core.prompts import MAX_PROMPT_TOKENS, check_config_prompts, trajectory_prompt

torch.set_num_threads(1)


def words(text: str) -> int:
    """A stand-in tokenizer: one token per word."""
    return len(text.split())


# ---- the prompt-length rule ----------------------------------------------------------------

def test_a_concept_longer_than_the_text_encoder_reads_is_refused_with_its_count():
    config = EraseConfig(concepts=("Van Gogh", " ".join(["word"] * 2000)))
    with pytest.raises(ConfigError) as e:
        check_config_prompts(config, words)
    msg = str(e.value)
    assert e.value.field == "concepts"
    assert "line 2 is 2000 tokens long" in msg and "at most 75 tokens (77 with its start and end" in msg
    assert "not erased" in msg and "Fix: shorten it to at most 75 tokens" in msg
    check_config_prompts(EraseConfig(concepts=(" ".join(["w"] * MAX_PROMPT_TOKENS),)), words)


def test_retain_prompts_and_the_uce_guide_follow_the_same_rule():
    long = " ".join(["w"] * 76)
    with pytest.raises(ConfigError, match="retain_prompts = .*76 tokens long.*not held"):
        check_config_prompts(EraseConfig(concepts=("a",), retain_prompts=(long,)), words)
    with pytest.raises(ConfigError, match="uce_guide = .*76 tokens long"):
        check_config_prompts(EraseConfig(concepts=("a",), method="uce", uce_guide=long), words)
    # a training run does not encode the guide; conditioning given as embeddings is not text
    check_config_prompts(EraseConfig(concepts=("a",), uce_guide=long), words)
    check_config_prompts(EraseConfig(concepts=(long,)), words, skip=("concepts",))


def test_the_joint_sampling_prompt_keeps_whole_concepts_that_fit_and_says_which(caplog):
    concepts = [" ".join([f"c{i}"] * 20) for i in range(5)]  # 5 x 20 tokens, joined 100
    with caplog.at_level(logging.WARNING):
        text = trajectory_prompt(concepts, words)
    assert text == ", ".join(concepts[:3]) and words(text) <= MAX_PROMPT_TOKENS
    assert "sampled from the first 3" in caplog.text and repr(concepts[4]) in caplog.text
    caplog.clear()
    assert trajectory_prompt(concepts[:2], words) == ", ".join(concepts[:2])
    assert trajectory_prompt(concepts, None) == ", ".join(concepts)
    assert caplog.text == ""


def test_encode_conditioning_applies_the_rule_before_encoding():
    from unlearn_core.conditioning import encode_conditioning

    encoded = []

    def encode(texts):
        encoded.append(list(texts))
        return torch.zeros(len(texts), 77, 8)

    config = EraseConfig(concepts=(" ".join(["w"] * 80),))
    with pytest.raises(ConfigError, match="80 tokens long"):
        encode_conditioning(encode, config, count_tokens=words)
    assert encoded == []
    cond = encode_conditioning(encode, EraseConfig(concepts=("a b", "c d")), count_tokens=words)
    assert "a b, c d" in encoded[-1] and len(cond.concepts) == 2  # the joint trajectory prompt


# ---- the CLI: refused before loading -------------------------------------------------------

@pytest.fixture
def sd1(tmp_path):
    return make_sd1_folder(tmp_path / "sd1")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the CLI gets as far as loading the model."""
    import unlearn_core.sd1 as sd1

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sd1, "SD1Pipeline", refuse)


def test_cli_refuses_a_long_concept_before_loading(sd1, tmp_path, capsys, no_loading):
    out = tmp_path / "e.safetensors"
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "x" * 300])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "concepts = " in err and "300 tokens long" in err and "at most 75 tokens" in err
    assert not out.exists()


def test_cli_refuses_a_lora_rank_above_the_layer_sizes_before_loading(sd1, tmp_path, capsys,
                                                                      no_loading):
    out = tmp_path / "e.safetensors"
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "a cat",
                 "--parametrization", "lora", "--lora-rank", "100000"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "lora_rank = 100000" in err and "Fix: set lora_rank to 32 or less" in err
    assert not out.exists()


TINY = ["--steps", "1", "--resolution", "8", "--sampling-steps", "2"]


def test_cli_keeps_the_work_when_the_output_name_is_taken_during_the_run(sd1, tmp_path, capsys,
                                                                         monkeypatch):
    import unlearn_core.trainer as trainer

    out = tmp_path / "e.safetensors"
    real_erase = trainer.erase

    def erase_while_someone_takes_the_name(*args, **kwargs):
        result = real_erase(*args, **kwargs)
        out.write_bytes(b"someone else's")
        return result

    monkeypatch.setattr(trainer, "erase", erase_while_someone_takes_the_name)
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "a cat", *TINY])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    kept = tmp_path / "e-2.safetensors"
    assert out.read_bytes() == b"someone else's"
    assert f"--output {out} was created by something else" in captured.err
    assert f"written to {kept}" in captured.err and f"wrote {kept}" in captured.out
    assert read_metadata(kept)["config"]["concepts"] == ["a cat"]


def test_cli_records_the_svd_rank_actually_written(sd1, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "a cat", *TINY,
                 "--parametrization", "full", "--svd-rank", "100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    meta = read_metadata(out)
    # the tiny UNet's attention layers are 32 and 64 wide: each is stored at its full rank
    assert meta["svd_rank"] == 64 and meta["svd_rank_requested"] == 100
    assert set(meta["svd_layer_ranks"].values()) == {32, 64}
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic"
    assert "svd_rank 100 is more than" in captured.err and "full rank (32-64)" in captured.err
    assert "SVD rank 64" in captured.out


# ---- metrics: no images is an error --------------------------------------------------------

def _stub_clip():
    from unlearn_core.metrics.clip_score import ClipModel

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def encode_image(self, x):
            return x.mean(dim=(2, 3))

        def encode_text(self, tokens):
            return torch.ones(tokens.shape[0], 3)

    return ClipModel(model=Net(), tokenizer=lambda texts: torch.zeros(len(texts), 4, dtype=torch.long),
                     preprocess=lambda images: images, arch="stub")


def test_clip_score_and_directional_similarity_of_no_images_are_errors():
    from unlearn_core.metrics.clip_score import clip_score
    from unlearn_core.metrics.directional import directional_similarity

    none = torch.zeros(0, 3, 8, 8)
    with pytest.raises(ConfigError, match="images = .*no images to score.*Fix:"):
        clip_score(_stub_clip(), none, "a cat")
    with pytest.raises(ConfigError, match="before = .*no images.*Fix:"):
        directional_similarity(_stub_clip(), none, none, "a", "b")
    one = torch.rand(1, 3, 8, 8)
    assert clip_score(_stub_clip(), one, "a cat").mean == clip_score(_stub_clip(), one, "a cat").mean


def test_cli_probe_refuses_a_long_concept_before_loading(sd1, tmp_path, capsys, no_loading):
    """The erase command's prompt-length rule holds for the probe's prompts too."""
    erasure, clip = tmp_path / "e.safetensors", tmp_path / "clip.safetensors"
    erasure.write_bytes(b"x")
    clip.write_bytes(b"x")
    code = main(["probe", "--model", str(sd1), "--erasure", str(erasure), "--concept", "x" * 300,
                 "--scorer", "clip", "--clip-arch", "ViT-B-32", "--clip-weights", str(clip)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--concept = " in err and "300 tokens long" in err and "at most 75 tokens" in err


def test_cli_refuses_svd_rank_with_a_lora_instead_of_ignoring_it(sd1, tmp_path, capsys,
                                                                  no_loading):
    out = tmp_path / "e.safetensors"
    code = main(["erase", "--model", str(sd1), "--output", str(out), "--concept", "a cat",
                 "--parametrization", "lora", "--svd-rank", "4"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--svd-rank = 4" in err and "trains a LoRA already" in err and "--lora-rank" in err
    assert not out.exists()
