"""CLIP score: the maths on fixed embeddings, the loader (offline, key accounting), and the toy
world's trained tiny CLIP (matching captions beat mismatching ones)."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch
from torch import nn
from unlearn_testkit.tolerance import fp32_atol, longest_reduction

from unlearn_core.errors import ConfigError, FileFormatError
from unlearn_core.metrics.clip_score import (
    ClipModel,
    clip_score,
    clip_score_from_embeddings,
    load_clip,
    make_preprocess,
    resize_center_crop,
)
from unlearn_core.toyworld import TINY_CLIP_FILE
from unlearn_core.toyworld.clip import CLIP_NAME, CONFIG_PATH
from unlearn_core.toyworld.hashes import asset_path

torch.set_num_threads(1)

TINY_CLIP = asset_path(TINY_CLIP_FILE)
needs_tiny_clip = pytest.mark.skipif(not TINY_CLIP.is_file(),
                                     reason="toy world tiny CLIP asset not trained yet")


# -- a stub CLIP whose embeddings are known by hand ---------------------------------------------

class StubClipNet(nn.Module):
    """encode_image: the image's mean colour (3-d); encode_text: a lookup table of token 0."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.table[tokens[:, 0]]


WORDS = {"red": 0, "green": 1, "yellow": 2, "grey": 3}
TABLE = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]])


def stub_clip() -> ClipModel:
    def tokenizer(texts):
        return torch.tensor([[WORDS[t.split()[-1]]] for t in texts])

    return ClipModel(model=StubClipNet(TABLE), tokenizer=tokenizer, preprocess=lambda x: x,
                     arch="stub", info={"embed_dim": 3})


def solid(rgb: tuple[float, float, float], size: int = 4) -> torch.Tensor:
    return torch.tensor(rgb).view(3, 1, 1).expand(3, size, size).clone()


def random_tiny_clip_file(tmp_path, seed: int = 0):
    """An untrained tiny CLIP saved like the asset (config in the file's metadata)."""
    from unlearn_core.toyworld.clip import new_tiny_clip, save_tiny_clip

    torch.manual_seed(seed)
    path = tmp_path / f"clip{seed}.safetensors"
    save_tiny_clip(new_tiny_clip(), path, dtype=torch.float32)
    return path


# -- the maths ----------------------------------------------------------------------------------

