"""The node pack inside a real ComfyUI: definitions, and prompts run by
ComfyUI's own validator and PromptExecutor on the small SD-1.x fixture.

Training runs are cut to CPU size: 2 steps at 8x8 latents with 4-step trajectories (the simple
node's hidden settings come from the core's "fast" preset, shrunk by the ``tiny_training``
fixture).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
from unlearn_testkit import comfy_host as ch
from unlearn_testkit import node_helpers as nh

pytestmark = pytest.mark.comfy

ERASE_NODES = {
    "UnlearnEraseConcept", "UnlearnEraseConceptAdvanced", "UnlearnEraseConceptUCE",
    "UnlearnSaveLoRA", "UnlearnApplyErasure",
}
MEASURE_NODES = {"UnlearnCLIPLoader", "UnlearnCLIPScore", "UnlearnDirectionalSimilarity",
                 "UnlearnProbe", "UnlearnReport", "UnlearnAttack"}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def _widgets(cls) -> dict:
    out = {}
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                out[name] = spec
    return out


def _base_model(comfy_host, ckpt):
    """Run the stock graph once so loader "4" holds the MODEL; return it and its weight hash."""
    comfy_host.run(ch.stock_txt2img_prompt(ckpt, seed=1), fresh_cache=True).raise_for_status()
    model = comfy_host.node_output("4", 0)
    return model, _weights_hash(model)


def _weights_hash(model) -> str:
    """Hash of the MODEL's own weights. Clones share one torch module and ComfyUI patches the
    loaded clone's weights into it, so unload everything first (which restores the backups)."""
    import comfy.model_management

    comfy.model_management.unload_all_models()
    return ch.hash_model_weights(model)


