"""The memory bound the full-size node test asserts (tests/unlearn_testkit/memory.py), checked
where it can be measured in seconds: its arithmetic, its activation term against what autograd
really saves, and a training run on a small UNet whose RSS rise stays under it."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from unlearn_testkit.memory import (
    BYTES_PER_VALUE,
    TRAINED_COPIES,
    MiB,
    PeakRSS,
    forward_output_bytes,
    training_bound,
)

from unlearn_core import Conditioning, DiffusersDenoiser, EraseConfig, erase

CONTEXT = 768  # SD-1's text width: the cross-attention keys and values the run trains are wide
FAST = dict(resolution=8, sampling_steps=4, batch_size=2, selection="xattn", parametrization="full")


def small_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(128, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CONTEXT,
        layers_per_block=1, attention_head_dim=32, norm_num_groups=16,
    ).eval()


def conditioning() -> Conditioning:
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(3, 8, CONTEXT, generator=g)
    return Conditioning(concepts=[emb[0:1]], empty=emb[1:2], trajectory=emb[2:3], retain=[])


def unet_inputs(unet: UNet2DConditionModel, batch: int, tokens: int) -> tuple:
    x = torch.randn(batch, 4, 8, 8)
    return x, torch.full((batch,), 500), torch.randn(batch, tokens, unet.config.cross_attention_dim)


def test_the_bound_adds_the_base_clone_six_trained_copies_activations_and_margin():
    bound = training_bound(trained_parameters=1000, forward_bytes=300, margin=7, cloned_base_parameters=50)
    assert TRAINED_COPIES == 6 and BYTES_PER_VALUE == 4
    assert (bound.cloned_base_bytes, bound.trained_bytes, bound.activation_bytes) == (200, 24_000, 1200)
    assert bound.total == 200 + 24_000 + 1200 + 7
    assert "bound 0 MiB" in bound.explain(0)


def test_the_activation_term_covers_what_autograd_saves():
    """The activation term (4 x every leaf module's output bytes of one forward) against the bytes
    autograd saves for backward in a forward whose first cross-attention is trained (the deepest
    graph the run builds): it must cover them, and not by orders of magnitude."""
    unet = small_unet().requires_grad_(False)
    x, t, ctx = unet_inputs(unet, batch=2, tokens=8)
    bound = training_bound(0, forward_output_bytes(unet, x, t, encoder_hidden_states=ctx), margin=0)
    first = next(m for n, m in unet.named_modules() if n.endswith("attn2.to_k"))
    first.weight.requires_grad_(True)
    weights = {p.data_ptr() for p in unet.parameters()}  # saved too, but resident already
    saved = {}

    def pack(tensor):
        if tensor.data_ptr() not in weights:
            saved.setdefault((tensor.data_ptr(), tensor.shape), tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        unet(x, t, encoder_hidden_states=ctx).sample.sum().backward()
    saved_bytes = sum(saved.values())
    assert 0 < saved_bytes <= bound.activation_bytes < 50 * saved_bytes, (saved_bytes, bound)


def test_a_training_run_stays_under_its_memory_bound():
    """Two steps of a full-delta xattn erasure on a small UNet, after one forward at the training
    shape (so the first kernel calls and thread pools are not counted): the RSS rise is under the
    bound. Margin 48 MiB: the allocator's arenas and per-thread caches, the sampler's states and
    the conditioning's copies, on a process that already ran torch."""
    unet = small_unet()
    denoiser, cond = DiffusersDenoiser(unet), conditioning()
    config = EraseConfig(concepts=("c",), steps=2, **FAST)
    x, t, ctx = unet_inputs(unet, batch=config.batch_size, tokens=8)
    forward_bytes = forward_output_bytes(unet, x, t, encoder_hidden_states=ctx)  # also the warm-up
    with PeakRSS() as peak:
        result = erase(denoiser, cond, config)
    # the student's forward at the training shape: the batch's states against the concept's rows
    bound = training_bound(result.metadata["trained_parameters"], forward_bytes, 48 * MiB)
    assert bound.trained_bytes > 40 * MiB  # the trained copies are most of what is measured
    assert peak.rise <= bound.total, bound.explain(peak.rise)
