"""Bad values never reach a model, and fail before heavy work, on the real ComfyUI host:

- NaN/Inf strength on Apply Erasure: refused by the validator (ComfyUI's own range check lets NaN
  through), and by the node itself;
- a concept longer than SD-1's text encoder reads: refused with its token count before training,
  by the same core rule as the CLI, counting the same tokens;
- the Probe's ``psis``/``seeds`` and the Report's ``seeds`` are checked by VALIDATE_INPUTS, before
  an Erase node upstream trains;
- CLIP Score of an empty image batch is an error, not a NaN mean;
- Save keeps the letters of a non-ASCII name, records the SVD rank it wrote and kohya's fields;
- judge_every without a judge is named before the model loads; with Unlearn CLIP Loader's model
  and the checkpoint's VAE it stops training on the judge's verdict.

Messages are compared by substring: ComfyUI 0.3.x appends a newline to node errors.
"""

from __future__ import annotations

import json

import pytest
from unlearn_testkit import node_helpers as nh

pytestmark = pytest.mark.comfy


def _validation_errors(result, node_id: str) -> list[dict]:
    assert not result.valid, "the prompt was accepted"
    return result.node_errors[node_id]["errors"]


# ---- Apply Erasure: NaN / Inf strength ----------------------------------------------------

@pytest.mark.parametrize("strength", ["nan", float("nan"), "inf", "-inf"])
def test_apply_erasure_refuses_a_non_finite_strength_before_running(comfy_host, small_sd15_ckpt,
                                                                    strength):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", sample_erased=False)
    del prompt["30"]  # the only output samples from the Apply node
    prompt["60"] = {"class_type": "UnlearnApplyErasure",
                    "inputs": {"model": ["4", 0], "erasure": ["20", 1], "strength": strength}}
    prompt["3"]["inputs"]["model"] = ["60", 0]
    result = comfy_host.run(prompt)
    errors = _validation_errors(result, "60")
    custom = [e for e in errors if e["type"] == "custom_validation_failed"]
    assert custom and custom[0]["extra_info"]["input_name"] == "strength"
    assert "strength = " in custom[0]["details"] and "finite" in custom[0]["details"]
    assert "Fix: give a number" in custom[0]["details"]
    assert result.messages == []  # nothing ran: no training, no sampling


def test_apply_erasure_refuses_nan_even_where_the_validator_is_skipped(comfy_host):
    apply = comfy_host.node_classes["UnlearnApplyErasure"]()
    with pytest.raises(Exception) as e:
        apply.apply(model=None, erasure=None, strength=float("nan"))
    assert type(e.value).__name__ == "ConfigError" and "strength = nan" in str(e.value)
    validate = comfy_host.node_classes["UnlearnApplyErasure"].VALIDATE_INPUTS
    assert validate(strength=1.0) is True and validate(strength=None) is True
    assert "outside -10..10" in validate(strength=11.0)  # the range the host skips for us


# ---- long concepts: one rule with the CLI ---------------------------------------------------

@pytest.mark.parametrize("node_type", ["UnlearnEraseConcept", "UnlearnEraseConceptAdvanced",
                                       "UnlearnEraseConceptUCE"])
def test_a_concept_longer_than_clip_reads_is_refused_before_training(comfy_host, small_sd15_ckpt,
                                                                     monkeypatch, node_type):
    host = nh.pack_module("nodes.host")
    trained = []
    # run_erase builds the conditioning (and checks its texts) after the MODEL check and before
    # loading the model: refused means the model was never loaded, let alone trained
    monkeypatch.setattr(host, "_load", lambda *a, **k: trained.append(1))
    essay = " ".join(["painting"] * 2000)
    prompt = nh.erase_prompt(small_sd15_ckpt, node_type, node_classes=comfy_host.node_classes,
                             concepts=f"Van Gogh\n{essay}")
    result = comfy_host.run(prompt, fresh_cache=True)
    assert result.valid and not result.success
    err = result.error
    assert err["node_id"] == "20" and err["exception_type"].endswith("ConfigError")
    msg = err["exception_message"]
    assert msg.startswith("concepts = ") and "line 2 is 2000 tokens long" in msg
    assert "at most 75 tokens (77 with its start and end tokens)" in msg and "not erased" in msg
    assert "Fix: shorten it to at most 75 tokens" in msg
    assert trained == [] and result.progress("20") == []


