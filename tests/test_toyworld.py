"""The toy world: dataset determinism and labels, tokenizer, model files, and the committed assets
(hashes, judges' accuracy, the untouched toy model's judged generations, the tiny CLIP)."""

from __future__ import annotations

import pytest
import torch

from unlearn_core.errors import FileFormatError
from unlearn_core.toyworld import (
    COLOURS,
    JUDGE_CLASSES,
    NONE,
    SHAPES,
    TEXTURES,
    accuracy,
    all_prompts,
    generate,
    judge,
    load_judges,
    load_tiny_clip,
    load_toy_model,
    make_batch,
    make_rejects,
    tiny_clip_scorer,
)
from unlearn_core.toyworld.dataset import COLOUR_RGB, DIM, caption, render, shape_masks
from unlearn_core.toyworld.hashes import ASSETS_DIR, asset_path, recorded_hashes, sha256
from unlearn_core.toyworld.model import (
    BOS,
    EOS,
    MAX_LENGTH,
    PAD,
    UNK,
    WordTokenizer,
    new_toy_model,
    read_toy_model,
    save_toy_model,
)

ASSET_NAMES = ("toy_model.safetensors", "judges.safetensors", "tiny_clip.safetensors")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_model():
    return load_toy_model()


@pytest.fixture(scope="module")
def judges():
    return load_judges()


# ---- dataset ---------------------------------------------------------------------------------


def test_dataset_is_deterministic_from_its_seed():
    a, b, c = make_batch(64, seed=3), make_batch(64, seed=3), make_batch(64, seed=4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert torch.equal(a.shape, b.shape) and torch.equal(a.colour, b.colour)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (64, 3, 16, 16) and a.images.dtype == torch.float32
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert torch.equal(make_rejects(16, seed=1), make_rejects(16, seed=1))


def test_stream_of_batches_from_a_generator_is_reproducible():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    first = [make_batch(8, generator=g1).images for _ in range(3)]
    second = [make_batch(8, generator=g2).images for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])


def test_pixel_colours_match_the_colour_label():
    batch = make_batch(256, seed=11)
    image01 = (batch.images + 1) / 2  # (B, 3, H, W)
    for i in range(len(batch.captions)):
        rgb = torch.tensor(COLOUR_RGB[COLOURS[int(batch.colour[i])]])
        lit = image01[i].amax(0) > 0  # (H, W) pixels of the shape
        pixels = image01[i][:, lit].T  # (N, 3)
        assert lit.sum() >= 6
        # every lit pixel is the label's colour at some brightness, the brightest at full
        brightness = pixels.amax(1, keepdim=True)
        assert torch.allclose(pixels, brightness * rgb, atol=1e-6)
        assert brightness.max() == pytest.approx(1.0)
        # background is black
        assert torch.all(image01[i][:, ~lit] == 0)


def test_textures_match_the_texture_label():
    batch = make_batch(256, seed=12)
    brightness = ((batch.images + 1) / 2).amax(1)  # (B, H, W)
    for i in range(len(batch.captions)):
        values = brightness[i][brightness[i] > 0]
        bright_share = (values > 0.99).float().mean().item()
        texture = TEXTURES[int(batch.texture[i])]
        if texture == "solid":
            assert bright_share == 1.0
        else:
            assert all(v == pytest.approx(DIM) or v == 1.0 for v in values.unique().tolist())
            lit_rows = brightness[i] > 0.99
            if texture == "striped":
                # a stripe is a whole row of the shape at full brightness
                rows = lit_rows.any(1)
                shape_rows = (brightness[i] > 0).any(1)
                assert torch.equal(lit_rows[rows], (brightness[i] > 0)[rows])
                assert 0.2 < bright_share < 0.8 and rows.sum() < shape_rows.sum()
            else:
                assert 0.0 < bright_share < 0.3