def _pixels(path) -> bytes:
    """Pixel bytes of a saved image (the PNG also embeds the prompt, whose node ids differ)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


# ---- definitions ---------------------------------------------------------------------------

def test_pack_registers_our_nodes_in_category_unlearn(comfy_host):
    assert comfy_host.pack_node_names == ERASE_NODES | MEASURE_NODES
    display = comfy_host.pack_module.NODE_DISPLAY_NAME_MAPPINGS
    for name in ERASE_NODES | MEASURE_NODES:
        cls = comfy_host.node_classes[name]
        assert cls.CATEGORY == ("unlearn" if name in ERASE_NODES else "unlearn/measure")
        assert "(Unlearn)" in display[name]
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        for spec in [*cls.INPUT_TYPES()["required"].values(),
                     *cls.INPUT_TYPES().get("optional", {}).values()]:
            assert spec[1]["tooltip"], (name, spec)


def test_inputs_are_config_fields_with_their_help_as_tooltip(comfy_host):
    config = nh.pack_module("unlearn_core.config")
    fields = config.config_fields()
    adv = _widgets(comfy_host.node_classes["UnlearnEraseConceptAdvanced"])
    assert set(adv) == set(fields), "every config field is a widget of the Advanced node"
    for name, spec in adv.items():
        meta = fields[name].metadata
        assert spec[1]["tooltip"] == meta["help"], name
        if "choices" in meta:
            assert spec[0] == list(meta["choices"]), name
        if spec[0] in ("INT", "FLOAT"):
            low = meta.get("min", meta.get("min_exclusive"))
            if low is not None:
                assert spec[1]["min"] >= low and (spec[1]["min"] > low or "min" in meta), name
            if "max" in meta:
                assert spec[1]["max"] <= meta["max"], name
            assert spec[1]["min"] <= spec[1]["default"] <= spec[1]["max"], name
    assert adv["selection"][0] == list(nh.pack_module("unlearn_core.selection").SELECTIONS)
    # The simple and UCE nodes use config names for every input that is a config setting.
    simple = _widgets(comfy_host.node_classes["UnlearnEraseConcept"])
    assert set(simple) - set(fields) == {"preset"}
    uce = _widgets(comfy_host.node_classes["UnlearnEraseConceptUCE"])
    assert set(uce) <= set(fields) and {"uce_guide", "retain_prompts", "uce_lambda"} <= set(uce)


def test_advanced_widgets_are_in_the_fields_order(comfy_host):
    """The node ComfyUI loads shows its widgets in nodes/fields.py's order (the order itself is
    checked against the committed example workflows in tests/test_nodes_offline.py)."""
    erase = nh.pack_module("nodes.erase")
    names = [n for n, _ in ch.widget_names(comfy_host.node_classes["UnlearnEraseConceptAdvanced"])]
    assert names == list(erase.ADVANCED_FIELDS)


def test_widget_defaults_are_the_config_with_the_fast_preset(comfy_host):
    config = nh.pack_module("unlearn_core.config")
    expected = {n: f.default for n, f in config.config_fields().items()}
    expected.update(config.RECIPES["fast"])
    adv = nh.widget_defaults(comfy_host.node_classes, "UnlearnEraseConceptAdvanced")
    for name, value in adv.items():
        want = expected[name]
        assert value == ("\n".join(want) if isinstance(want, tuple) else want), name
    simple = nh.widget_defaults(comfy_host.node_classes, "UnlearnEraseConcept")
    assert simple["steps"] == expected["steps"] and simple["loss"] == expected["loss"]


def test_presets_map_to_selections(comfy_host):
    presets = nh.pack_module("nodes.presets").USE_CASES
    assert set(presets) == {"identity", "artistic style", "nudity", "object", "logo"}
    assert presets["identity"]["selection"] == "xattn"
    assert presets["nudity"]["selection"] == "noxattn"
    spec = comfy_host.node_classes["UnlearnEraseConcept"].INPUT_TYPES()["required"]["preset"]
    assert spec[0] == list(presets)


def test_sanitize_prefix_keeps_files_in_the_folder(comfy_host):
    sanitize = nh.pack_module("nodes.erasure_io").sanitize_prefix
    assert sanitize("../../etc/passwd") == "etc_passwd"
    assert sanitize("styles/van gogh") == "styles_van gogh"
    assert sanitize("..\\..\\win") == "win"
    assert sanitize("") == sanitize("   ") == sanitize("..") == "unlearn_erasure"
    assert sanitize("name.safetensors") == "name"
    assert sanitize(".hidden") == "hidden"
    assert sanitize("a..b") == "a.b"
    assert "/" not in sanitize("a/b\\c:d*e?") and ":" not in sanitize("a:b")


def test_loss_plot_is_an_image(comfy_host):
    import torch

    plot = nh.pack_module("nodes.plot").loss_plot
    for history in ([], [0.5], [1.0, 0.5, 0.25], [10.0 ** -k for k in range(6)]):
        img = plot(history, "test")
        assert img.shape == (1, 256, 512, 3) and img.dtype == torch.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
    assert torch.equal(plot([1.0, 0.5]), plot([1.0, 0.5]))
    assert not torch.equal(plot([1.0, 0.5]), plot([0.5, 1.0]))


def test_layer_names_cover_every_trainable_layer(comfy_host):
    """ComfyUI's own LDM->diffusers map names every Linear/Conv2d of the small fixture and of the
    full SD-1.5 UNet, and agrees with the core's SD-1 attention-block table on the full one."""
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    host = nh.pack_module("nodes.host")
    keys = nh.pack_module("unlearn_core.keys")
    for shape in (ch.SMALL_UNET_CONFIG, ch.FULL_SD15_UNET_CONFIG):
        base = comfy.supported_models.SD15(ch.sd15_unet_config(shape)).get_model(
            {}, device=torch.device("meta"))
        patcher = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"),
                                                   offload_device=torch.device("cpu"))
        names = host.layer_names(patcher)
        layers = [n for n, m in base.diffusion_model.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert layers and all(n in names for n in layers), [n for n in layers if n not in names]
        assert len({names[n] for n in layers}) == len(layers)  # one to one
        if shape is ch.FULL_SD15_UNET_CONFIG:
            attn = [n for n in layers if ".attn" in n]
            assert len(attn) == 16 * 8
            for n in attn:
                assert names[n] == keys.ldm_to_diffusers(n), n


# ---- running the nodes -----------------------------------------------------------------------

def test_erase_concept_gives_a_patched_clone_and_leaves_the_input_alone(
        comfy_host, small_sd15_ckpt, tiny_training):
    base, before = _base_model(comfy_host, small_sd15_ckpt)
    prompt = nh.erase_prompt(small_sd15_ckpt, "UnlearnEraseConcept", concepts="a red bicycle")
    prompt["30"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 2]}}
    result = comfy_host.run(prompt).raise_for_status()
    assert "4" not in result.executed_nodes()  # the same MODEL object as before
    assert result.progress("20") == [(1, 2), (2, 2)]  # ProgressBar every step
    erased = comfy_host.node_output("20", 0)
    erasure = comfy_host.node_output("20", 1)
    assert erased is not base and erased.is_clone(base)  # shares the torch module ...
    assert base.patches == {}  # ... but the input MODEL carries no patch
    keys = [k for k in erased.patches if ".attn2." in k]
    assert len(keys) == len(erased.patches) == 7 * 4  # xattn: q, k, v, out of 7 blocks
    assert all(p[-1][1][0] == "diff" for p in erased.patches.values())
    assert _weights_hash(base) == before
    assert all(p.is_inference() for p in base.model.diffusion_model.parameters())  # originals back
    # The erasure carries the config the preset and the (shrunk) fast preset made.
    cfg = erasure.config
    assert cfg.concepts == ("a red bicycle",) and cfg.selection == "xattn" and cfg.steps == 2
    assert cfg.resolution == 8 and cfg.sampling_steps == 4
    assert len(erasure.loss_history) == 2 and len(erasure.deltas) == 28
    assert all(d.diff.dtype.is_floating_point and d.diff.dtype.itemsize == 4
               for d in erasure.deltas.values())
    [plot] = comfy_host.output_images(result, "30")
    assert plot.is_file()


