"""Partial-diffusion probe: psi -> 0 is the erased model, psi -> 1 the base model, a middle psi is
base-then-erased exactly; plumbing (erasure given as a result, cancel, progress); and on the toy
world the curve rises with psi for an erased concept."""

from __future__ import annotations

import pytest
import torch
from unlearn_testkit.tiny import CONTEXT_DIM, state_hash, tiny_denoiser, tiny_unet
from unlearn_testkit.tolerance import fp32_atol, longest_reduction, sampling_chain

from unlearn_core import EraseConfig, EraseResult
from unlearn_core.delta import Delta
from unlearn_core.errors import Cancelled, ConfigError
from unlearn_core.metrics.config import DEFAULT_PSIS, ProbeConfig, parse_psis, parse_seeds
from unlearn_core.metrics.generation import generate_images, initial_noise
from unlearn_core.metrics.probe import base_steps_for, partial_diffusion_probe
from unlearn_core.sampling import ddim_sample
from unlearn_core.selection import select_layers
from unlearn_core.toyworld import JUDGES_FILE, TOY_MODEL_FILE
from unlearn_core.toyworld.hashes import asset_path

torch.set_num_threads(1)

LATENT = (4, 8, 8)
STEPS = 10
# Both limits are exact in this implementation (the same calls on the same states), but the probe
# batches seeds and psis differently from the reference, so images in [0, 1] agree to float32
# rounding over the UNet's longest reduction and the guided steps (see unlearn_testkit.tolerance).
ATOL = fp32_atol(longest_reduction(tiny_unet(0)), chain=sampling_chain(STEPS, 3.0))


def decode(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x[:, :3])


class MeanBrightness:
    name = "brightness"
    scale = 1.0

    def __call__(self, images, prompts):
        return images.mean((1, 2, 3))


def embeddings(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 6, CONTEXT_DIM, generator=g), torch.randn(1, 6, CONTEXT_DIM, generator=g)


def random_erasure(denoiser, scale: float = 0.2) -> EraseResult:
    g = torch.Generator().manual_seed(5)
    layers = select_layers(denoiser.module, "xattn")
    deltas = {n: Delta(diff=torch.randn(m.weight.shape, generator=g) * scale) for n, m in layers.items()}
    return EraseResult(deltas=deltas, config=EraseConfig(concepts=("x",)), loss_history=[1.0, 0.5])


def probe(base, erased, psis, seeds="0-2", **kw):
    cond, uncond = embeddings()
    config = ProbeConfig(concept="x", psis=psis, seeds=seeds, sampling_steps=STEPS, guidance=3.0, **kw)
    return partial_diffusion_probe(base, erased, cond, uncond, MeanBrightness(), config, decode, LATENT)


def reference(denoiser, seeds=(0, 1, 2)):
    cond, uncond = embeddings()
    return generate_images(denoiser, initial_noise(seeds, LATENT), cond, uncond, decode, 3.0, STEPS)


def test_psi_limits_reproduce_the_erased_and_the_base_model():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    result = probe(base, erased, (0.0, 0.001, 0.999, 1.0))
    assert result.base_steps == (0, 0, STEPS, STEPS)
    erased_ref, base_ref = reference(erased), reference(base)
    assert (erased_ref - base_ref).abs().max() > 100 * ATOL  # the two models really differ
    for i in (0, 1):
        torch.testing.assert_close(result.images[i], erased_ref, atol=ATOL, rtol=0)
    for i in (2, 3):
        torch.testing.assert_close(result.images[i], base_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.erased_images, erased_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.base_images, base_ref, atol=ATOL, rtol=0)


def test_middle_psi_is_base_then_erased():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    result = probe(base, erased, (0.4,))
    cond, uncond = embeddings()
    x_T = initial_noise((0, 1, 2), LATENT)
    c, u = cond.expand(3, -1, -1), uncond.expand(3, -1, -1)
    x_k = ddim_sample(base, x_T, c, u, 3.0, STEPS, stop=4)
    x_0 = ddim_sample(erased, x_k, c, u, 3.0, STEPS, start=4)
    torch.testing.assert_close(result.images[0], decode(x_0), atol=ATOL, rtol=0)
    assert result.base_steps == (4,)