def test_shape_masks_have_their_geometry():
    n = 4
    shape = torch.arange(n)
    r = torch.full((n,), 7.0)
    centre = torch.full((n,), 8.0)
    masks = shape_masks(shape, r, centre, centre)  # (4, 16, 16), pixel (y, x)
    circle, square, triangle, cross = masks
    assert circle[8, 8] and not circle[2, 2] and circle[8, 1]
    assert square[3, 3] and square[12, 12] and not square[8, 1]
    assert triangle[14, 2] and triangle[14, 13] and not triangle[2, 2] and not triangle[2, 13]
    assert triangle[2, 8]
    assert cross[8, 1] and cross[1, 8] and not cross[3, 3] and not cross[12, 12]
    # rendered images keep the mask's silhouette
    images = render(shape, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long),
                    torch.Generator().manual_seed(0))
    assert images.shape == (4, 3, 16, 16)


def test_captions_name_the_labels():
    batch = make_batch(200, seed=5)
    phrasings = set()
    for i, text in enumerate(batch.captions):
        words = set(text.replace(",", " ").split())
        assert SHAPES[int(batch.shape[i])] in words
        assert not words & (set(SHAPES) - {SHAPES[int(batch.shape[i])]})
        assert not words & (set(COLOURS) - {COLOURS[int(batch.colour[i])]})
        assert not words & (set(TEXTURES) - {TEXTURES[int(batch.texture[i])]})
        phrasings.add((bool(words & set(COLOURS)), bool(words & set(TEXTURES))))
    assert phrasings == {(True, True), (True, False), (False, True), (False, False)}
    assert caption(0, 0, 1) == "a red circle, striped"


# ---- tokenizer and model files ---------------------------------------------------------------


def test_tokenizer_pads_encodes_empty_prompt_and_flags_unknown_words():
    tok = WordTokenizer()
    ids = tok(["a red circle, striped", "", "a purple circle"])
    assert ids.shape == (3, MAX_LENGTH) and ids.dtype == torch.long
    v = tok.index
    assert ids[0].tolist() == [v[BOS], v["a"], v["red"], v["circle"], v[","], v["striped"], v[EOS], v[PAD]]
    assert ids[1].tolist() == [v[BOS], v[EOS]] + [v[PAD]] * (MAX_LENGTH - 2)
    assert ids[2, 2] == v[UNK] and tok.unknown_words("a purple circle") == ["purple"]


def test_toy_model_file_roundtrip_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    model = new_toy_model()
    path = tmp_path / "m.safetensors"
    save_toy_model(model, path)
    back = read_toy_model(path)
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        ctx = model.text_encoder(model.tokenizer(["a red circle", ""]))
        ref = model.unet(x, t, encoder_hidden_states=ctx).sample
    out = back.unet(x, t, encoder_hidden_states=back.encode(["a red circle", ""])).sample
    assert torch.allclose(ref, out, atol=1e-6)
    assert any(".attn2.to_k." in k for k, _ in back.unet.named_parameters())
    assert not any(".attn2." in k for k, _ in back.unet.down_blocks[0].named_parameters())


