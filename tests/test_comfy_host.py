"""The test host itself: a real ComfyUI boots headless, loads our pack with its own custom-node
loader, reads the SD-1.x test checkpoint with its stock loaders and runs stock graphs.

Everything the node-pack tests rely on is proved here first, with stock nodes only.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
from unlearn_testkit import comfy_host as ch

pytestmark = pytest.mark.comfy


# ---- the host --------------------------------------------------------------------------------

def test_host_is_the_real_comfyui(comfy_host):
    import execution
    import folder_paths

    import nodes

    root = comfy_host.comfy_dir.resolve()
    for module in (nodes, execution, folder_paths):
        assert Path(module.__file__).resolve().parent == root, module.__file__
    for name in ("CheckpointLoaderSimple", "KSampler", "LoraLoaderModelOnly", "UNETLoader",
                 "CLIPLoader", "VAEDecode", "SaveImage"):
        assert name in comfy_host.node_classes
    # Models and outputs go to the session folder, never into the host's own folders.
    assert Path(folder_paths.get_output_directory()).is_relative_to(comfy_host.work_dir)
    assert comfy_host.model_dir("loras").is_relative_to(comfy_host.work_dir)
    assert comfy_host.model_dir("checkpoints").is_relative_to(comfy_host.work_dir)


def test_pack_loaded_by_comfyuis_own_loader(comfy_host):
    """custom_nodes/unlearn -> our repo, imported by ComfyUI's own loader under the module name
    that host gives a pack: 'unlearn' (2024) or the folder's full path (0.3.x)."""
    link = comfy_host.work_dir / "custom_nodes" / ch.PACK_DIR_NAME
    assert link.resolve() == ch.REPO_ROOT
    module = comfy_host.pack_module
    assert module is not None, "ComfyUI did not import the pack (see the log for the traceback)"
    assert module.__name__ in (ch.PACK_DIR_NAME, str(link))
    assert Path(module.__file__).parent == link
    assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
    # Whatever the pack registers is in ComfyUI's table, and nothing stock was replaced.
    for name, cls in module.NODE_CLASS_MAPPINGS.items():
        assert comfy_host.node_classes[name] is cls
    assert comfy_host.pack_node_names == set(module.NODE_CLASS_MAPPINGS)


def test_installer_is_idempotent_and_fast(comfy_host):
    if os.environ.get("COMFYUI_PATH"):
        pytest.skip("COMFYUI_PATH set: the bundled host is not used")
    t0 = time.perf_counter()
    path = ch.ensure_host_installed()
    assert time.perf_counter() - t0 < 2.0
    assert path == comfy_host.comfy_dir
    assert not (path / "extra_model_paths.yaml").exists()
    assert (path / ".unlearn-host.json").exists()


def test_installer_honours_comfyui_path(monkeypatch, tmp_path, comfy_host):
    installer = ch._installer()
    monkeypatch.setenv("COMFYUI_PATH", str(comfy_host.comfy_dir))
    assert installer.install() == comfy_host.comfy_dir.resolve()
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="not a ComfyUI folder"):
        installer.install()


# ---- the test checkpoint ----------------------------------------------------------------------