def test_erasure_given_as_a_result_matches_the_erased_denoiser_and_leaves_base_alone():
    base = tiny_denoiser(0)
    before = state_hash(base.module)
    erasure = random_erasure(base)
    result = probe(base, erasure, (0.0, 0.3, 1.0))
    with erasure.applied(base):
        erased_ref = reference(base)
    torch.testing.assert_close(result.images[0], erased_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(result.images[2], reference(base), atol=ATOL, rtol=0)
    after = state_hash(base.module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # strength 0 turns the erasure off: every psi is the base model
    off = probe(base, erasure, (0.0, 0.3), strength=0.0)
    torch.testing.assert_close(off.images[0], reference(base), atol=ATOL, rtol=0)


def test_summary_curve_progress_and_cancel():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    seen = []
    cond, uncond = embeddings()
    config = ProbeConfig(concept="x", psis=(0.2, 0.5), seeds="0-1", sampling_steps=STEPS, guidance=3.0,
                         batch_size=1)
    result = partial_diffusion_probe(base, erased, cond, uncond, MeanBrightness(), config, decode, LATENT,
                                     on_progress=lambda d, t: seen.append((d, t)))
    # base once (10 steps) + erased from k = 0, 2, 5 (10 + 8 + 5), counted per batch of 1 image
    assert seen[-1] == (2 * 33, 2 * 33) and len(seen) == 66
    assert result.presence.shape == (2, 2) and result.curve.shape == (2,)
    assert result.ccs == pytest.approx(float(result.presence.mean()))
    assert result.images.shape == (2, 2, 3, 8, 8)
    assert result.to_dict()["base_steps"] == [2, 5]
    assert "CCS-style score" in result.markdown()
    assert result.plot().shape[0] == 3 and result.grid().shape[0] == 3
    with pytest.raises(Cancelled):
        partial_diffusion_probe(base, erased, cond, uncond, MeanBrightness(), config, decode, LATENT,
                                on_progress=lambda d, t: d >= 3)


def test_config_parsing_and_errors():
    assert ProbeConfig(concept="x").psis == DEFAULT_PSIS
    assert parse_seeds("0-3, 7") == (0, 1, 2, 3, 7)
    assert parse_psis("0.1, 0.5") == (0.1, 0.5)
    assert base_steps_for((0.001, 0.01, 0.05, 0.55, 1.0), 50) == [0, 1, 3, 28, 50]  # half up
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        ProbeConfig(concept="x", psis="0.5, 1.5")
    with pytest.raises(ConfigError, match="concept"):
        ProbeConfig(concept="  ")
    with pytest.raises(ConfigError, match="seed"):
        ProbeConfig(concept="x", seeds="a-b")
    with pytest.raises(ConfigError, match="sampling_steps"):
        ProbeConfig(concept="x", sampling_steps=0)
    with pytest.raises(ConfigError, match="strength"):
        probe(tiny_denoiser(0), tiny_denoiser(1), (0.5,), strength=0.5)


# -- the toy world ------------------------------------------------------------------------------

needs_toy = pytest.mark.skipif(
    not (asset_path(TOY_MODEL_FILE).is_file() and asset_path(JUDGES_FILE).is_file()),
    reason="toy world model or judges not trained yet")


@needs_toy
def test_curve_rises_with_psi_for_an_erased_toy_concept():
    """UCE erases "cross"; the more of the trajectory the base model runs, the more the shape judge
    sees a cross. Monotone within a tolerance for 12 seeds of judge noise."""
    from unlearn_core.toyworld.world import load_toy_world, toy_judge_scorer

    world = load_toy_world()
    erasure = world.erase("cross", "uce")
    emb = world.encode(["a cross", ""])
    config = ProbeConfig(concept="a cross", seeds="0-11", sampling_steps=10, guidance=3.0,
                         psis=(0.0, 0.15, 0.35, 0.55, 0.75, 1.0))
    result = partial_diffusion_probe(world.denoiser, erasure, emb[:1], emb[1:],
                                     toy_judge_scorer(), config, world.decode, world.latent_shape)
    curve = result.curve.tolist()
    assert result.monotone_violations(tolerance=0.05) == [], curve
    assert curve[-1] - curve[0] > 0.3, curve  # the erasure worked, and the base model brings it back
