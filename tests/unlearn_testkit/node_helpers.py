"""Helpers for the node-pack tests: prompts with our nodes, the pack's own modules (as ComfyUI
imported them), denoiser outputs of a ComfyUI MODEL, a tiny SDXL-shaped MODEL.

ComfyUI imports the pack under a module name of its own (the folder name ``unlearn`` on the 2024
host, a name made from the folder's full path on 0.3.x): ``<pack>.nodes.*``,
``<pack>.unlearn_core.*`` are different module objects from the tests' own ``unlearn_core``, so
compare exceptions and types by name across that boundary, never with isinstance.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from unlearn_testkit import comfy_host as ch

# Training settings small enough for CPU tests: 8x8 latents, 4-step trajectories.
TINY_TRAINING = {"resolution": 8, "sampling_steps": 4, "batch_size": 2, "trajectory_reuse": 4}


def pack_module(name: str):
    """A module of the pack as ComfyUI loaded it, e.g. ``pack_module("nodes.widgets")``."""
    host = ch.ComfyHost._instance
    if host is None:
        raise RuntimeError("pack_module needs the booted host (the comfy_host fixture)")
    return importlib.import_module(f"{host.pack_module_name}.{name}")


def widget_defaults(node_classes: dict, node_type: str) -> dict[str, Any]:
    """Every widget input of ``node_type`` at its default value."""
    out = {}
    types = node_classes[node_type].INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            if isinstance(spec[0], (list, tuple)):
                opts = spec[1] if len(spec) > 1 else {}
                out[name] = opts.get("default", spec[0][0])
            elif spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                out[name] = spec[1]["default"]
    return out


def erase_prompt(ckpt_name: str, node_type: str = "UnlearnEraseConceptAdvanced",
                 node_classes: dict | None = None, sample_erased: bool = True,
                 **inputs: Any) -> dict:
    """Stock txt2img graph with an erase node (id "20") between the loader and the sampler.

    Advanced/UCE nodes get every widget at its default, then ``inputs``; training defaults are
    cut to CPU size (8x8 latents, 2 steps) unless ``inputs`` say otherwise. With
    ``sample_erased=False`` the sampler uses the base model and a Preview of the loss plot keeps
    node 20 in the graph.
    """
    prompt = ch.stock_txt2img_prompt(ckpt_name, seed=1)
    values: dict[str, Any] = {}
    if node_classes is not None:
        values.update(widget_defaults(node_classes, node_type))
    if node_type == "UnlearnEraseConceptAdvanced":
        values.update(TINY_TRAINING, steps=2)
    elif node_type == "UnlearnEraseConcept":
        values.update(preset="identity", loss="l2", steps=2, seed=0)
    values.update(inputs)
    prompt["20"] = {"class_type": node_type,
                    "inputs": {"model": ["4", 0], "clip": ["4", 1], **values}}
    if sample_erased:
        prompt["3"]["inputs"]["model"] = ["20", 0]
    elif node_type != "UnlearnEraseConceptUCE":  # an output that needs node 20: its loss plot
        prompt["30"] = {"class_type": "PreviewImage", "inputs": {"images": ["20", 2]}}
    return prompt


def outputs_of(comfy_host, node_id: str) -> list:
    """Every output of a node of the last run: one list per slot (list outputs keep all items)."""
    ex = comfy_host.executor
    if hasattr(ex, "caches"):  # new execution API
        entry = ex.caches.outputs.get(str(node_id))
        return list(getattr(entry, "outputs", entry))
    return list(ex.outputs[str(node_id)])


def eps_of(model_patcher, x, t, context):
    """The UNet's eps prediction for a ComfyUI MODEL with its patches applied (float32 CPU)."""
    import comfy.model_management
    import torch

    comfy.model_management.load_models_gpu([model_patcher])
    with torch.inference_mode():
        unet = model_patcher.model.diffusion_model
        dtype = model_patcher.model.get_dtype()
        return unet(x.to(dtype), t.float(), context=context.to(dtype)).float().cpu()


def probe_inputs(seed: int = 0, size: int = 8, batch: int = 2):
    """A fixed (x_t, t, context) to compare denoisers on."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=gen)
    t = torch.tensor([900.0, 250.0][:batch])
    context = torch.randn(batch, 77, 768, generator=gen)
    return x, t, context


TINY_SDXL_CONFIG = {
    "model_channels": 64, "use_linear_in_transformer": True, "transformer_depth": [0, 1],
    "transformer_depth_output": [0, 0, 1, 1], "transformer_depth_middle": 1,
    "channel_mult": [1, 2], "num_res_blocks": [1, 1], "context_dim": 2048,
    "adm_in_channels": 2816, "use_temporal_attention": False, "use_temporal_resblock": False,
    "in_channels": 4, "out_channels": 4, "num_head_channels": 64, "use_spatial_transformer": True,
    "legacy": False, "use_checkpoint": False, "image_size": 32,
}


class TinySDXLLoader:
    """Test-only node: an SDXL-shaped MODEL (6M params, random) to feed our nodes."""

    CATEGORY = "testing"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        import comfy.model_patcher
        import comfy.supported_models
        import torch

        model = comfy.supported_models.SDXL(dict(TINY_SDXL_CONFIG)).get_model({})
        return (comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                                 offload_device=torch.device("cpu")),)


def toy_clip_file(comfy_host) -> str:
    """The toy world's tiny open_clip model (3.5M params, committed asset) in the host's clip
    folder, as a user would put ViT-L-14 weights there. Returns its file name."""
    import importlib.util

    spec = importlib.util.find_spec("unlearn_core")
    asset = Path(spec.origin).parent / "toyworld" / "assets" / "tiny_clip.safetensors"
    name = "unlearn_tiny_clip.safetensors"
    dest = comfy_host.model_dir("clip") / name
    if not dest.exists():
        dest.symlink_to(asset)
    comfy_host.refresh_file_lists()
    return name