def test_second_queue_does_not_retrain_and_a_changed_input_does(
        comfy_host, small_sd15_ckpt, tiny_training):
    prompt = nh.erase_prompt(small_sd15_ckpt, "UnlearnEraseConcept", concepts="a dog")
    first = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    assert "20" in first.executed_nodes()
    again = comfy_host.run(prompt).raise_for_status()
    assert again.executed_nodes() == [] and again.progress("20") == []
    for name, value in (("seed", 1), ("concepts", "a cat"), ("loss", "jensen_shannon")):
        changed = copy.deepcopy(prompt)
        changed["20"]["inputs"][name] = value
        run = comfy_host.run(changed).raise_for_status()
        assert "20" in run.executed_nodes(), name


def test_same_seed_same_erasure(comfy_host, small_sd15_ckpt):
    import torch

    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", sample_erased=False)
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    first = comfy_host.node_output("20", 1)
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    second = comfy_host.node_output("20", 1)
    assert first is not second
    for name, d in first.deltas.items():
        assert torch.equal(d.diff, second.deltas[name].diff), name


def test_cancel_stops_within_a_step_and_leaves_no_output(comfy_host, small_sd15_ckpt):
    base, before = _base_model(comfy_host, small_sd15_ckpt)
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", steps=6)
    prompt["21"] = {"class_type": "UnlearnSaveLoRA",
                    "inputs": {"erasure": ["20", 1], "filename_prefix": "cancelled",
                               "svd_rank": 0}}
    loras = comfy_host.model_dir("loras")
    files_before = set(loras.iterdir())
    result = comfy_host.run(prompt, interrupt_when=lambda v, total, node: node == "20" and v == 1)
    assert result.interrupted and not result.success
    assert result.progress("20") == [(1, 6)]  # stopped right after the step Cancel came in
    assert result.outputs_ui == {}
    assert set(loras.iterdir()) == files_before  # nothing saved
    with pytest.raises(KeyError):
        comfy_host.node_output("20", 0)
    assert base.patches == {} and _weights_hash(base) == before
    assert all(p.is_inference() for p in base.model.diffusion_model.parameters())
    # The next queue runs normally.
    comfy_host.run(prompt).raise_for_status()


def test_a_rank_too_large_fails_before_any_weight_is_copied(comfy_host, small_sd15_ckpt,
                                                            monkeypatch):
    """lora_rank above the smallest selected layer's limit: the error names the input and the
    fix, and comes before the weights are cloned for training."""
    host = nh.pack_module("nodes.host")
    cloned = []
    original = host._normal_weights
    monkeypatch.setattr(host, "_normal_weights", lambda m: cloned.append(m) or original(m))
    base, before = _base_model(comfy_host, small_sd15_ckpt)
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", parametrization="lora", lora_rank=1000)
    result = comfy_host.run(prompt)
    assert result.valid and not result.success
    err = result.error
    assert err["node_id"] == "20" and err["node_type"] == "UnlearnEraseConceptAdvanced"
    assert ch.node_error_message(err).startswith("lora_rank = 1000")
    assert "Fix: set lora_rank to 320 or less" in ch.node_error_message(err)
    assert err["exception_type"].endswith("ConfigError")
    assert cloned == []
    assert result.outputs_ui == {}
    assert base.patches == {} and _weights_hash(base) == before