def test_small_checkpoint_is_sd15_with_real_key_names(comfy_host, small_sd15_ckpt):
    import comfy.sd
    import comfy.supported_models
    import folder_paths
    import torch

    path = folder_paths.get_full_path("checkpoints", small_sd15_ckpt)
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path)
        assert isinstance(model.model.model_config, comfy.supported_models.SD15)
        keys = set(model.model.state_dict())
        for k in ("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                  "diffusion_model.input_blocks.2.0.op.weight",  # downsampler
                  "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_out.0.weight",
                  "diffusion_model.output_blocks.1.2.conv.weight",  # upsampler
                  "diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_v.weight"):
            assert k in keys, k
        n_attn2 = sum(1 for k in keys if k.endswith("attn2.to_k.weight"))
        assert n_attn2 == 7  # 2 down + 1 mid + 4 up cross-attention blocks
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a cat"), return_pooled=True)
        cond_dog = clip.encode_from_tokens(clip.tokenize("a photo of a dog"))
        assert cond.shape == (1, 77, 768) and torch.isfinite(cond).all()
        assert not torch.equal(cond, cond_dog)
        # eps-prediction through the UNet as the core will call it: finite, prompt-dependent.
        unet = model.model.diffusion_model
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500.0])
        eps_cat = unet(x, t, context=cond.float())
        eps_dog = unet(x, t, context=cond_dog.float())
        assert eps_cat.shape == x.shape and torch.isfinite(eps_cat).all()
        assert 0.1 < eps_cat.std().item() < 10
        assert (eps_cat - eps_dog).abs().mean() > 1e-3
        image = vae.decode(torch.zeros(1, 4, 8, 8))
        assert image.shape == (1, 64, 64, 3)


def test_full_sd15_config_matches_the_real_unet_shape():
    """The full-size builder's config is SD-1.5's (checked without building 860M params)."""
    cfg = ch.FULL_SD15_UNET_CONFIG
    assert cfg["model_channels"] == 320 and cfg["channel_mult"] == [1, 2, 4, 4]
    assert sum(cfg["transformer_depth"]) + sum(cfg["transformer_depth_output"]) + 1 == 16


# ---- running prompts -------------------------------------------------------------------------

def test_stock_txt2img_prompt_runs(comfy_host, small_sd15_ckpt):
    from PIL import Image

    prompt = ch.stock_txt2img_prompt(small_sd15_ckpt, seed=1)
    t0 = time.perf_counter()
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    wall = time.perf_counter() - t0
    print(f"\nstock txt2img (load + encode x2 + 1 KSampler step + decode + save): {wall:.2f} s")
    [image_path] = comfy_host.output_images(result, "9")
    assert image_path.is_file() and image_path.is_relative_to(comfy_host.work_dir)
    with Image.open(image_path) as im:
        assert im.size == (64, 64)
    assert result.progress("3") == [(1, 1)]  # KSampler's ProgressBar reached the stub
    assert result.events("executed")[-1]["node"] == "9"
    assert set(result.executed_nodes()) == {"3", "4", "5", "6", "7", "8", "9"}

    # Queue the same prompt again: ComfyUI's cache answers, nothing re-executes.
    again = comfy_host.run(prompt).raise_for_status()
    assert again.executed_nodes() == []
    # Change the seed: only the sampler and what follows it run.
    changed = copy.deepcopy(prompt)
    changed["3"]["inputs"]["seed"] = 2
    third = comfy_host.run(changed).raise_for_status()
    assert set(third.executed_nodes()) == {"3", "8", "9"}


def test_preview_image_goes_to_temp(comfy_host, small_sd15_ckpt):
    import folder_paths

    result = comfy_host.run(ch.stock_txt2img_prompt(small_sd15_ckpt, save=False)).raise_for_status()
    [path] = comfy_host.output_images(result)
    assert path.parent == Path(folder_paths.get_temp_directory()) and path.is_file()


def test_invalid_prompt_is_rejected_before_execution(comfy_host, small_sd15_ckpt):
    prompt = ch.stock_txt2img_prompt("no_such_model.safetensors")
    result = comfy_host.run(prompt)
    assert not result.valid and not result.success
    assert "4" in result.node_errors
    assert result.node_errors["4"]["errors"][0]["type"] == "value_not_in_list"


