"""Tensor plumbing: deltas, selections, keys, files (each well under a second)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from unlearn_testkit.tiny import CONTEXT_DIM, tiny_conditioning, tiny_denoiser, tiny_unet

from unlearn_core import EraseConfig, erase, select_layers
from unlearn_core.delta import Delta, DeltaSet
from unlearn_core.errors import FileFormatError, ModelError, OutputExistsError
from unlearn_core.files import compress_deltas, load_erasure, save_erasure, svd_compress
from unlearn_core.keys import (
    diffusers_to_ldm,
    kohya_name,
    ldm_to_diffusers,
    sd1_attention_layers,
)


def inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, 8, 8, generator=g), torch.tensor([10, 700][:batch]),
            torch.randn(batch, 6, CONTEXT_DIM, generator=g))


@pytest.mark.parametrize("selection,expected", [
    ("xattn", {"to_q", "to_k", "to_v", "0"}),
    ("xattn-kv", {"to_k", "to_v"}),
    ("esd-x-strict", {"to_k", "to_v"}),
])
def test_selection_picks_cross_attention(selection, expected):
    layers = select_layers(tiny_unet(), selection)
    assert layers and all(".attn2." in n for n in layers)
    assert {n.rsplit(".", 1)[1] for n in layers} == expected


def test_noxattn_and_full():
    unet = tiny_unet()
    nox = select_layers(unet, "esd-u")
    assert nox and not any(".attn2." in n for n in nox)
    assert not any(n.startswith(("time_embedding", "conv_out")) for n in nox)
    full = select_layers(unet, "full")
    assert set(nox) < set(full) and any(".attn2." in n for n in full)


def test_empty_selection_is_an_error():
    with pytest.raises(ModelError, match="matched no layer"):
        select_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "xattn")


@pytest.mark.parametrize("kind", ["lora", "full"])
@pytest.mark.parametrize("selection", ["xattn", "noxattn"])
def test_zero_initialised_delta_changes_no_output(kind, selection):
    d = tiny_denoiser()
    x, t, c = inputs()
    with torch.no_grad():
        before = d(x, t, c)
        ds = DeltaSet(select_layers(d.module, selection), kind, rank=4, alpha=4,
                      generator=torch.Generator().manual_seed(0))
        ds.attach()
        after = d(x, t, c)
        ds.detach_hooks()
    assert torch.equal(before, after)


def test_training_leaves_base_weights_bit_identical_and_only_selected_change():
    d = tiny_denoiser()
    snapshot = {k: v.clone() for k, v in d.module.state_dict().items()}
    cfg = EraseConfig(concepts=("c",), steps=3, resolution=8, sampling_steps=4, batch_size=2,
                      lr=1e-2, ema_decay=0.5, selection="xattn-kv", parametrization="full")
    result = erase(d, tiny_conditioning(), cfg)
    for k, v in d.module.state_dict().items():
        assert torch.equal(v, snapshot[k]), k
    assert all(p.requires_grad for p in d.module.parameters())  # flags restored
    assert set(result.deltas) == set(select_layers(d.module, "xattn-kv"))
    assert all(delta.weight().abs().sum() > 0 for delta in result.deltas.values())
    # The delta changes the outputs when applied, and only while applied.
    x, t, c = inputs()
    with torch.no_grad():
        base = d(x, t, c)
        with result.applied(d):
            erased = d(x, t, c)
        assert not torch.allclose(base, erased)
        assert torch.equal(d(x, t, c), base)


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_saved_file_reloads_and_reproduces_outputs(tmp_path, kind):
    d = tiny_denoiser()
    cfg = EraseConfig(concepts=("c",), steps=2, resolution=8, sampling_steps=3, lr=1e-2,
                      ema_decay=0.0, parametrization=kind, lora_rank=4)
    result = erase(d, tiny_conditioning(), cfg)
    path = save_erasure(tmp_path / "e.safetensors", result.deltas, result.metadata)
    shapes = {n: tuple(m.weight.shape) for n, m in select_layers(d.module, "xattn").items()}
    loaded = load_erasure(path, shapes)
    assert set(loaded.deltas) == set(result.deltas)
    assert loaded.metadata["config"] == cfg.to_dict()
    assert loaded.metadata["base_weights_sha256"] == result.metadata["base_weights_sha256"]
    assert loaded.metadata["unlearn_version"]
    x, t, c = inputs()
    with torch.no_grad():
        with result.applied(d):
            want = d(x, t, c)
        from unlearn_core.delta import applied

        with applied(d.module, loaded.deltas):
            got = d(x, t, c)
    assert torch.allclose(want, got, atol=1e-6)
    keys = load_file(str(path))
    suffixes = {".lora_down.weight", ".lora_up.weight", ".alpha"} if kind == "lora" else {".diff"}
    assert {k[k.index("."):] for k in keys} == suffixes
    assert all(k.startswith("lora_unet_down_blocks_") or k.startswith("lora_unet_up_blocks_")
               or k.startswith("lora_unet_mid_block_") for k in keys)
    with pytest.raises(OutputExistsError, match="exists"):
        save_erasure(path, result.deltas, result.metadata)
    save_erasure(path, result.deltas, result.metadata, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_load_names_what_does_not_match(tmp_path):
    path = tmp_path / "e.safetensors"
    save_erasure(path, {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k":
                        Delta(diff=torch.ones(8, 3))}, {})
    with pytest.raises(FileFormatError, match=r"delta \(8, 3\) vs layer \(8, 4\)"):
        load_erasure(path, {"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (8, 4)})
    with pytest.raises(FileFormatError, match="match no layer"):
        load_erasure(path, {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k": (8, 3)})
    bad = tmp_path / "x.safetensors"
    bad.write_text("not a safetensors file")
    with pytest.raises(FileFormatError, match="not a safetensors file"):
        load_erasure(bad, {})


def test_svd_full_rank_reproduces_and_low_rank_reports_error():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(12, 7, generator=g)
    lora, err = svd_compress(dense, 7)
    assert err < 1e-6 and torch.allclose(lora.weight(), dense, atol=1e-5)
    low, err_low = svd_compress(dense, 2)
    assert 0.1 < err_low < 1
    assert err_low == pytest.approx(float((dense - low.weight()).norm() / dense.norm()), rel=1e-4)
    conv = torch.randn(6, 3, 3, 3, generator=g)
    out, errors = compress_deltas({"a": Delta(diff=conv)}, 6)
    assert out["a"].weight().shape == conv.shape and errors["a"] < 1e-5


def test_key_golden_list_matches_diffusers_sd1_unet():
    """Every SD-1.x attention layer of a real diffusers SD-1 UNet (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768)  # diffusers' defaults are SD-1's
    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
             and (".attn1." in n or ".attn2." in n)]
    assert sorted(names) == sorted(sd1_attention_layers())
    assert len(names) == 128
    golden = json.loads((__import__("pathlib").Path(__file__).parent / "data"
                         / "sd1_attn2_kohya_keys.json").read_text())
    assert [kohya_name(n) for n in sd1_attention_layers(("attn2",))] == golden
    for n in names:
        assert ldm_to_diffusers(diffusers_to_ldm(n)) == n
    assert diffusers_to_ldm("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k") == \
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
    assert diffusers_to_ldm("up_blocks.3.attentions.2.proj_out") == "output_blocks.11.1.proj_out"