def test_a_failure_during_training_leaves_the_input_alone(comfy_host, small_sd15_ckpt,
                                                          monkeypatch):
    """A run that dies in its second step (a simulated out-of-memory in the loss) after the
    weights were cloned: the error reaches the UI, nothing is output, the MODEL is as before."""
    trainer = nh.pack_module("unlearn_core.trainer")
    real_build_loss = trainer.build_loss
    calls = []

    def failing_build_loss(config, generator):
        loss = real_build_loss(config, generator)

        def fail_on_second_call(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("simulated: CUDA out of memory")
            return loss(*args, **kwargs)

        return fail_on_second_call

    monkeypatch.setattr(trainer, "build_loss", failing_build_loss)
    base, before = _base_model(comfy_host, small_sd15_ckpt)
    params = dict(base.model.diffusion_model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", steps=4)
    result = comfy_host.run(prompt)
    assert result.valid and not result.success
    assert result.error_message == "simulated: CUDA out of memory"
    assert result.progress("20") == [(1, 4)]
    assert result.outputs_ui == {}
    assert base.patches == {} and _weights_hash(base) == before
    after = dict(base.model.diffusion_model.named_parameters())
    assert all(after[n] is p for n, p in params.items())  # the very same tensors are back
    assert {n: p.requires_grad for n, p in after.items()} == flags


@pytest.mark.parametrize("node_type", ["UnlearnEraseConcept", "UnlearnEraseConceptUCE"])
def test_blank_concept_is_rejected_before_running(comfy_host, small_sd15_ckpt, node_type):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_type, node_classes=comfy_host.node_classes,
                             concepts="  \n \n")
    result = comfy_host.run(prompt)
    assert not result.valid and result.messages == []
    [error] = result.node_errors["20"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert "concepts is blank" in error["details"] and "type the concept" in error["details"]


def test_blank_concept_on_advanced_fails_before_loading(comfy_host, small_sd15_ckpt):
    import comfy.model_base
    import comfy.model_management

    comfy.model_management.unload_all_models()
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="", sample_erased=False)
    del prompt["3"], prompt["8"], prompt["9"]
    result = comfy_host.run(prompt, fresh_cache=True)
    assert result.valid and not result.success
    msg = result.error_message
    assert msg.startswith("concepts = ") and "Fix: type the concept to erase" in msg
    # No UNet was loaded. (ComfyUI 0.3.x's stock CLIP loads itself at construction when its
    # load device is the CPU -- comfy.sd.CLIP.__init__ calls load_models_gpu -- so the
    # checkpoint loader leaves the text encoder loaded there; that is the host, not our node.)
    unets = [m for m in comfy.model_management.current_loaded_models
             if isinstance(m.model.model, comfy.model_base.BaseModel)]
    assert unets == []


def test_steps_below_one_is_rejected_by_the_validator(comfy_host, small_sd15_ckpt):
    for node_type in ("UnlearnEraseConcept", "UnlearnEraseConceptAdvanced"):
        prompt = nh.erase_prompt(small_sd15_ckpt, node_type, node_classes=comfy_host.node_classes,
                                 concepts="a dog", steps=0)
        result = comfy_host.run(prompt)
        assert not result.valid
        [error] = result.node_errors["20"]["errors"]
        assert error["type"] == "value_smaller_than_min" and error["details"] == "steps"


def test_sdxl_model_is_refused_before_any_weight_is_touched(comfy_host, small_sd15_ckpt):
    import comfy.model_management

    comfy_host.node_classes["UnlearnTestTinySDXL"] = nh.TinySDXLLoader
    try:
        comfy.model_management.unload_all_models()
        for node_type in ("UnlearnEraseConcept", "UnlearnEraseConceptUCE",
                          "UnlearnEraseConceptAdvanced"):
            prompt = nh.erase_prompt(small_sd15_ckpt, node_type,
                                     node_classes=comfy_host.node_classes, concepts="a dog")
            prompt["50"] = {"class_type": "UnlearnTestTinySDXL", "inputs": {}}
            prompt["20"]["inputs"]["model"] = ["50", 0]
            result = comfy_host.run(prompt, fresh_cache=True)
            assert result.valid and not result.success, node_type
            err = result.error
            assert err["node_id"] == "20" and err["exception_type"].endswith("ModelError")
            msg = ch.node_error_message(err)
            assert msg.startswith("model: Unlearn erases from Stable Diffusion 1.x models only")
            assert "SDXL: 2048" in msg and "Fix: load an SD-1.x checkpoint" in msg
            sdxl = comfy_host.node_output("50", 0)
            assert sdxl.patches == {}
            assert not any(m.model is sdxl for m in comfy.model_management.current_loaded_models)
    finally:
        del comfy_host.node_classes["UnlearnTestTinySDXL"]


def test_other_nodes_on_the_same_checkpoint_keep_identical_images(
        comfy_host, small_sd15_ckpt, tiny_training):
    stock = ch.stock_txt2img_prompt(small_sd15_ckpt, seed=5, steps=2)
    first = comfy_host.run(stock, fresh_cache=True).raise_for_status()
    [image_before] = comfy_host.output_images(first, "9")
    pixels_before = _pixels(image_before)
    # Erase, and sample from the erased model, in a graph sharing loader "4".
    graph = copy.deepcopy(stock)
    graph["20"] = nh.erase_prompt(small_sd15_ckpt, "UnlearnEraseConcept",
                                  concepts="a photo of a cat")["20"]
    graph["33"] = {**graph["3"], "inputs": {**graph["3"]["inputs"], "model": ["20", 0]}}
    graph["38"] = {**graph["8"], "inputs": {**graph["8"]["inputs"], "samples": ["33", 0]}}
    graph["39"] = {**graph["9"], "inputs": {**graph["9"]["inputs"], "images": ["38", 0]}}
    erased = comfy_host.run(graph).raise_for_status()
    assert "4" not in erased.executed_nodes() and "20" in erased.executed_nodes()
    [image_erased] = comfy_host.output_images(erased, "39")
    assert _pixels(image_erased) != pixels_before  # the erasure changed the picture
    # The stock sampler again, fresh node ids, same loader object: the same picture.
    again = copy.deepcopy(stock)
    for old, new in (("3", "43"), ("8", "48"), ("9", "49")):
        again[new] = again.pop(old)
    again["48"]["inputs"]["samples"] = ["43", 0]
    again["49"]["inputs"]["images"] = ["48", 0]
    after = comfy_host.run(again).raise_for_status()
    assert "4" not in after.executed_nodes()
    [image_after] = comfy_host.output_images(after, "49")
    assert _pixels(image_after) == pixels_before


def test_apply_erasure_strength(comfy_host, small_sd15_ckpt):
    """strength 0 = base outputs exactly; 1 = the node's MODEL exactly; -1 = the weights moved
    the other way by exactly the delta."""
    import comfy.model_management
    import torch

    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", sample_erased=False)
    for nid, strength in (("60", 0.0), ("61", 1.0), ("62", -1.0)):
        prompt[nid] = {"class_type": "UnlearnApplyErasure",
                       "inputs": {"model": ["4", 0], "erasure": ["20", 1], "strength": strength}}
    prompt["70"] = {"class_type": "KSampler", "inputs": {
        **prompt["3"]["inputs"], "model": ["60", 0]}}  # keeps node 60 in the graph
    prompt["71"] = {"class_type": "KSampler", "inputs": {**prompt["3"]["inputs"], "model": ["61", 0]}}
    prompt["72"] = {"class_type": "KSampler", "inputs": {**prompt["3"]["inputs"], "model": ["62", 0]}}
    for k in ("70", "71", "72"):
        prompt[f"8{k[1]}"] = {"class_type": "VAEDecode", "inputs": {"samples": [k, 0],
                                                                   "vae": ["4", 2]}}
        prompt[f"9{k[1]}"] = {"class_type": "PreviewImage", "inputs": {"images": [f"8{k[1]}", 0]}}
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    base = comfy_host.node_output("4", 0)
    node_model = comfy_host.node_output("20", 0)
    erasure = comfy_host.node_output("20", 1)
    x, t, ctx = nh.probe_inputs()
    eps_base = nh.eps_of(base, x, t, ctx)
    assert torch.equal(nh.eps_of(comfy_host.node_output("60", 0), x, t, ctx), eps_base)
    eps_node = nh.eps_of(node_model, x, t, ctx)
    assert not torch.equal(eps_node, eps_base)
    assert torch.equal(nh.eps_of(comfy_host.node_output("61", 0), x, t, ctx), eps_node)
    minus = comfy_host.node_output("62", 0)
    comfy.model_management.unload_all_models()  # the module holds the base weights again
    base_sd = {k: v.clone() for k, v in base.model.diffusion_model.state_dict().items()}
    comfy.model_management.load_models_gpu([minus])
    moved = minus.model.diffusion_model.state_dict()
    host = nh.pack_module("nodes.host")
    to_native = {v: k for k, v in host.layer_names(base).items()}
    for canonical, delta in erasure.deltas.items():
        key = to_native[canonical] + ".weight"
        assert torch.equal(moved[key], base_sd[key] - delta.diff), key
    _weights_hash(base)  # unloads: the module holds the base weights again
    assert ch.hash_state_dict(base.model.diffusion_model.state_dict()) == ch.hash_state_dict(base_sd)


def test_uce_node_edits_keys_and_values_in_one_step(comfy_host, small_sd15_ckpt):
    base, before = _base_model(comfy_host, small_sd15_ckpt)
    prompt = nh.erase_prompt(small_sd15_ckpt, "UnlearnEraseConceptUCE",
                             node_classes=comfy_host.node_classes, concepts="Van Gogh",
                             uce_guide="art", retain_prompts="Claude Monet\nPablo Picasso")
    result = comfy_host.run(prompt).raise_for_status()
    assert result.progress("20") == [(1, 1)]
    erasure = comfy_host.node_output("20", 1)
    assert erasure.config.method == "uce" and erasure.loss_history == []
    assert erasure.config.retain_prompts == ("Claude Monet", "Pablo Picasso")
    assert len(erasure.deltas) == 14 and all(n.endswith(("to_k", "to_v")) for n in erasure.deltas)
    assert erasure.metadata["condition_number"] > 0
    assert base.patches == {} and _weights_hash(base) == before


def test_advanced_method_uce_equals_the_uce_node(comfy_host, small_sd15_ckpt):
    import torch

    common = dict(concepts="Van Gogh", uce_guide="art", retain_prompts="Claude Monet")
    comfy_host.run(nh.erase_prompt(small_sd15_ckpt, "UnlearnEraseConceptUCE",
                                   node_classes=comfy_host.node_classes, **common),
                   fresh_cache=True).raise_for_status()
    from_node = comfy_host.node_output("20", 1)
    comfy_host.run(nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                                   method="uce", **common)).raise_for_status()
    from_advanced = comfy_host.node_output("20", 1)
    assert set(from_node.deltas) == set(from_advanced.deltas)
    for name, d in from_node.deltas.items():
        assert torch.equal(d.diff, from_advanced.deltas[name].diff), name


