"""Tiny models built from config for the plumbing and end-to-end tiers (no weights on disk)."""

import torch
from diffusers import UNet2DConditionModel

from unlearn_core import Conditioning, DiffusersDenoiser

CONTEXT_DIM = 32


def tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CONTEXT_DIM,
        layers_per_block=1, attention_head_dim=8, norm_num_groups=8,
    )
    # Random, non-zero outputs everywhere (diffusers zero-inits some output layers).
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.02)
    return unet.eval()


def tiny_denoiser(seed: int = 0) -> DiffusersDenoiser:
    return DiffusersDenoiser(tiny_unet(seed))


def tiny_conditioning(n_concepts: int = 1, n_retain: int = 0, seed: int = 1) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2 + n_concepts + n_retain, 6, CONTEXT_DIM, generator=g)
    return Conditioning(
        concepts=[emb[i : i + 1] for i in range(n_concepts)],
        empty=emb[n_concepts : n_concepts + 1],
        trajectory=emb[n_concepts + 1 : n_concepts + 2],
        retain=[emb[n_concepts + 2 + i : n_concepts + 3 + i] for i in range(n_retain)],
    )


def state_hash(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
