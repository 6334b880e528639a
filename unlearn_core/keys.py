"""Layer names across formats: LDM (ComfyUI, original checkpoints), diffusers, and kohya LoRA keys.

kohya's format with *diffusers* layer names loads with ComfyUI's stock LoRA loaders (the 2024 and
0.3.64 trees) and diffusers' ``load_lora_weights`` (tests/test_nodes_lora.py); A1111/Forge read
the same kohya names (not tested); docs/COMFYUI_NOTES.md §4 lists the key forms ComfyUI accepts.
Example: ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight``.
Only the block prefix differs between LDM and diffusers inside SD-1's 16 attention blocks; the
names inside a block (transformer_blocks.0.attn2.to_k, proj_in, ff.net.2, ...) are the same.
"""

from __future__ import annotations

from collections.abc import Iterable

KOHYA_PREFIX = "lora_unet_"

# SD-1.x attention blocks: LDM prefix -> diffusers prefix (16 blocks). This table is the full SD-1
# layout (4 levels, 2 res blocks per level); a UNet with another layout (e.g. a reduced test
# model) numbers its blocks differently — derive its map from its config instead (in ComfyUI:
# comfy.utils.unet_to_diffusers, as nodes/host.py does).
SD1_ATTENTION_BLOCKS: dict[str, str] = {
    "input_blocks.1.1": "down_blocks.0.attentions.0",
    "input_blocks.2.1": "down_blocks.0.attentions.1",
    "input_blocks.4.1": "down_blocks.1.attentions.0",
    "input_blocks.5.1": "down_blocks.1.attentions.1",
    "input_blocks.7.1": "down_blocks.2.attentions.0",
    "input_blocks.8.1": "down_blocks.2.attentions.1",
    "middle_block.1": "mid_block.attentions.0",
    "output_blocks.3.1": "up_blocks.1.attentions.0",
    "output_blocks.4.1": "up_blocks.1.attentions.1",
    "output_blocks.5.1": "up_blocks.1.attentions.2",
    "output_blocks.6.1": "up_blocks.2.attentions.0",
    "output_blocks.7.1": "up_blocks.2.attentions.1",
    "output_blocks.8.1": "up_blocks.2.attentions.2",
    "output_blocks.9.1": "up_blocks.3.attentions.0",
    "output_blocks.10.1": "up_blocks.3.attentions.1",
    "output_blocks.11.1": "up_blocks.3.attentions.2",
}
_DIFFUSERS_TO_LDM = {v: k for k, v in SD1_ATTENTION_BLOCKS.items()}

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


def sd1_attention_layers(which: Iterable[str] = ("attn1", "attn2")) -> list[str]:
    """Every SD-1.x attention projection, diffusers names, in block order."""
    return [
        f"{block}.transformer_blocks.0.{attn}.{proj}"
        for block in SD1_ATTENTION_BLOCKS.values()
        for attn in which
        for proj in ATTENTION_PROJECTIONS
    ]


def _swap_prefix(name: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def ldm_to_diffusers(name: str) -> str:
    """``input_blocks.1.1.transformer_blocks.0.attn2.to_k`` -> ``down_blocks.0.attentions.0....``.

    Raises KeyError for a layer outside SD-1's attention blocks.
    """
    out = _swap_prefix(name, SD1_ATTENTION_BLOCKS)
    if out is None:
        raise KeyError(f"{name!r} is not inside an SD-1.x attention block")
    return out


def diffusers_to_ldm(name: str) -> str:
    out = _swap_prefix(name, _DIFFUSERS_TO_LDM)
    if out is None:
        raise KeyError(f"{name!r} is not inside an SD-1.x attention block")
    return out


def kohya_name(canonical: str) -> str:
    """diffusers layer name -> kohya module key (dots become underscores)."""
    return KOHYA_PREFIX + canonical.replace(".", "_")


def kohya_lookup(canonical_names: Iterable[str]) -> dict[str, str]:
    """kohya module key -> canonical name, for inverting ``kohya_name`` (underscores are ambiguous,
    so the inverse needs the list of names the model has)."""
    return {kohya_name(n): n for n in canonical_names}