def test_conditioning_inputs_give_the_same_erasure_as_text(comfy_host, small_sd15_ckpt):
    """The concept as CONDITIONING (from CLIP Text Encode) trains exactly what the text does."""
    import torch

    text = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                           concepts="a dog", sample_erased=False)
    comfy_host.run(text, fresh_cache=True).raise_for_status()
    from_text = comfy_host.node_output("20", 1)
    cond = copy.deepcopy(text)
    cond["40"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a dog", "clip": ["4", 1]}}
    cond["20"]["inputs"].update(concepts="", concept_conditioning=["40", 0])
    comfy_host.run(cond).raise_for_status()
    from_cond = comfy_host.node_output("20", 1)
    assert from_cond.config.concepts == ("<concept_conditioning 1>",)
    for name, d in from_text.deltas.items():
        assert torch.equal(d.diff, from_cond.deltas[name].diff), name
    # An anchor changes the target: a different erasure.
    anchored = copy.deepcopy(cond)
    anchored["41"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat",
                                                                 "clip": ["4", 1]}}
    anchored["20"]["inputs"]["anchor_conditioning"] = ["41", 0]
    comfy_host.run(anchored).raise_for_status()
    from_anchor = comfy_host.node_output("20", 1)
    assert any(not torch.equal(d.diff, from_anchor.deltas[n].diff)
               for n, d in from_cond.deltas.items())
    # Labels must match the entries in number.
    bad = copy.deepcopy(cond)
    bad["20"]["inputs"]["concepts"] = "a dog\na cat"
    result = comfy_host.run(bad)
    assert not result.success
    msg = result.error_message
    assert msg.startswith("concepts = ") and "2 lines for 1 concept_conditioning entries" in msg


