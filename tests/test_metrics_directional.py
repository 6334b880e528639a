"""CLIP directional similarity: sign and value on constructed embeddings."""

from __future__ import annotations

import math

import pytest
import torch
from test_metrics_clip import TINY_CLIP, solid, stub_clip
from unlearn_testkit.tolerance import fp32_atol

from unlearn_core.errors import ConfigError
from unlearn_core.metrics.directional import (
    directional_similarity,
    directional_similarity_from_embeddings,
)

torch.set_num_threads(1)

E1, E2, E3 = torch.eye(3)
# Cosines (size 1) after at most the stub's mean over 4x4 pixels, then normalise, subtract, dot.
ATOL = fp32_atol(16, chain=4)


def test_sign_follows_the_text_direction():
    before, after = E1[None], E2[None]
    same = directional_similarity_from_embeddings(before, after, E1, E2)
    reverse = directional_similarity_from_embeddings(before, after, E2, E1)
    no_direction = directional_similarity_from_embeddings(before, after, E3, E3)
    assert same.item() == pytest.approx(1.0, abs=ATOL)
    assert reverse.item() == pytest.approx(-1.0, abs=ATOL)
    # text moves E3 -> E3: no direction at all -> 0, never NaN
    assert no_direction.item() == 0.0


def test_value_equals_hand_computation():
    # image moves e1 -> (e1 + e2)/sqrt2 after normalising (2, 2, 0); text moves e1 -> e3
    before = torch.tensor([[5.0, 0.0, 0.0]])
    after = torch.tensor([[2.0, 2.0, 0.0]])
    d_img = torch.tensor([1 / math.sqrt(2) - 1, 1 / math.sqrt(2), 0.0])
    d_txt = torch.tensor([-1.0, 0.0, 1.0])
    expected = float(d_img @ d_txt / (d_img.norm() * d_txt.norm()))
    got = directional_similarity_from_embeddings(before, after, E1 * 3, E3 * 0.5)
    assert got.item() == pytest.approx(expected, abs=ATOL)
    assert expected == pytest.approx((1 - 1 / math.sqrt(2)) / (math.sqrt(2 - math.sqrt(2)) * math.sqrt(2)))


def test_unchanged_images_score_zero_and_batches_pair_up():
    before = torch.stack([E1, E2, E1])
    after = torch.stack([E1, E3, E2])
    got = directional_similarity_from_embeddings(before, after, torch.stack([E1, E2, E2]),
                                                 torch.stack([E2, E3, E1]))
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, -1.0]), atol=ATOL, rtol=0)


def test_through_a_clip_model():
    clip = stub_clip()  # image embedding = mean colour; "red" = e1, "green" = e2
    before = torch.stack([solid((1.0, 0.0, 0.0)), solid((1.0, 0.0, 0.0))])
    after = torch.stack([solid((0.0, 1.0, 0.0)), solid((1.0, 0.0, 0.0))])
    scores = directional_similarity(clip, before, after, "a red", "a green")
    torch.testing.assert_close(scores.per_pair, torch.tensor([1.0, 0.0]), atol=ATOL, rtol=0)
    assert scores.mean == pytest.approx(0.5, abs=ATOL)
    reverse = directional_similarity(clip, before, after, ["a green", "a green"], ["a red", "a red"])
    assert reverse.per_pair[0].item() == pytest.approx(-1.0, abs=ATOL)
    with pytest.raises(ConfigError, match="pair up"):
        directional_similarity(clip, before, after[:1], "a red", "a green")


@pytest.mark.skipif(not TINY_CLIP.is_file(), reason="toy world tiny CLIP asset not trained yet")
def test_recolouring_points_along_the_colour_direction_on_the_tiny_clip():
    from unlearn_core.metrics.clip_score import load_clip
    from unlearn_core.toyworld.clip import CLIP_NAME
    from unlearn_core.toyworld.dataset import COLOURS, make_batch

    clip = load_clip(CLIP_NAME, TINY_CLIP)
    batch = make_batch(64, seed=777)
    red = batch.colour == COLOURS.index("red")
    images = (batch.images[red] + 1) / 2
    # the same shapes, red -> green: swap the red and green channels
    recoloured = images[:, [1, 0, 2]]
    ds = directional_similarity(clip, images, recoloured, "a red shape", "a green shape")
    back = directional_similarity(clip, images, recoloured, "a green shape", "a red shape")
    # measured: mean 0.90, every pair > 0.8
    assert ds.mean > 0.5 and ds.per_pair.min() > 0 and back.mean < -0.5, (ds.mean, back.mean)
