"""Save Erasure as LoRA: the file, and that it loads where users load LoRAs.

- ComfyUI's stock LoraLoaderModelOnly gives the same denoiser as the erase node's MODEL output:
  ``.diff`` files exactly (torch.equal); LoRA files within 1e-6 absolute (the node's MODEL goes
  through the same loader code with the same float32 tensors, and on CPU the match was exact).
- diffusers' ``load_lora_weights`` on a diffusers UNet gives the same outputs as ComfyUI with the
  same file, within 2e-4 absolute (two attention implementations; the erasure itself moves the
  outputs by far more, checked). The diffusers UNet is built with the small fixture's config
  (320 channels, 2 levels, one res block and one transformer per level) and ComfyUI's weights
  converted into it with ComfyUI's own LDM->diffusers map; the full SD-1.5 shape is not run
  through diffusers here (same key scheme, 20x the time).
"""

from __future__ import annotations

import pytest
from unlearn_testkit import comfy_host as ch
from unlearn_testkit import node_helpers as nh
from unlearn_testkit.tolerance import fp32_atol, longest_reduction

pytestmark = pytest.mark.comfy


def _save_prompt(ckpt, comfy_host, prefix, svd_rank=0, **inputs):
    prompt = nh.erase_prompt(ckpt, node_classes=comfy_host.node_classes, concepts="a dog",
                             sample_erased=False, **inputs)
    prompt["21"] = {"class_type": "UnlearnSaveLoRA", "inputs": {
        "erasure": ["20", 1], "filename_prefix": prefix, "svd_rank": svd_rank}}
    return prompt


def _run_and_save(comfy_host, ckpt, prefix, svd_rank=0, **inputs):
    result = comfy_host.run(_save_prompt(ckpt, comfy_host, prefix, svd_rank, **inputs),
                            fresh_cache=True).raise_for_status()
    [name] = result.outputs_ui["21"]["text"]
    return name, comfy_host.node_output("20", 0), comfy_host.node_output("20", 1)


def _strong(parametrization: str) -> dict:
    """Two steps that move the outputs visibly: the student's weights, a large learning rate
    (the EMA teacher moves only 0.2% of the way in two steps)."""
    return dict(parametrization=parametrization, result="student",
                lr=1e-2 if parametrization == "lora" else 1e-3)


def _stock_lora_model(comfy_host, ckpt, lora_name, strength=1.0):
    """The base MODEL through the stock LoraLoaderModelOnly (same loader node "4")."""
    prompt = ch.stock_txt2img_prompt(ckpt, seed=1, save=False)
    prompt["10"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
        "model": ["4", 0], "lora_name": lora_name, "strength_model": strength}}
    prompt["3"]["inputs"]["model"] = ["10", 0]
    comfy_host.refresh_file_lists()
    comfy_host.run(prompt).raise_for_status()
    return comfy_host.node_output("10", 0)


