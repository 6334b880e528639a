"""The full-size SD-1.5-shaped UNet (859.5M parameters, random weights, stock UNETLoader) trains
two steps through the Advanced node: the parameter count, the 64 cross-attention layers of the
real architecture and their shapes, the user's weights left as they were (inference tensors, no
patches). The peak memory of the process is printed for the record, not asserted (it depends
on what ran before in the same process). Slow (about a minute on 2 cores) but run in CI: ``-m slow`` selects it,
nothing deselects it by default.
"""

from __future__ import annotations

import resource
import time

import pytest
from unlearn_testkit import node_helpers as nh

pytestmark = [pytest.mark.comfy, pytest.mark.slow]


def test_full_size_sd15_unet_trains_two_steps(comfy_host, small_sd15_ckpt, full_sd15_unet):
    import comfy.model_management

    prompt = nh.erase_prompt(small_sd15_ckpt, node_classes=comfy_host.node_classes,
                             concepts="a lighthouse", steps=2, sampling_steps=2)
    prompt["10"] = comfy_host.stock_node("UNETLoader", unet_name=full_sd15_unet)
    prompt["20"]["inputs"]["model"] = ["10", 0]
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
        rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"\nfull-size SD-1.5 UNet: load + 2 training steps + 1 sampling step: "
              f"{seconds:.1f} s, peak RSS of the test process {rss_gb:.1f} GB")
    finally:
        comfy_host.new_executor()  # drop the cached 3.4 GB model
        comfy.model_management.unload_all_models()
