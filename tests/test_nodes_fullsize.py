"""The full-size SD-1.5-shaped UNet (859.5M parameters, random weights, stock UNETLoader) trains
two steps through the Advanced node: the parameter count, the 64 cross-attention layers of the
real architecture and their shapes, the user's weights left as they were (inference tensors, no
patches), and the memory the erasure adds under the bound the computation allows
(tests/unlearn_testkit/memory.py; the same rule is checked on a small UNet in seconds by
tests/test_memory_bound.py). Slow (about a minute on 2 cores) but run in CI: ``-m slow`` selects
it, nothing deselects it by default.
"""

from __future__ import annotations

import time

import pytest
from unlearn_testkit import node_helpers as nh
from unlearn_testkit.memory import MiB, PeakRSS, forward_output_bytes, training_bound

pytestmark = [pytest.mark.comfy, pytest.mark.slow]


def _measured(monkeypatch) -> PeakRSS:
    """Measure the erasure alone (the host call: weight clones, conditioning, training, result),
    not the loaders before it, whose file reads depend on the page cache."""
    host = nh.pack_module("nodes.host")
    peak = PeakRSS()
    run_erase = host.run_erase

    def measured(*args, **kwargs):
        with peak:
            return run_erase(*args, **kwargs)

    monkeypatch.setattr(host, "run_erase", measured)
    return peak


def _bound(diffusion_model, trained_parameters: int, batch_size: int):
    """Every UNet weight and buffer cloned out of inference mode, six copies of the trained
    deltas, the activations of one forward at twice the batch (the guided sampling passes run
    the concept's and the empty rows together, the student's runs the batch), 77 CLIP tokens.
    Margin 512 MiB: the allocator's arenas and caches, ComfyUI's bookkeeping and the loss plot;
    small beside the 3.4 GB clone, so a second clone of the UNet cannot hide in it."""
    import torch

    tensors = [*diffusion_model.parameters(), *diffusion_model.buffers()]
    x = torch.zeros(2 * batch_size, 4, 8, 8)
    forward = forward_output_bytes(diffusion_model, x, timesteps=torch.full((2 * batch_size,), 500.0),
                                   context=torch.zeros(2 * batch_size, 77, 768))
    return training_bound(trained_parameters, forward, 512 * MiB,
                          cloned_base_parameters=sum(t.numel() for t in tensors))


def test_full_size_sd15_unet_trains_two_steps(comfy_host, small_sd15_ckpt, full_sd15_unet, monkeypatch):
    import comfy.model_management

    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a lighthouse", steps=2, sampling_steps=2)
    prompt["10"] = comfy_host.stock_node("UNETLoader", unet_name=full_sd15_unet)
    prompt["20"]["inputs"]["model"] = ["10", 0]
    peak = _measured(monkeypatch)
    t0 = time.perf_counter()
    try:
        result = comfy_host.run(prompt, fresh_cache=True).raise_for_status()
        seconds = time.perf_counter() - t0
        assert result.progress("20") == [(1, 2), (2, 2)]
        assert result.progress("3") == [(1, 1)]  # sampled with the patched full-size UNet
        base = comfy_host.node_output("10", 0)
        erased = comfy_host.node_output("20", 0)
        erasure = comfy_host.node_output("20", 1)
        assert 859e6 < sum(p.numel() for p in base.model.diffusion_model.parameters()) < 860e6
        assert len(erasure.deltas) == 16 * 4 and len(erased.patches) == 64
        assert "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0" in erasure.deltas
        assert erasure.deltas["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"].diff.shape \
            == (1280, 768)
        assert sum(d.diff.numel() for d in erasure.deltas.values()) == erasure.metadata[
            "trained_parameters"]
        assert base.patches == {}
        assert all(p.is_inference() for p in base.model.diffusion_model.parameters())
        bound = _bound(base.model.diffusion_model, erasure.metadata["trained_parameters"],
                       erasure.config.batch_size)
        print(f"\nfull-size SD-1.5 UNet: load + 2 training steps + 1 sampling step: {seconds:.1f} s; "
              f"the erasure's RSS rise: {bound.explain(peak.rise)}")
        assert peak.rise <= bound.total, bound.explain(peak.rise)
    finally:
        comfy_host.new_executor()  # drop the cached 3.4 GB model
        comfy.model_management.unload_all_models()