def test_a_long_retain_prompt_is_refused_too(comfy_host, small_sd15_ckpt, monkeypatch):
    host = nh.pack_module("nodes.host")
    monkeypatch.setattr(host, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", retain_prompts=" ".join(["cat"] * 80),
                             retain_weight=1.0)
    result = comfy_host.run(prompt, fresh_cache=True)
    msg = result.error["exception_message"]
    assert msg.startswith("retain_prompts = ") and "80 tokens long" in msg and "not held" in msg


def test_the_node_counts_the_tokens_the_cli_counts(comfy_host, small_sd15_ckpt):
    """The node counts with ComfyUI's tokenizer, the CLI with the model folder's CLIPTokenizer:
    the same CLIP BPE, so the same count, and the rule decides the same on both."""
    from transformers import CLIPTokenizer

    comfy_host.run(nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                                   concepts="a dog", sample_erased=False, steps=1)
                   ).raise_for_status()
    clip = comfy_host.node_output("4", 1)
    count = nh.pack_module("nodes.erase").token_counter(clip)
    hf = CLIPTokenizer.from_pretrained(str(comfy_host.comfy_dir / "comfy" / "sd1_tokenizer"))
    texts = ["", "Van Gogh", "a photo of an astronaut riding a horse on the moon",
             " ".join(["word"] * 75), " ".join(["word"] * 76), " ".join(["painting"] * 300),
             "Hokusai, ukiyo-e, the great wave off kanagawa"]
    for text in texts:
        assert count(text) == len(hf.tokenize(text)), text


# ---- the Probe and the Report: checked before anything upstream runs ------------------------

def _probe_prompt(comfy_host, ckpt, **probe_inputs):
    prompt = nh.erase_prompt(ckpt, node_classes=comfy_host.node_classes, concepts="a dog",
                             sample_erased=False)
    for nid in ("3", "8", "9", "30"):  # the probe (or report) is the only output
        del prompt[nid]
    prompt["50"] = {"class_type": "UnlearnCLIPLoader", "inputs": {
        "clip_arch": "auto (from the file)", "clip_weights": nh.toy_clip_file(comfy_host)}}
    values = nh.widget_defaults(comfy_host.node_classes, "UnlearnProbe")
    values.update(base_model=["4", 0], erased_model=["20", 0], clip=["4", 1], vae=["4", 2],
                  scorer=["50", 0], concept="a dog", width=64, height=64, **probe_inputs)
    prompt["70"] = {"class_type": "UnlearnProbe", "inputs": values}
    return prompt


@pytest.mark.parametrize("inputs,field,text", [
    (dict(psis="0.5, abc"), "psis", "'abc' is not a number"),
    (dict(psis="0.5, 2"), "psis", "psi must lie in [0, 1]"),
    (dict(seeds="0, x"), "seeds", "'x' is not a seed or a range"),
    (dict(guidance=float("nan")), "guidance", "finite"),
])
def test_probe_widgets_fail_validation_before_the_erase_node_trains(comfy_host, small_sd15_ckpt,
                                                                    inputs, field, text):
    result = comfy_host.run(_probe_prompt(comfy_host, small_sd15_ckpt, **inputs))
    errors = _validation_errors(result, "70")
    assert errors and all(e["type"] == "custom_validation_failed" for e in errors)
    details = errors[0]["details"]
    assert f"{field} = " in details and text in details and "Fix:" in details
    assert result.messages == []  # the Erase node upstream never started
    good = comfy_host.validate(_probe_prompt(comfy_host, small_sd15_ckpt, psis="0.1, 0.5"))
    assert good[0] is True, good