def test_node_error_is_reported_like_the_ui_gets_it(comfy_host, small_sd15_ckpt):
    broken = comfy_host.model_dir("loras") / "broken_for_test.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    comfy_host.refresh_file_lists()
    try:
        prompt = ch.stock_txt2img_prompt(small_sd15_ckpt)
        prompt["10"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["4", 0], "lora_name": broken.name, "strength_model": 1.0}}
        prompt["3"]["inputs"]["model"] = ["10", 0]
        result = comfy_host.run(prompt, fresh_cache=True)
    finally:
        broken.unlink()
        comfy_host.refresh_file_lists()
    assert result.valid and not result.success
    err = result.error
    assert err["node_id"] == "10" and err["node_type"] == "LoraLoaderModelOnly"
    assert err["exception_message"] and err["traceback"]
    assert result.outputs_ui == {}
    with pytest.raises(AssertionError, match="LoraLoaderModelOnly"):
        result.raise_for_status()


def test_cancel_between_nodes(comfy_host, small_sd15_ckpt):
    """Cancel during KSampler: stock nodes do not check for it, the executor does before the next
    node, so the run stops before VAEDecode and nothing is saved. (Our nodes check every step.)"""
    prompt = ch.stock_txt2img_prompt(small_sd15_ckpt, seed=3, steps=2)
    result = comfy_host.run(prompt, fresh_cache=True,
                            interrupt_when=lambda value, total, node: node == "3" and value == 1)
    assert result.interrupted and not result.success
    assert result.outputs_ui == {}
    [stop] = result.events("execution_interrupted")
    assert stop["node_id"] == "8" and "8" not in stop["executed"] and "3" in stop["executed"]
    # The flag is cleared: the next run works.
    comfy_host.run(prompt, fresh_cache=True).raise_for_status()


# ---- UI-format workflows ---------------------------------------------------------------------