def test_bf16_weights_train_with_float32_deltas(comfy_host, small_sd15_ckpt):
    """A bf16 UNet (as loaded on GPUs that prefer it) trains; deltas stay float32; the MODEL's
    weights are untouched. Called directly, under inference mode as the executor does."""
    import comfy.model_patcher
    import comfy.sd
    import folder_paths
    import torch

    path = folder_paths.get_full_path("checkpoints", small_sd15_ckpt)
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path)
        unet = model.model.diffusion_model
        unet.to(torch.bfloat16)
        unet.dtype = torch.bfloat16  # as ComfyUI builds a bf16 UNet (--bf16-unet)
        before = _weights_hash(model)
        node = comfy_host.node_classes["UnlearnEraseConceptAdvanced"]()
        values = nh.widget_defaults(comfy_host.node_classes, "UnlearnEraseConceptAdvanced")
        values.update(nh.TINY_TRAINING, steps=2, concepts="a dog")
        erased, erasure, _ = node.erase(model=model, clip=clip, **values)
    assert _weights_hash(model) == before
    assert all(p.dtype == torch.bfloat16 for p in model.model.diffusion_model.parameters())
    assert all(d.diff.dtype == torch.float32 and torch.isfinite(d.diff).all()
               for d in erasure.deltas.values())
    assert any(d.diff.abs().max() > 0 for d in erasure.deltas.values())
    assert len(erasure.loss_history) == 2
    del erased