def test_score_from_embeddings_equals_hand_computation():
    img = torch.tensor([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    txt = torch.tensor([[6.0, 8.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # cos = 1, -1 (clipped to 0), 1/sqrt(2), zero vector -> 0
    expected = torch.tensor([100.0, 0.0, 100.0 / math.sqrt(2.0), 0.0])
    atol = fp32_atol(3, magnitude=100.0, chain=2)  # scores up to 100: 3-d norms, then the dot
    torch.testing.assert_close(clip_score_from_embeddings(img, txt), expected, atol=atol, rtol=0)
    # one text for all images broadcasts
    torch.testing.assert_close(clip_score_from_embeddings(img[:3], txt[0]),
                               torch.tensor([100.0, 60.0, 80.0]), atol=atol, rtol=0)


def test_clip_score_pipeline_equals_hand_computation():
    clip = stub_clip()
    images = torch.stack([solid((1.0, 0.0, 0.0)), solid((0.6, 0.8, 0.0)), solid((0.2, 0.2, 0.2))])
    scores = clip_score(clip, images, ["a red", "a yellow", "a grey"])
    # red image vs red text: cos 1; (0.6,0.8,0) vs (1,1,0): 1.4/sqrt(2); grey vs (-1,-1,-1): -1 -> 0
    expected = torch.tensor([100.0, 100.0 * 1.4 / math.sqrt(2.0), 0.0])
    atol = fp32_atol(16, magnitude=100.0, chain=3)  # mean over 4x4 pixels, 3-d norms, dot
    torch.testing.assert_close(scores.per_image, expected, atol=atol, rtol=0)
    assert scores.mean == pytest.approx(float(expected.mean()), abs=atol)
    # template: "{}" replaced; the stub reads the last word, so "a photo of a red" is still red
    assert clip_score(clip, images[:1], "red", template="a photo of {}").prompts == ("a photo of red",)
    assert "| **mean** |" in scores.table()


def test_clip_score_checks_inputs():
    clip = stub_clip()
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        clip_score(clip, torch.full((1, 3, 4, 4), -1.0), "a red")
    with pytest.raises(ConfigError, match="B, 3, H, W"):
        clip_score(clip, torch.zeros(1, 4, 4, 3), "a red")
    with pytest.raises(ConfigError, match="one prompt"):
        clip_score(clip, torch.zeros(3, 3, 4, 4), ["a red", "a green"])
    with pytest.raises(ConfigError, match="placeholder"):
        clip_score(clip, torch.zeros(1, 3, 4, 4), "a red", template="a photo")


def test_preprocess_resizes_crops_and_normalises():
    x = torch.rand(2, 3, 40, 60)
    assert resize_center_crop(x, (16, 16)).shape == (2, 3, 16, 16)
    signed = make_preprocess((40, 60), "signed")(x)
    torch.testing.assert_close(signed, x * 2 - 1)
    clipped = make_preprocess((40, 60), "clip", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(x)
    torch.testing.assert_close(clipped, (x - 0.5) / 0.25)


# -- the loader ---------------------------------------------------------------------------------

def test_loads_from_metadata_config_and_from_json(tmp_path):
    path = random_tiny_clip_file(tmp_path)
    by_meta = load_clip(CLIP_NAME, path)
    by_json = load_clip(str(CONFIG_PATH), path)
    # "auto" reads the file's format: the toy CLIP was trained on images in [-1, 1]
    assert by_meta.info["image_norm"] == by_json.info["image_norm"] == "signed"
    assert load_clip(CLIP_NAME, path, image_norm="clip").info["image_norm"] == "clip"
    images = torch.rand(3, 3, 16, 16)
    a = clip_score(by_meta, images, "a red circle").per_image
    b = clip_score(by_json, images, "a red circle").per_image
    torch.testing.assert_close(a, b)


def test_mismatched_file_names_missing_and_unexpected_keys(tmp_path):
    path = random_tiny_clip_file(tmp_path)
    cfg = json.loads(CONFIG_PATH.read_text())
    cfg["vision_cfg"]["layers"] = 4  # one more block than the file has
    cfg["text_cfg"]["layers"] = 1  # one fewer
    other = tmp_path / "other-arch.json"
    other.write_text(json.dumps(cfg))
    with pytest.raises(FileFormatError) as e:
        load_clip(str(other), path)
    msg = str(e.value)
    assert "missing keys" in msg and "visual.transformer.resblocks.3." in msg
    assert "unexpected keys" in msg and "transformer.resblocks.1." in msg
    assert "other-arch" in msg and "Fix:" in msg


def test_loader_errors_are_plain(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_clip("ViT-B-32", tmp_path / "nope.safetensors")
    path = random_tiny_clip_file(tmp_path)
    with pytest.raises(ConfigError, match="not an open_clip architecture"):
        load_clip("ViT-B-3", path)
    with pytest.raises(ConfigError, match="Hugging Face"):
        load_clip("xlm-roberta-base-ViT-B-32", path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(FileFormatError):
        load_clip(CLIP_NAME, bad)


def test_never_touches_the_network(tmp_path, monkeypatch):
    """Fails if loading or scoring tries to open a connection or resolve a host name."""
    path = random_tiny_clip_file(tmp_path)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    clip = load_clip(CLIP_NAME, path)
    clip_score(clip, torch.rand(2, 3, 16, 16), "a red circle")
    with pytest.raises(ConfigError):  # refused up front, not by trying the hub
        load_clip("xlm-roberta-base-ViT-B-32", path)
    assert attempts == []


# -- the trained tiny CLIP ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clip():
    if not TINY_CLIP.is_file():
        pytest.skip("toy world tiny CLIP asset not trained yet")
    return load_clip(CLIP_NAME, TINY_CLIP)


@pytest.fixture(scope="module")
def toy_batch():
    from unlearn_core.toyworld.dataset import make_batch

    batch = make_batch(200, seed=4242)  # a seed the CLIP never trained on
    return batch, (batch.images + 1) / 2  # toy images are [-1, 1]; the metrics take [0, 1]


@needs_tiny_clip
def test_matching_captions_beat_mismatching(tiny_clip, toy_batch):
    from unlearn_core.toyworld.dataset import AXES, caption

    batch, images = toy_batch
    labels = [batch.labels()[a].tolist() for a in AXES]
    true = [caption(*lab) for lab in zip(*labels)]
    g = torch.Generator().manual_seed(0)
    s_true = clip_score(tiny_clip, images, true).per_image
    # another image's caption that does not describe this image
    perm = torch.randperm(len(true), generator=g).tolist()
    other = [true[j] for j in perm]
    differs = torch.tensor([a != b for a, b in zip(true, other)])
    wins_random = (s_true > clip_score(tiny_clip, images, other).per_image)[differs].float().mean()
    # the same caption with one axis (shape, colour or texture) swapped
    swapped = []
    for i, lab in enumerate(zip(*labels)):
        lab = list(lab)
        k = i % 3
        size = len(list(AXES.values())[k])
        lab[k] = (lab[k] + 1 + int(torch.randint(0, size - 1, (1,), generator=g))) % size
        swapped.append(caption(*lab))
    wins_swapped = (s_true > clip_score(tiny_clip, images, swapped).per_image).float().mean()
    assert wins_random >= 0.95, float(wins_random)
    assert wins_swapped >= 0.95, float(wins_swapped)


@needs_tiny_clip
def test_batch_order_and_size_invariant(tiny_clip, toy_batch):
    from unlearn_core.toyworld.dataset import AXES, caption

    batch, images = toy_batch
    images = images[:48]
    prompts = [caption(*lab) for lab in zip(*[batch.labels()[a].tolist() for a in AXES])][:48]
    scores = clip_score(tiny_clip, images, prompts, batch_size=32).per_image
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(1))
    permuted = clip_score(tiny_clip, images[perm], [prompts[i] for i in perm], batch_size=32).per_image
    one_by_one = clip_score(tiny_clip, images, prompts, batch_size=1).per_image
    # Scores up to 100 through the embedding, each transformer layer and the projection, with
    # sums in another order per batch size: float32 rounding over the model's longest reduction.
    config = json.loads(CONFIG_PATH.read_text())
    depth = max(config["vision_cfg"]["layers"], config["text_cfg"]["layers"]) + 2
    atol = fp32_atol(longest_reduction(tiny_clip.model), magnitude=100.0, chain=depth)
    torch.testing.assert_close(permuted, scores[perm], atol=atol, rtol=0)
    torch.testing.assert_close(one_by_one, scores, atol=atol, rtol=0)