def test_save_writes_a_kohya_file_into_loras_and_never_overwrites(comfy_host, small_sd15_ckpt):
    from safetensors import safe_open

    loras = comfy_host.model_dir("loras")
    prefix = "../sub/My Erasure"
    first, _, erasure = _run_and_save(comfy_host, small_sd15_ckpt, prefix)
    assert first == "sub_My Erasure_00001.safetensors"
    # The same graph again from scratch: a new file, the first one untouched.
    before = (loras / first).read_bytes()
    second, _, _ = _run_and_save(comfy_host, small_sd15_ckpt, prefix)
    assert second == "sub_My Erasure_00002.safetensors"
    assert (loras / first).read_bytes() == before
    # Queued again without changes: cached, nothing written.
    again = comfy_host.run(_save_prompt(small_sd15_ckpt, comfy_host, prefix)).raise_for_status()
    assert again.executed_nodes() == []
    assert sorted(p.name for p in loras.glob("sub_My Erasure_*")) == [first, second]
    assert not any(p.name.startswith(".tmp") for p in loras.iterdir())

    with safe_open(str(loras / first), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.diff" in keys
    assert "lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_attn2_to_out_0.diff" in keys
    assert len(keys) == 28 and all(k.startswith("lora_unet_") for k in keys)
    import json

    config = json.loads(meta["config"])
    assert config["concepts"] == ["a dog"] and config["steps"] == 2
    assert meta["base_weights_sha256"] == erasure.metadata["base_weights_sha256"]
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["unlearn_saved_by"] == "ComfyUI UnlearnSaveLoRA"
    for name in (first, second):
        (loras / name).unlink()


@pytest.mark.parametrize("parametrization", ["full", "lora"])
def test_stock_loader_gives_the_nodes_model(comfy_host, small_sd15_ckpt, parametrization):
    import torch

    name, node_model, erasure = _run_and_save(comfy_host, small_sd15_ckpt,
                                              f"stock_{parametrization}", **_strong(parametrization))
    assert all(d.is_lora == (parametrization == "lora") for d in erasure.deltas.values())
    base = comfy_host.node_output("4", 0)
    stock = _stock_lora_model(comfy_host, small_sd15_ckpt, name)
    assert len(stock.patches) == len(erasure.deltas) == 28
    x, t, ctx = nh.probe_inputs()
    eps_base = nh.eps_of(base, x, t, ctx)
    eps_node = nh.eps_of(node_model, x, t, ctx)
    eps_stock = nh.eps_of(stock, x, t, ctx)
    effect = (eps_node - eps_base).abs().max().item()
    assert effect > 1e-4, effect  # the erasure does something
    if parametrization == "full":
        assert torch.equal(eps_stock, eps_node)
    else:
        # The stock loader forms W + scale * up @ down its own way: the weights differ by float32
        # rounding of a rank-r product, carried through one forward pass of the UNet.
        atol = fp32_atol(longest_reduction(base.model.diffusion_model),
                         magnitude=eps_node.abs().max().item())
        torch.testing.assert_close(eps_stock, eps_node, atol=atol, rtol=0)
        assert atol < effect / 10
    (comfy_host.model_dir("loras") / name).unlink()


def test_svd_rank_compresses_into_a_lora_the_stock_loader_reads(comfy_host, small_sd15_ckpt):
    from safetensors import safe_open

    name, node_model, _ = _run_and_save(comfy_host, small_sd15_ckpt, "svd", svd_rank=4,
                                        **_strong("full"))
    path = comfy_host.model_dir("loras") / name
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        down = f.get_tensor(
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight")
    assert not any(k.endswith(".diff") for k in keys) and len(keys) == 28 * 3
    assert down.shape == (4, 768)
    assert meta["svd_rank"] == "4" and 0 <= float(meta["svd_max_relative_error"]) < 1
    stock = _stock_lora_model(comfy_host, small_sd15_ckpt, name)
    assert len(stock.patches) == 28
    path.unlink()


# ---- diffusers -------------------------------------------------------------------------------

def _diffusers_unet(base_model):
    """A diffusers UNet2DConditionModel with the small fixture's shape and ComfyUI's weights."""
    import comfy.utils
    import torch
    from diffusers import UNet2DConditionModel

    cfg = base_model.model.model_config.unet_config
    assert cfg["channel_mult"] == [1, 1] and cfg["num_res_blocks"] == [1, 1]
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(320, 320), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    ldm = base_model.model.diffusion_model.state_dict()
    mapping = comfy.utils.unet_to_diffusers(cfg)
    target = unet.state_dict()
    converted = {k: ldm[mapping[k]].detach().float().clone() for k in target}
    assert all(converted[k].shape == target[k].shape for k in target)
    unet.load_state_dict(converted)
    return unet.eval().to(torch.float32)


def _weight_layers(unet) -> int:
    """The UNet's convolutions and linear layers: at least as many as lie on any one path from
    input to output."""
    import torch

    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in unet.modules())


def _pipeline(unet):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet,
                                   scheduler=None, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


@pytest.mark.parametrize("case", ["lora", "full+svd"])
def test_diffusers_load_lora_weights_gives_the_same_outputs(comfy_host, small_sd15_ckpt, case):
    pytest.importorskip("peft", reason="diffusers needs peft to load LoRA weights")
    import comfy.model_management
    import torch

    name, _, _ = _run_and_save(comfy_host, small_sd15_ckpt, f"diffusers_{case}",
                               svd_rank=0 if case == "lora" else 1280,
                               **_strong("lora" if case == "lora" else "full"))
    path = comfy_host.model_dir("loras") / name
    base = comfy_host.node_output("4", 0)
    comfy.model_management.unload_all_models()  # the module holds the base weights
    unet = _diffusers_unet(base)
    x, t, ctx = nh.probe_inputs()
    with torch.no_grad():
        d_base = unet(x, t, encoder_hidden_states=ctx).sample
    c_base = nh.eps_of(base, x, t, ctx)
    # Two implementations of the same UNet (other attention and convolution kernels): float32
    # rounding over the longest reduction in each layer, the layers' independent errors adding
    # like a random walk (sqrt of the number of layers).
    atol = fp32_atol(longest_reduction(unet), magnitude=c_base.abs().max().item(),
                     chain=_weight_layers(unet) ** 0.5)
    torch.testing.assert_close(d_base, c_base, atol=atol, rtol=0)  # the conversion is right

    c_erased = nh.eps_of(_stock_lora_model(comfy_host, small_sd15_ckpt, name), x, t, ctx)
    pipe = _pipeline(unet)
    pipe.load_lora_weights(str(path))
    with torch.no_grad():
        d_erased = pipe.unet(x, t, encoder_hidden_states=ctx).sample
    effect = (c_erased - c_base).abs().max().item()
    assert effect > 1e-3, effect
    torch.testing.assert_close(d_erased, c_erased, atol=atol, rtol=0)
    assert (d_erased - c_erased).abs().max().item() < effect / 10
    path.unlink()
