"""The measuring nodes on the real ComfyUI host: the CLIP loader reads a local open_clip
file (the toy world's tiny CLIP stands in for ViT-L-14), the scores equal the core's functions on
the same images, and the probe and report run on the small SD-1.x fixture at 64x64 px.
"""

from __future__ import annotations

import math
import re

import pytest
from unlearn_testkit import comfy_host as ch
from unlearn_testkit import node_helpers as nh

pytestmark = pytest.mark.comfy


@pytest.fixture
def clip_file(comfy_host):
    return nh.toy_clip_file(comfy_host)


def _graph(ckpt, clip_file, **erase_inputs):
    """Loader "4", an erased model "20" (student weights: a visible change in two steps), base
    images "8" and erased images "38" from the same seed, the CLIP scorer "50"."""
    prompt = nh.erase_prompt(ckpt, concepts="a photo of a cat", sample_erased=False,
                             **{**nh.TINY_TRAINING, "steps": 2, "result": "student", "lr": 1e-3,
                                **erase_inputs})
    del prompt["30"]
    prompt["3"]["inputs"]["seed"] = 7
    prompt["33"] = {"class_type": "KSampler",
                    "inputs": {**prompt["3"]["inputs"], "model": ["20", 0]}}
    prompt["38"] = {"class_type": "VAEDecode", "inputs": {"samples": ["33", 0], "vae": ["4", 2]}}
    prompt["39"] = {"class_type": "PreviewImage", "inputs": {"images": ["38", 0]}}
    prompt["50"] = {"class_type": "UnlearnCLIPLoader",
                    "inputs": {"clip_arch": "auto (from the file)", "clip_weights": clip_file}}
    return prompt


def _with_defaults(comfy_host, prompt, node_id, node_type, **inputs):
    values = nh.widget_defaults(comfy_host.node_classes, node_type)
    values.update(inputs)
    prompt[node_id] = {"class_type": node_type, "inputs": values}
    return prompt


def test_clip_score_and_directional_similarity_match_the_core(comfy_host, small_sd15_ckpt,
                                                             clip_file):
    prompt = _graph(small_sd15_ckpt, clip_file)
    prompt = _with_defaults(comfy_host, prompt, "20", "UnlearnEraseConceptAdvanced",
                            **prompt["20"]["inputs"])
    prompt["60"] = {"class_type": "UnlearnCLIPScore", "inputs": {
        "clip_model": ["50", 0], "images": ["8", 0], "prompt": "a photo of a cat",
        "template": "{}"}}
    prompt["61"] = {"class_type": "UnlearnDirectionalSimilarity", "inputs": {
        "clip_model": ["50", 0], "before": ["8", 0], "after": ["38", 0],
        "source": "a photo of a cat", "target": "a photo", "template": "{}"}}
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    metrics = nh.pack_module("unlearn_core.metrics")
    images = nh.pack_module("nodes.metrics").to_core_images
    clip = comfy_host.node_output("50", 0)
    assert type(clip).__name__ == "ClipModel" and clip.arch == "unlearn-toy-clip"
    before, after = comfy_host.node_output("8", 0), comfy_host.node_output("38", 0)
    want = metrics.clip_score(clip, images(before), "a photo of a cat")
    scores = nh.outputs_of(comfy_host, "60")
    assert scores[0] == [pytest.approx(float(want.per_image[0]))]
    assert scores[1] == [pytest.approx(want.mean)]
    assert "| **mean** |" in scores[2][0]
    assert result.outputs_ui["60"]["text"] == [scores[2][0]]
    want_dir = metrics.directional_similarity(clip, images(before), images(after),
                                              "a photo of a cat", "a photo")
    got_dir = nh.outputs_of(comfy_host, "61")
    assert got_dir[1] == [pytest.approx(want_dir.mean)]
    assert -1.0 <= want_dir.mean <= 1.0 and want_dir.mean != 0.0  # the erasure moved the image