def test_report_seeds_fail_validation_before_anything_runs(comfy_host, small_sd15_ckpt):
    prompt = _probe_prompt(comfy_host, small_sd15_ckpt)
    del prompt["70"]
    values = nh.widget_defaults(comfy_host.node_classes, "UnlearnReport")
    values.update(base_model=["4", 0], erased_model=["20", 0], clip=["4", 1], vae=["4", 2],
                  scorer=["50", 0], erased_prompts="a dog", seeds="0-3, seven", width=64,
                  height=64)
    prompt["71"] = {"class_type": "UnlearnReport", "inputs": values}
    result = comfy_host.run(prompt)
    [first, *_] = _validation_errors(result, "71")
    assert "seeds = " in first["details"] and "'seven' is not a seed" in first["details"]
    assert result.messages == []


# ---- CLIP Score of no images ------------------------------------------------------------------

class EmptyImages:
    """Test-only node: an IMAGE batch with no images (as an empty folder loader would give)."""

    CATEGORY = "testing"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import torch

        return (torch.zeros(0, 64, 64, 3),)


def test_clip_score_of_no_images_is_an_error_not_nan(comfy_host):
    comfy_host.node_classes["UnlearnTestEmptyImages"] = EmptyImages
    try:
        prompt = {
            "50": {"class_type": "UnlearnCLIPLoader", "inputs": {
                "clip_arch": "auto (from the file)", "clip_weights": nh.toy_clip_file(comfy_host)}},
            "51": {"class_type": "UnlearnTestEmptyImages", "inputs": {}},
            "60": {"class_type": "UnlearnCLIPScore", "inputs": {
                "clip_model": ["50", 0], "images": ["51", 0], "prompt": "a cat",
                "template": "{}"}},
        }
        result = comfy_host.run(prompt, fresh_cache=True)
        assert result.valid and not result.success
        err = result.error
        assert err["node_id"] == "60" and err["exception_type"].endswith("ConfigError")
        assert "images = '0 images': there are no images to score" in err["exception_message"]
        assert "Fix: connect a batch with at least one image" in err["exception_message"]
    finally:
        del comfy_host.node_classes["UnlearnTestEmptyImages"]


# ---- Save: names, ranks, kohya fields -----------------------------------------------------

def test_save_keeps_non_ascii_letters_and_strips_only_what_is_unsafe(comfy_host):
    sanitize = nh.pack_module("nodes.erasure_io").sanitize_prefix
    assert sanitize("日本語 ünï") == "日本語 ünï"
    assert sanitize("Ελληνικά/Кириллица") == "Ελληνικά_Кириллица"
    assert sanitize("a:b*c?d\x00e\nf") == "a_b_c_d_e_f"
    assert sanitize("u\u0308ber") == "über"  # one normal form (macOS hands in the decomposed one)
    assert sanitize("CON") == "_CON" and sanitize("nul.x") == "_nul.x"
    assert len(sanitize("語" * 300).encode("utf-8")) <= 200


def test_save_writes_the_letters_the_user_typed_with_the_ranks_it_wrote(comfy_host,
                                                                        small_sd15_ckpt):
    from safetensors import safe_open

    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", sample_erased=False, parametrization="full")
    prompt["21"] = {"class_type": "UnlearnSaveLoRA", "inputs": {
        "erasure": ["20", 1], "filename_prefix": "日本語 ünï", "svd_rank": 1280}}
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    [name] = result.outputs_ui["21"]["text"]
    assert name == "日本語 ünï_00001.safetensors"
    path = comfy_host.model_dir("loras") / name
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            ranks = {k: f.get_tensor(k).shape[0] for k in f.keys() if k.endswith("lora_down.weight")}
        written = max(ranks.values())
        assert written < 1280  # the small fixture's layers are at most 640 wide
        assert json.loads(meta["svd_rank"]) == written
        assert json.loads(meta["svd_rank_requested"]) == 1280
        cut = json.loads(meta["svd_layer_ranks"])
        assert len(cut) == len(ranks) and set(cut.values()) == set(ranks.values())
        assert meta["ss_network_module"] == "networks.lora"
        assert meta["ss_network_dim"] == (str(written) if len(set(ranks.values())) == 1
                                          else "Dynamic")
        assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_max_train_steps"] == "2"
        assert "a dog" in meta["ss_training_comment"]
        assert json.loads(meta["config"])["concepts"] == ["a dog"]  # ours are kept
    finally:
        path.unlink()


