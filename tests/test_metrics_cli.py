"""`unlearn score` on images on disk and `unlearn probe` on an SD-1-shaped folder and on the toy world."""

from __future__ import annotations

import json

import pytest
import torch
from test_metrics_clip import TINY_CLIP, random_tiny_clip_file
from test_metrics_probe import needs_toy
from unlearn_testkit.sd1_fixture import make_sd1_folder

from unlearn_core.cli import main
from unlearn_core.metrics.images import save_png
from unlearn_core.toyworld.clip import CLIP_NAME

torch.set_num_threads(1)


def write_images(folder, images):
    for i, img in enumerate(images):
        save_png(img, folder / f"img{i:02d}.png")
    return folder


@pytest.fixture()
def toy_pngs(tmp_path):
    from unlearn_core.toyworld.dataset import make_batch

    batch = make_batch(6, seed=99)
    before = write_images(tmp_path / "before", (batch.images + 1) / 2)
    after = write_images(tmp_path / "after", ((batch.images + 1) / 2)[:, [1, 0, 2]])
    return before, after


def test_score_images_on_disk(tmp_path, toy_pngs, capsys):
    before, after = toy_pngs
    clip = random_tiny_clip_file(tmp_path)
    out = tmp_path / "scores.json"
    code = main(["score", str(before), "--prompt", "a red circle", "--clip-arch", CLIP_NAME,
                 "--clip-weights", str(clip), "--template", "a picture: {}", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "img05.png" in captured.out and "**mean**" in captured.out
    data = json.loads(out.read_text())
    assert len(data["clip_score"]["per_image"]) == 6
    assert data["clip_score"]["prompts"][0] == "a picture: a red circle"
    # directional: before/after pairs
    code = main(["score", str(after), "--before", str(before), "--source", "red", "--target", "green",
                 "--prompt", "a circle", "--clip-arch", CLIP_NAME, "--clip-weights", str(clip),
                 "--json", str(out)])
    assert code == 0
    assert len(json.loads(out.read_text())["directional_similarity"]["per_pair"]) == 6


def test_score_errors_exit_2_with_a_message(tmp_path, toy_pngs, capsys):
    before, _ = toy_pngs
    clip = random_tiny_clip_file(tmp_path)
    assert main(["score", str(before), "--clip-arch", CLIP_NAME, "--clip-weights", str(clip)]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert main(["score", str(before), "--prompt", "x", "--clip-arch", "ViT-B-32"]) == 2
    assert "--clip-weights" in capsys.readouterr().err
    assert main(["score", str(before), "--prompt", "x", "--clip-arch", CLIP_NAME, "--clip-weights",
                 str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not TINY_CLIP.is_file(), reason="toy world tiny CLIP asset not trained yet")
def test_score_defaults_to_the_tiny_clip(toy_pngs, capsys):
    before, _ = toy_pngs
    assert main(["score", str(before), "--prompt", "a circle"]) == 0
    assert "**mean**" in capsys.readouterr().out


def add_tiny_vae(root):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                  norm_num_groups=4, layers_per_block=1).save_pretrained(root / "vae")


def test_probe_on_a_model_folder_with_an_erasure_file(tmp_path, capsys):
    from unlearn_core.delta import Delta
    from unlearn_core.files import save_erasure
    from unlearn_core.sd1 import SD1Pipeline
    from unlearn_core.selection import select_layers

    root = make_sd1_folder(tmp_path / "sd1")
    add_tiny_vae(root)
    unet = SD1Pipeline(root).denoiser.module
    g = torch.Generator().manual_seed(0)
    deltas = {n: Delta(diff=torch.randn(m.weight.shape, generator=g) * 0.1)
              for n, m in select_layers(unet, "xattn-kv").items()}
    erasure = save_erasure(tmp_path / "erasure.safetensors", deltas, {"note": "test"})
    clip = random_tiny_clip_file(tmp_path)
    out = tmp_path / "out"
    code = main(["probe", "--model", str(root), "--erasure", str(erasure), "--concept", "a cat",
                 "--clip-arch", CLIP_NAME, "--clip-weights", str(clip), "--resolution", "64",
                 "--seeds", "0-1", "--sampling-steps", "3", "--psis", "0.34, 0.67",
                 "--retained", "a dog", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "CCS-style score" in captured.out and "Retained prompts" in captured.out
    assert {p.name for p in out.iterdir()} >= {"probe_curve.png", "probe_images.png", "probe.json",
                                               "probe.md", "report_grid.png", "report.json"}
    data = json.loads((out / "probe.json").read_text())
    assert data["base_steps"] == [1, 2] and data["score"] == "CLIP score"


def test_probe_refuses_before_loading(tmp_path, capsys):
    assert main(["probe", "--concept", "x", "--psis", "2"]) == 2
    assert "psi must lie in [0, 1]" in capsys.readouterr().err
    assert main(["probe", "--concept", "x", "--model", str(tmp_path)]) == 2
    assert "--erasure" in capsys.readouterr().err
    assert main(["probe", "--concept", "x", "--erasure", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


@needs_toy
def test_probe_on_the_toy_world(tmp_path, capsys):
    code = main(["probe", "--concept", "cross", "--seeds", "0-3", "--sampling-steps", "6",
                 "--psis", "0, 0.5, 1", "--output", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((tmp_path / "probe.json").read_text())
    assert data["score"] == "judge confidence"
    assert data["curve"][0] < data["curve"][-1]
