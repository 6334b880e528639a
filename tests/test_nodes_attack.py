"""The Red-Team Attack node on the real ComfyUI host (small SD-1.x fixture, 64x64 px, tiny
budgets): it runs, spends its budget, reports into the Erasure Report, never changes the models,
stops on Cancel, and refuses bad widgets before anything samples."""

from __future__ import annotations

import math

import pytest
from unlearn_testkit import comfy_host as ch
from unlearn_testkit import node_helpers as nh

pytestmark = pytest.mark.comfy

TINY_ATTACK = dict(concept="a photo of a cat", steps=2, batch_size=1, tokens=2, targets=2,
                   seeds="0, 1", sampling_steps=2, batch=2, width=64, height=64, threshold=20.0)


def _graph(comfy_host, ckpt, kind="concept_inversion", **inputs):
    """Loader "4", an erased model "20" (student weights, two steps), the CLIP scorer "50" and the
    attack "90" on the erased model."""
    prompt = nh.erase_prompt(ckpt, concepts="a photo of a cat", sample_erased=False,
                             node_classes=comfy_host.node_classes,
                             **{**nh.TINY_TRAINING, "steps": 2, "result": "student", "lr": 1e-3})
    prompt["50"] = {"class_type": "UnlearnCLIPLoader",
                    "inputs": {"clip_arch": "auto (from the file)",
                               "clip_weights": nh.toy_clip_file(comfy_host)}}
    values = nh.widget_defaults(comfy_host.node_classes, "UnlearnAttack")
    values.update(TINY_ATTACK, kind=kind, **inputs)
    prompt["90"] = {"class_type": "UnlearnAttack", "inputs": {
        "base_model": ["4", 0], "erased_model": ["20", 0], "clip": ["4", 1], "vae": ["4", 2],
        "scorer": ["50", 0], **values}}
    return prompt


def _weights_hash(model) -> str:
    import comfy.model_management

    comfy.model_management.unload_all_models()
    return ch.hash_model_weights(model)


@pytest.mark.parametrize("kind", ["concept_inversion", "prompt_attack", "probe"])
def test_attack_runs_and_leaves_the_models_as_they_were(comfy_host, small_sd15_ckpt, kind):
    import torch

    comfy_host.run(ch.stock_txt2img_prompt(small_sd15_ckpt, seed=1),
                   fresh_cache=True).raise_for_status()
    base = comfy_host.node_output("4", 0)
    before = _weights_hash(base)
    prompt = _graph(comfy_host, small_sd15_ckpt, kind, psis="0.5")
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    images, asr, summary, attack = (nh.outputs_of(comfy_host, "90")[i][0] for i in range(4))
    n = 2 if kind != "probe" else 2  # two seeds (the probe: one psi x two seeds)
    assert images.shape == (n, 64, 64, 3) and torch.isfinite(images).all()
    assert 0.0 <= asr <= 1.0 and math.isfinite(asr)
    assert "ASR" in summary and "UNet evaluations" in summary
    assert result.outputs_ui["90"]["text"] == [summary]
    if kind != "probe":
        assert attack.unet_evals_grad == 2 * 1  # steps x batch_size: the budget, exactly
        assert attack.context.shape[1] == 77
    assert result.progress("90")[-1][0] > 0
    base = comfy_host.node_output("4", 0)
    assert base.patches == {}
    assert _weights_hash(base) == before
    assert all(p.is_inference() for p in base.model.diffusion_model.parameters())


def test_report_shows_the_attack_success_rate(comfy_host, small_sd15_ckpt):
    prompt = _graph(comfy_host, small_sd15_ckpt)
    values = nh.widget_defaults(comfy_host.node_classes, "UnlearnReport")
    values.update(erased_prompts="a photo of a cat", retained_prompts="", seeds="0",
                  sampling_steps=2, batch_size=2, width=64, height=64)
    prompt["80"] = {"class_type": "UnlearnReport", "inputs": {
        "base_model": ["4", 0], "erased_model": ["20", 0], "clip": ["4", 1], "vae": ["4", 2],
        "scorer": ["50", 0], "attack": ["90", 3], **values}}
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    summary = nh.outputs_of(comfy_host, "80")[2][0]
    assert "**Red-team attack**: concept inversion on 'a photo of a cat': ASR" in summary


def test_cancel_stops_the_attack_and_restores_the_weights(comfy_host, small_sd15_ckpt):
    comfy_host.run(ch.stock_txt2img_prompt(small_sd15_ckpt, seed=1),
                   fresh_cache=True).raise_for_status()
    base = comfy_host.node_output("4", 0)
    before = _weights_hash(base)
    prompt = _graph(comfy_host, small_sd15_ckpt, steps=50)
    result = comfy_host.run(prompt, fresh_cache=True,
                            interrupt_when=lambda v, total, node: node == "90" and v == 3)
    assert result.interrupted and not result.success
    assert result.progress("90")[-1][0] == 3
    with pytest.raises(KeyError):
        comfy_host.node_output("90", 0)
    base = comfy_host.node_output("4", 0)
    assert _weights_hash(base) == before
    assert all(p.is_inference() for p in base.model.diffusion_model.parameters())


@pytest.mark.parametrize("inputs, start", [
    (dict(seeds="0, x"), "seeds = '0, x'"),
    (dict(threshold=float("nan")), "threshold = nan"),
])
def test_bad_widgets_are_refused_when_queued(comfy_host, small_sd15_ckpt, inputs, start):
    prompt = _graph(comfy_host, small_sd15_ckpt, **inputs)
    for node_id in [k for k, v in prompt.items() if v["class_type"] in ("SaveImage",
                                                                          "PreviewImage")]:
        del prompt[node_id]  # the attack is the only output: nothing of the prompt runs
    result = comfy_host.run(prompt)
    assert not result.valid and result.messages == []
    errors = result.node_errors["90"]["errors"]  # the 2024 host lists it once per input checked
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors)
    assert all(start in e["details"] and "Fix:" in e["details"] for e in errors), errors


def test_a_blank_concept_names_the_input_before_sampling(comfy_host, small_sd15_ckpt,
                                                         monkeypatch):
    host = nh.pack_module("nodes.host")
    calls = []
    monkeypatch.setattr(host, "sampling_denoiser", lambda *a, **k: calls.append(a))
    result = comfy_host.run(_graph(comfy_host, small_sd15_ckpt, concept="  "), fresh_cache=True)
    assert result.valid and not result.success
    assert ch.node_error_message(result.error).startswith("concept = '  ': no concept given")
    assert calls == []