def test_save_names_from_random_prefixes_stay_in_the_folder(comfy_host, tmp_path):
    """Seeded random prefixes (separators, '..', control and invisible characters, every
    script): the stem never leaves the folder, never hides the file, fits the name limit, and
    keeps letters and digits as typed."""
    import random
    import unicodedata

    sanitize = nh.pack_module("nodes.erasure_io").sanitize_prefix
    rng = random.Random(21)
    pieces = ["/", "\\", "..", ".", " ", "\x00", "\n", "\u200b", "\u202e", ":", "*", "?", '"',
              "<", "|", "a", "Z", "9", "é", "ß", "日本", "Ж", "ع", "🙂", "_", "-", "CON", "x" * 60]
    for _ in range(500):
        prefix = "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        stem = sanitize(prefix)
        path = tmp_path / f"{stem}_00001.safetensors"
        assert path.parent == tmp_path and path.resolve().parent == tmp_path.resolve(), prefix
        assert stem and not stem.startswith(".") and not set(stem) & set('/\\<>:"|?*'), stem
        assert all(unicodedata.category(ch)[0] != "C" for ch in stem), repr(stem)
        assert len(stem.encode("utf-8")) <= 200
        path.write_bytes(b"")  # the file system takes the name
        path.unlink()
        letters = [ch for ch in unicodedata.normalize("NFC", prefix) if ch.isalnum()]
        if letters and len(letters) < 90:  # not cut for length, not the default name
            assert [ch for ch in stem if ch.isalnum()] == letters, (prefix, stem)


def test_a_long_probe_concept_is_refused_before_sampling(comfy_host, small_sd15_ckpt,
                                                         monkeypatch):
    """The Probe follows the erase nodes' prompt-length rule: over 75 tokens is refused with the
    count, before a single image is sampled (the erased model here is the base: no training)."""
    probe = nh.pack_module("unlearn_core.metrics.probe")
    monkeypatch.setattr(probe, "partial_diffusion_probe", lambda *a, **k: pytest.fail("sampled"))
    prompt = _probe_prompt(comfy_host, small_sd15_ckpt)
    prompt["70"]["inputs"].update(erased_model=["4", 0], concept=" ".join(["dog"] * 90))
    del prompt["20"]
    result = comfy_host.run(prompt, fresh_cache=True)
    assert result.valid and not result.success
    msg = result.error_message
    assert msg.startswith("concept = ") and "90 tokens long" in msg and "at most 75 tokens" in msg


# ---- the judge of judge_every: named when missing, a real CLIP model when given ------------

def test_judge_every_without_a_judge_is_refused_before_the_model_loads(comfy_host, small_sd15_ckpt,
                                                                      monkeypatch):
    host = nh.pack_module("nodes.host")
    monkeypatch.setattr(host, "_load", lambda *a, **k: pytest.fail("the model was loaded"))
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", judge_every=1)
    result = comfy_host.run(prompt, fresh_cache=True)
    assert result.valid and not result.success
    msg = result.error["exception_message"]
    assert msg.startswith("judge_clip = ") and "Unlearn CLIP Loader" in msg
    assert "set judge_every to 0" in msg


def test_judge_every_stops_on_the_clip_judge(comfy_host, small_sd15_ckpt):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             sample_erased=False, concepts="a dog",
                             **{**nh.TINY_TRAINING, "steps": 6, "judge_every": 1,
                                "judge_images": 1, "judge_threshold": 100.0})
    prompt["50"] = {"class_type": "UnlearnCLIPLoader",
                    "inputs": {"clip_arch": "auto (from the file)",
                               "clip_weights": nh.toy_clip_file(comfy_host)}}
    prompt["20"]["inputs"].update(judge_clip=["50", 0], judge_vae=["4", 2])
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    erasure = nh.outputs_of(comfy_host, "20")[1][0]
    info = erasure.metadata["judge_stop"]
    # no CLIP score reaches 100 (a cosine of 1): floor 0, nothing shown, erased at checks 1-3
    assert info["floors"] == [0.0] and info["steps_run"] == 3 and info["stopped_early"]
    assert len(erasure.loss_history) == 3