def test_reading_a_wrong_file_says_what_to_do(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(FileFormatError, match="not an Unlearn toy model"):
        read_toy_model(path)


# ---- committed assets ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ASSET_NAMES)
def test_assets_match_their_recorded_hashes(name):
    record = recorded_hashes()[name]
    path = ASSETS_DIR / name
    assert path.stat().st_size == record["bytes"] <= 20 * 2**20
    assert sha256(path) == record["sha256"]
    assert asset_path(name, verify=True) == path


def test_judges_are_accurate_on_a_fresh_sample(judges):
    batch = make_batch(600, seed=987_654)
    predicted = judge(batch.images, judges)
    for axis, labels in batch.labels().items():
        acc = (predicted[axis] == labels).float().mean().item()
        assert acc >= 0.98, (axis, acc)
    none = JUDGE_CLASSES["shape"].index(NONE)
    rejects = make_rejects(200, seed=987_655)
    assert (judge(rejects, judges)["shape"] == none).float().mean().item() >= 0.95


def test_untouched_toy_model_generations_are_judged_right(toy_model, judges):
    prompts = all_prompts()  # 48 prompts, every combination once
    images = generate(toy_model, prompts.prompts, seeds=list(range(1000, 1048)), guidance=3.0, steps=20)
    acc = accuracy(judge(images, judges), prompts)
    assert min(acc.values()) >= 0.9, acc


def test_generation_is_reproducible_per_seed(toy_model):
    a = generate(toy_model, ["a red circle, striped", "a blue cross"], seeds=[1, 2], steps=4)
    b = generate(toy_model, ["a blue cross"], seeds=[2], steps=4)
    assert torch.allclose(a[1:], b, atol=1e-5)
    with pytest.raises(ValueError, match="one seed per prompt"):
        generate(toy_model, ["a red circle"], seeds=[1, 2])


def test_tiny_clip_prefers_the_true_caption():
    model, preprocess, tokenizer = load_tiny_clip()
    batch = make_batch(200, seed=4242)
    true = [caption(int(s), int(c), int(t)) for s, c, t in zip(batch.shape, batch.colour, batch.texture)]
    swapped = [caption((int(s) + 1) % 4, int(c), int(t)) for s, c, t in zip(batch.shape, batch.colour, batch.texture)]
    with torch.no_grad():
        img = model.encode_image(preprocess(batch.images), normalize=True)
        s_true = (img * model.encode_text(tokenizer(true), normalize=True)).sum(-1)
        s_swap = (img * model.encode_text(tokenizer(swapped), normalize=True)).sum(-1)
    assert (s_true > s_swap).float().mean().item() >= 0.9


def test_the_tiny_clip_scorer_is_the_tiny_clip():
    """One tiny CLIP: the scorer that the toy evaluation, the demo and the commands' default CLIP
    use is ``load_tiny_clip``'s model, tokenizer and preprocessing (its preprocess takes [0, 1])."""
    model, preprocess, tokenizer = load_tiny_clip()
    scorer = tiny_clip_scorer()
    assert (scorer.arch, scorer.info["image_norm"]) == ("unlearn-toy-clip", "signed")
    ours, theirs = model.state_dict(), scorer.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    texts = ["a red circle, striped", "a blue cross", ""]
    assert torch.equal(tokenizer(texts), scorer.tokenizer(texts))
    images = make_batch(6, seed=7).images
    assert torch.allclose(scorer.preprocess((images + 1) / 2), preprocess(images), atol=1e-6)


def test_kept_loss_report_names_what_the_judge_sees_on_each_kept_value():
    """benchmarks/kept_loss.py's report: per value the set keeps, the judge's classes on the
    captions carrying it ("none" included) and the lost images spread over the other values."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from kept_loss import kept_report

    from unlearn_core.toyworld.evaluate import split_prompts

    ten = ("square", "triangle", "cross", "red", "green", "blue", "yellow", "solid", "striped",
           "dotted")
    labels = split_prompts(ten, 1)[0].labels()
    pred = {axis: value.clone() for axis, value in labels.items()}
    circles = (labels["shape"] == SHAPES.index("circle")).nonzero().flatten()
    yellow = [int(i) for i in circles if int(labels["colour"][i]) == COLOURS.index("yellow")]
    pred["shape"][yellow[0]] = JUDGE_CLASSES["shape"].index(NONE)
    pred["shape"][yellow[1]] = SHAPES.index("square")
    (line,) = kept_report(pred, labels, ten)  # circle is the one value the ten keep
    assert line.startswith(f"  kept 'circle': {len(circles)} images")
    assert f"'circle': {len(circles) - 2}" in line and f"'{NONE}': 1" in line and "'square': 1" in line
    assert "lost 2" in line and "colour {'yellow': 2}" in line
    # a single erased colour keeps every shape and texture: a line each
    assert len(kept_report(labels, labels, ("red",))) == len(SHAPES) + len(TEXTURES) + len(COLOURS) - 1