def _ui_workflow(ckpt_name: str) -> dict:
    """A workflow as the 2024 web UI saves it: the default graph plus a Note, a Reroute on the
    VAE, a PrimitiveNode driving the seed, and a bypassed LoRA loader on the MODEL line."""
    def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, title=None):
        n = {"id": id_, "type": type_, "pos": [0, 0], "size": [300, 100], "flags": {},
             "order": id_, "mode": mode, "properties": {},
             "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs]}
        if widgets is not None:
            n["widgets_values"] = widgets
        if title:
            n["title"] = title
        return n

    nodes = [
        node(4, "CheckpointLoaderSimple", outputs=[
            {"name": "MODEL", "type": "MODEL", "links": [10], "slot_index": 0},
            {"name": "CLIP", "type": "CLIP", "links": [3, 5], "slot_index": 1},
            {"name": "VAE", "type": "VAE", "links": [11], "slot_index": 2}],
            widgets=[ckpt_name]),
        node(12, "LoraLoaderModelOnly", mode=4,
             inputs=[{"name": "model", "type": "MODEL", "link": 10}],
             outputs=[{"name": "MODEL", "type": "MODEL", "links": [1], "slot_index": 0}],
             widgets=["missing_lora.safetensors", 1.0]),
        node(6, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 3}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
             widgets=["a red bicycle"], title="Positive"),
        node(7, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 5}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}],
             widgets=["text, watermark"]),
        node(5, "EmptyLatentImage",
             outputs=[{"name": "LATENT", "type": "LATENT", "links": [2]}], widgets=[64, 64, 1]),
        node(3, "KSampler", inputs=[
            {"name": "model", "type": "MODEL", "link": 1},
            {"name": "positive", "type": "CONDITIONING", "link": 4},
            {"name": "negative", "type": "CONDITIONING", "link": 6},
            {"name": "latent_image", "type": "LATENT", "link": 2},
            {"name": "seed", "type": "INT", "link": 14, "widget": {"name": "seed"}}],
            outputs=[{"name": "LATENT", "type": "LATENT", "links": [7]}],
            widgets=[99, "fixed", 1, 7.5, "euler", "normal", 1.0]),
        node(13, "PrimitiveNode",
             outputs=[{"name": "INT", "type": "INT", "links": [14],
                       "widget": {"name": "seed"}}],
             widgets=[1234, "fixed"], title="seed"),
        node(15, "Reroute", inputs=[{"name": "", "type": "*", "link": 11}],
             outputs=[{"name": "", "type": "VAE", "links": [12]}]),
        node(8, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 7},
                                     {"name": "vae", "type": "VAE", "link": 12}],
             outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [9]}]),
        node(9, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 9}],
             widgets=["unlearn_ui"]),
        node(20, "Note", widgets=["This graph is a test fixture."]),
    ]
    links = [
        [10, 4, 0, 12, 0, "MODEL"], [1, 12, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"],
        [3, 4, 1, 6, 0, "CLIP"], [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"],
        [6, 7, 0, 3, 2, "CONDITIONING"], [7, 3, 0, 8, 0, "LATENT"], [11, 4, 2, 15, 0, "VAE"],
        [12, 15, 0, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"], [14, 13, 0, 3, 4, "INT"],
    ]
    return {"last_node_id": 20, "last_link_id": 14, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def test_workflow_to_prompt_follows_graph_to_prompt(comfy_host, small_sd15_ckpt):
    prompt = ch.workflow_to_prompt(_ui_workflow(small_sd15_ckpt), comfy_host.node_classes)
    assert set(prompt) == {"3", "4", "5", "6", "7", "8", "9"}  # no Note/Reroute/Primitive/bypassed
    assert prompt["3"]["inputs"] == {
        "seed": 1234, "steps": 1, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": ["5", 0]}
    assert prompt["8"]["inputs"] == {"samples": ["3", 0], "vae": ["4", 2]}
    assert prompt["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    assert prompt["6"]["_meta"]["title"] == "Positive"
    assert prompt["9"]["inputs"]["filename_prefix"] == "unlearn_ui"
    comfy_host.run(prompt).raise_for_status()


def test_workflow_to_prompt_names_missing_node_types(comfy_host, small_sd15_ckpt):
    wf = _ui_workflow(small_sd15_ckpt)
    wf["nodes"][2]["type"] = "NoSuchNode"
    with pytest.raises(KeyError, match="NoSuchNode"):
        ch.workflow_to_prompt(wf, comfy_host.node_classes)


def test_widget_names_add_control_after_seed(comfy_host):
    names = ch.widget_names(comfy_host.node_classes["KSampler"])
    assert names[0] == ("seed", True)
    assert [n for n, _ in names] == ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"]


# ---- helpers for the node tests --------------------------------------------------------------

def test_weight_hash_sees_one_changed_value(comfy_host, small_sd15_ckpt):
    import torch

    sd = {"a": torch.zeros(3), "b": torch.ones(2, 2)}
    before = ch.hash_state_dict(sd)
    assert ch.hash_state_dict(dict(reversed(sd.items()))) == before
    sd["b"][1, 1] = 1.0000001
    assert ch.hash_state_dict(sd) != before


@pytest.mark.slow
def test_full_size_sd15_unet_is_detected_and_samples(comfy_host, small_sd15_ckpt, full_sd15_unet):
    """The 860M-parameter SD-1.5-shaped UNet loads through the stock UNETLoader and runs a step."""
    import comfy.model_management
    import comfy.supported_models

    prompt = ch.stock_txt2img_prompt(small_sd15_ckpt, seed=0)
    prompt["10"] = comfy_host.stock_node("UNETLoader", unet_name=full_sd15_unet)
    prompt["3"]["inputs"]["model"] = ["10", 0]
    t0 = time.perf_counter()
    result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
    print(f"\nfull-size UNet: load + 1 step at 8x8 + decode: {time.perf_counter() - t0:.1f} s")
    assert result.progress("3") == [(1, 1)]
    model = comfy_host.node_output("10", 0)
    assert isinstance(model.model.model_config, comfy.supported_models.SD15)
    n_params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    assert 859e6 < n_params < 860e6
    del model
    comfy_host.new_executor()  # drop the cached 3.4 GB model
    comfy.model_management.unload_all_models()
