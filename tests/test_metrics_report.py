"""The before/after report: layout, scores, files; and on the toy world, an erased concept drops
while retained prompts stay."""

from __future__ import annotations

import json

import pytest
import torch
from test_metrics_probe import LATENT, decode, needs_toy, random_erasure
from unlearn_testkit.tiny import CONTEXT_DIM, state_hash, tiny_denoiser
from unlearn_testkit.tolerance import fp32_atol, longest_reduction, sampling_chain

from unlearn_core.errors import Cancelled, ConfigError
from unlearn_core.metrics.config import ReportConfig
from unlearn_core.metrics.generation import generate_images, initial_noise
from unlearn_core.metrics.images import labelled_grid
from unlearn_core.metrics.report import build_report
from unlearn_core.metrics.scorers import ClassifierScorer, JointClassifierScorer

torch.set_num_threads(1)


def encode(prompts):
    """A fixed random embedding per distinct prompt."""
    out = []
    for p in prompts:
        g = torch.Generator().manual_seed(sum(map(ord, p)) + 1)
        out.append(torch.randn(1, 6, CONTEXT_DIM, generator=g))
    return torch.cat(out)


class RecordingScorer:
    name = "brightness"
    scale = 1.0

    def __init__(self):
        self.calls = []

    def __call__(self, images, prompts):
        self.calls.append(list(prompts))
        return images.mean((1, 2, 3))


def test_report_layout_scores_and_files(tmp_path):
    base = tiny_denoiser(0)
    before_weights = state_hash(base.module)
    erasure = random_erasure(base)
    config = ReportConfig(erased_prompts="a cat\na dog", retained_prompts="a tree", seeds="3, 5",
                          sampling_steps=4, guidance=3.0)
    scorer = RecordingScorer()
    report = build_report(base, erasure, encode, decode, LATENT, scorer, config)
    # images: (prompts, seeds, 3, H, W), erased first; the scorer saw each image with its own prompt
    assert report.images_before.shape == (3, 2, 3, 8, 8) == report.images_after.shape
    assert scorer.calls[0] == ["a cat", "a cat", "a dog", "a dog", "a tree", "a tree"]
    # "before" is the base model from each seed's own noise; "after" the erased model on the same
    x_T = initial_noise((3, 5), LATENT)
    cond = encode(["a dog"]).expand(2, -1, -1)
    # The report samples 6 images per batch, the reference 2: the same sums in another order, so
    # images in [0, 1] agree to float32 rounding over the UNet's reductions and the guided steps.
    atol = fp32_atol(longest_reduction(base.module), chain=sampling_chain(4, 3.0))
    dog_before = generate_images(base, x_T, cond, encode([""]), decode, 3.0, 4)
    torch.testing.assert_close(report.images_before[1], dog_before, atol=atol, rtol=0)
    assert (report.images_before[0] - dog_before).abs().max() > 100 * atol  # a mix-up would show
    with erasure.applied(base):
        after_dog = generate_images(base, x_T, cond, encode([""]), decode, 3.0, 4)
    torch.testing.assert_close(report.images_after[1], after_dog, atol=atol, rtol=0)
    assert all(torch.equal(v, state_hash(base.module)[k]) for k, v in before_weights.items())
    # scores and summary
    row = report.rows[1]
    assert (row.prompt, row.kind) == ("a dog", "erased")
    assert row.after == pytest.approx(tuple(after_dog.mean((1, 2, 3)).tolist()), abs=atol)
    summary = report.summary
    assert summary["erased"]["images"] == 4 and summary["retained"]["images"] == 2
    assert summary["steps"] == 2  # the erasure's own loss history
    # images, markdown, JSON, files
    assert report.grid.dim() == 3 and report.grid.shape[0] == 3 and report.plot.shape[0] == 3
    md = report.markdown()
    assert "Erased prompts" in md and "| a tree | retained |" in md
    paths = report.save(tmp_path)
    assert sorted(p.name for p in paths.values()) == ["report.json", "report.md", "report_grid.png",
                                                      "report_plot.png"]
    data = json.loads(paths["json"].read_text())
    assert data["rows"][2]["prompt"] == "a tree" and data["config"]["seeds"] == [3, 5]


def test_report_with_two_denoisers_cancel_and_errors():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    config = ReportConfig(retained_prompts=("a tree",), seeds=(0,), sampling_steps=2)
    report = build_report(base, erased, encode, decode, LATENT, RecordingScorer(), config,
                          loss_history=[3.0, 2.0, 1.0])
    assert report.summary["erased"] is None and report.summary["final_loss"] == 1.0
    with pytest.raises(Cancelled):
        build_report(base, erased, encode, decode, LATENT, RecordingScorer(), config,
                     on_progress=lambda done, total: True)
    with pytest.raises(ConfigError, match="no prompts"):
        ReportConfig(erased_prompts="\n  \n")
    with pytest.raises(ConfigError, match="strength"):
        build_report(base, erased, encode, decode, LATENT, RecordingScorer(),
                     ReportConfig(erased_prompts="a", strength=0.5, sampling_steps=2))


def test_grid_and_classifier_scorer():
    grid = labelled_grid([("before", torch.zeros(2, 3, 3, 4, 4)), ("after", torch.ones(2, 3, 3, 4, 4))],
                         ["row one", "row two"], ["s0", "s1", "s2"])
    assert grid.shape[0] == 3 and grid.min() >= 0 and grid.max() <= 1

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(x.shape[0], 3)

    scorer = ClassifierScorer(Fixed(), ("circle", "cross", "none"))
    scores = scorer(torch.zeros(2, 3, 4, 4), ["a red cross, striped", "a circle"])
    torch.testing.assert_close(scores, torch.tensor([0.2, 0.7]))
    with pytest.raises(ConfigError, match="exactly one"):
        scorer(torch.zeros(1, 3, 4, 4), ["a crossing"])  # whole words only

    class Colour(torch.nn.Module):
        def forward(self, x):
            return torch.log(torch.tensor([[0.9, 0.1]])).expand(x.shape[0], 2)

    joint = JointClassifierScorer((scorer, ClassifierScorer(Colour(), ("red", "blue"))))
    scores = joint(torch.zeros(3, 3, 4, 4), ["a red cross", "a blue circle", "a cross"])
    torch.testing.assert_close(scores, torch.tensor([0.2 * 0.9, 0.7 * 0.1, 0.2]))
    assert joint.understands("blue") and not joint.understands("a dog")
    with pytest.raises(ConfigError, match="names none"):
        joint(torch.zeros(1, 3, 4, 4), ["a dog"])


@needs_toy
def test_toy_report_erased_drops_retained_stays(tmp_path):
    from unlearn_core.toyworld.world import load_toy_world, toy_judge_scorer

    world = load_toy_world()
    erasure = world.erase("cross", "uce")
    config = ReportConfig(erased_prompts="a red cross, striped\na cross",
                          retained_prompts="a blue circle, solid\na green square, dotted",
                          seeds="0-3", guidance=3.0, sampling_steps=10)
    report = build_report(world.denoiser, erasure, world.encode, world.decode, world.latent_shape,
                          toy_judge_scorer(), config)
    s = report.summary
    assert s["erased"]["change"] < -0.25, s
    assert abs(s["retained"]["change"]) < 0.1, s