def test_clip_loader_names_the_input_to_fix(comfy_host, small_sd15_ckpt, clip_file):
    prompt = {"50": {"class_type": "UnlearnCLIPLoader",
                     "inputs": {"clip_arch": "ViT-B-32", "clip_weights": clip_file}},
              "60": {"class_type": "UnlearnCLIPScore", "inputs": {
                  "clip_model": ["50", 0], "images": ["8", 0], "prompt": "a cat",
                  "template": "{}"}},
              **{k: v for k, v in ch.stock_txt2img_prompt(small_sd15_ckpt).items()
                 if k in ("3", "4", "5", "6", "7", "8")}}
    result = comfy_host.run(prompt, fresh_cache=True)
    assert result.valid and not result.success
    err = result.error
    assert err["node_id"] == "50"
    assert "does not match the open_clip architecture 'ViT-B-32'" in ch.node_error_message(err)
    assert "(clip_arch)" in ch.node_error_message(err) and "(clip_weights)" in ch.node_error_message(err)


def test_probe_runs_and_an_unchanged_model_scores_like_the_base(comfy_host, small_sd15_ckpt,
                                                                 clip_file):
    import torch

    prompt = _graph(small_sd15_ckpt, clip_file)
    prompt = _with_defaults(comfy_host, prompt, "20", "UnlearnEraseConceptAdvanced",
                            **prompt["20"]["inputs"])
    common = dict(base_model=["4", 0], clip=["4", 1], vae=["4", 2], scorer=["50", 0],
                  concept="a photo of a cat", psis="0.5", seeds="0, 1", sampling_steps=2,
                  batch_size=2, width=64, height=64)
    prompt = _with_defaults(comfy_host, prompt, "70", "UnlearnProbe", erased_model=["20", 0],
                            **common)
    prompt = _with_defaults(comfy_host, prompt, "71", "UnlearnProbe", erased_model=["4", 0],
                            **common)
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    assert result.progress("70")[-1][0] > 0
    curve, ccs, grid, summary = (nh.outputs_of(comfy_host, "70")[i][0] for i in range(4))
    assert curve.dim() == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    assert grid.dim() == 4 and grid.shape[-1] == 3
    assert math.isfinite(ccs) and 0.0 <= ccs <= 100.0
    assert "CCS-style score" in summary
    # Erased model = base model: every psi gives the base model's images, so the CCS equals the
    # base model's presence.
    same = nh.outputs_of(comfy_host, "71")[3][0]
    base_alone = re.search(r"base model alone ([0-9.e+-]+)", same).group(1)
    assert re.search(r"CCS-style score: \*\*([0-9.e+-]+)\*\*", same).group(1) == base_alone
    assert comfy_host.node_output("4", 0).patches == {}
    assert torch.isfinite(curve).all()


def test_report_runs_with_erased_and_retained_prompts(comfy_host, small_sd15_ckpt, clip_file):
    prompt = _graph(small_sd15_ckpt, clip_file)
    prompt = _with_defaults(comfy_host, prompt, "20", "UnlearnEraseConceptAdvanced",
                            **prompt["20"]["inputs"])
    prompt = _with_defaults(
        comfy_host, prompt, "80", "UnlearnReport", base_model=["4", 0], erased_model=["20", 0],
        clip=["4", 1], vae=["4", 2], scorer=["50", 0], erasure=["20", 1],
        erased_prompts="a photo of a cat", retained_prompts="a photo of a dog\na red car",
        seeds="0, 1", sampling_steps=2, batch_size=4, width=64, height=64)
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    grid, plot, summary = (nh.outputs_of(comfy_host, "80")[i][0] for i in range(3))
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and plot.shape[-1] == 3
    assert summary.startswith("## Erasure report: a photo of a cat")
    assert "**Erased prompts**" in summary and "**Retained prompts**" in summary
    assert "Training: 2 steps" in summary
    assert result.progress("80")[-1] == (12, 12)  # 3 prompts x 2 seeds, before and after
    assert result.outputs_ui["80"]["text"] == [summary]


def test_report_without_prompts_names_the_input(comfy_host, small_sd15_ckpt, clip_file):
    prompt = _graph(small_sd15_ckpt, clip_file)
    prompt = _with_defaults(comfy_host, prompt, "20", "UnlearnEraseConceptAdvanced",
                            **prompt["20"]["inputs"])
    prompt = _with_defaults(
        comfy_host, prompt, "80", "UnlearnReport", base_model=["4", 0], erased_model=["20", 0],
        clip=["4", 1], vae=["4", 2], scorer=["50", 0], erased_prompts=" ", retained_prompts="",
        width=64, height=64)
    result = comfy_host.run(prompt, fresh_cache=True)
    assert not result.success
    msg = result.error_message
    assert msg.startswith("erased_prompts = ") and "Fix: give erased prompts" in msg