def test_gradient_checkpointing_on_comfyuis_unet_gives_the_same_erasure(comfy_host,
                                                                        small_sd15_ckpt):
    """ComfyUI's own blocks (BasicTransformerBlock, ResBlock) are checkpointed, give the same
    erasure, and get their forward methods back."""
    import comfy.sd
    import folder_paths
    import torch

    ckpt = nh.pack_module("unlearn_core.checkpointing")
    path = folder_paths.get_full_path("checkpoints", small_sd15_ckpt)
    with torch.inference_mode():
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path)
    unet = model.model.diffusion_model
    kinds = {type(b).__name__ for b in ckpt.checkpoint_blocks(unet)}
    assert kinds == {"BasicTransformerBlock", "ResBlock"}
    node = comfy_host.node_classes["UnlearnEraseConceptAdvanced"]()
    values = nh.widget_defaults(comfy_host.node_classes, "UnlearnEraseConceptAdvanced")
    values.update(nh.TINY_TRAINING, steps=2, concepts="a dog")
    results = []
    for flag in (False, True):
        with torch.inference_mode():
            _, erasure, _ = node.erase(model=model, clip=clip,
                                       **(values | {"gradient_checkpointing": flag}))
        results.append(erasure)
    assert not any("forward" in m.__dict__ for m in unet.modules())
    plain, checkpointed = results
    assert any(d.diff.abs().max() > 0 for d in plain.deltas.values())
    for name, d in plain.deltas.items():
        assert torch.allclose(d.diff, checkpointed.deltas[name].diff, atol=1e-6), name


def test_erasure_result_is_the_cores_type(comfy_host, small_sd15_ckpt):
    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a dog", sample_erased=False)
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    erasure = comfy_host.node_output("20", 1)
    assert type(erasure).__name__ == "EraseResult"
    assert dataclasses.is_dataclass(erasure)
    assert erasure.metadata["config"]["concepts"] == ["a dog"]
    assert len(erasure.metadata["base_weights_sha256"]) == 64


def test_saved_activation_copies_only_where_the_hosts_sd1_path_adds_in_place(comfy_host,
                                                                           small_sd15_ckpt):
    """The clone hook (a copy of every tensor autograd saves) is on exactly where it is needed.

    Needed means: without it, backward through this host's SD-1 UNet fails with autograd's
    in-place error (the 2024 host's ``x += n`` in BasicTransformerBlock). Where it is not needed
    (0.3.x: its one ``x += x_skip`` sits on a path SD-1 never runs), the decision leaves it off,
    and the gradients are bit-identical to those with the hook while fewer bytes are kept.
    """
    import comfy.sd
    import folder_paths
    import torch

    host = nh.pack_module("nodes.host")
    path = folder_paths.get_full_path("checkpoints", small_sd15_ckpt)
    with torch.inference_mode():
        model, _, _, _ = comfy.sd.load_checkpoint_guess_config(path)
    d = host.ComfyDenoiser(model)
    decided = d.clone_saved
    d.clone_saved = False  # the hooks below are ours

    def backward(clone: bool | None):
        """Input gradient, and bytes of the distinct activation storages autograd kept.
        ``clone=None``: no hook at all -- the only way autograd still checks saved tensors for
        in-place writes."""
        storages: dict[int, int] = {}

        def pack(t):
            activation = t.requires_grad  # the frozen weights are kept either way
            t = host._pack_clone(t) if clone else t
            if activation:
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes()
            return t

        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
        c = torch.randn(1, 77, 768, generator=g)
        hooks = (contextlib.nullcontext() if clone is None
                 else torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
        with torch.inference_mode(False), torch.enable_grad(), host._normal_weights(d.module):
            with hooks:
                out = d(x, torch.tensor([500]), c)
            out.float().square().mean().backward()
        return x.grad, sum(storages.values())

    grad_with, bytes_with = backward(clone=True)
    try:
        grad_without, _ = backward(clone=None)
    except RuntimeError as e:
        assert "inplace" in str(e), e
        assert decided, "backward fails without the clone hook, yet the host decided to skip it"
        return
    assert not decided, "backward works without the clone hook, yet the host pays for it"
    # The same gradients up to float32 rounding: a cloned saved tensor is contiguous where the
    # original may not be, so a kernel may sum in another order (a few ulp of the largest value).
    scale = grad_with.abs().max()
    assert torch.allclose(grad_with, grad_without, rtol=0, atol=float(scale) * 1e-5)
    _, bytes_without = backward(clone=False)
    # Most saved tensors are intermediates that only autograd holds, so a copy replaces them
    # rather than adding to them; the copies of tensors that stay alive anyway (block inputs,
    # tensors saved twice) are the waste -- about 7% of the activation bytes on the small UNet.
    assert bytes_without < bytes_with, (bytes_without, bytes_with)


def test_nodes_build_the_cores_conditioning(comfy_host, small_sd15_ckpt):
    """One conditioning builder for every front end: the node's equals the core's
    ``encode_conditioning`` fed ComfyUI's CLIP -- contexts (the concept inside captions) included
    -- and CONDITIONING inputs stand in for the texts they replace."""
    import comfy.sd
    import folder_paths
    import torch

    erase = nh.pack_module("nodes.erase")
    host = nh.pack_module("nodes.host")
    core = nh.pack_module("unlearn_core.conditioning")
    config_mod = nh.pack_module("unlearn_core.config")
    path = folder_paths.get_full_path("checkpoints", small_sd15_ckpt)
    with torch.inference_mode():
        _, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path)
        config = config_mod.EraseConfig(concepts=("a dog", "a cat"), retain_prompts=("a fox",))
        cond = erase.make_conditioning(clip, config)
        want = core.encode_conditioning(host.text_encoder(clip), config)
        assert [len(p) for p in cond.contexts] == [len(core.DEFAULT_CONTEXTS)] * 2
        for got_pairs, want_pairs in zip(cond.contexts, want.contexts):
            for (gp, ga), (wp, wa) in zip(got_pairs, want_pairs):
                assert torch.equal(gp, wp) and torch.equal(ga, wa)
        assert all(torch.equal(a, b) for a, b in zip(cond.concepts, want.concepts))
        # A retain CONDITIONING replaces the retain text; the rest is encoded as before.
        row = host.text_encoder(clip)(["a wolf"])
        given = erase.make_conditioning(clip, config, core.EncodedRows(retain=[row]))
        assert torch.equal(given.retain[0], row) and torch.equal(given.empty, cond.empty)
