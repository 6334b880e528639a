"""The toy world's captions around a concept: what the engine erases a concept inside, what it
holds, and the phrasings an erasure is measured on.

- ``context_pairs(concept)``: (caption naming the concept, the same caption without it), for every
  caption of the toy model's own grammar (``dataset.PHRASINGS``) that names the concept, the other
  attributes taken over the whole vocabulary. The engine pulls each caption's prediction to its
  anchor's (``Conditioning.contexts``), so the concept is erased where users write it: inside
  captions, not only alone. A concept the model draws by default (``erasure.default_values``)
  still shows in a caption without it, so wherever such a concept of the run is in a caption,
  the anchor names one other value of its kind in its place (chosen by the caption, so the
  values share the captions); so does a value of a kind the run erases wholly that its own
  target draws (``erasure.self_drawn_values``: solid among every texture), another value of its
  kind, erased too, in its place.
- ``neighbours(concepts)``: the same captions with the concept replaced by each other value of its
  kind (a colour by the other colours, ...), minus any caption naming an erased concept: the
  prompts held to the base model (``retain_prompts``), so erasing "red" does not move "blue".
- ``EVAL_PHRASINGS``: the phrasings an erasure is measured on, per phrasing and caption length;
  the last ones (other word orders, the longest captions the tokenizer reads) are never trained.

One rule for every concept: a concept's kind comes from the vocabulary, nothing is set per
concept.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence

from .dataset import PHRASINGS
from .settings import AXES, VOCABULARY

_SLOT = {"shape": "s", "colour": "c", "texture": "t"}
_VALUES = {"s": "shape", "c": "colour", "t": "texture"}

TRAINED_PHRASINGS: tuple[str, ...] = tuple(p for p, _ in PHRASINGS)
# Held out from training: other word orders and the longest captions (6 words, the most the toy
# tokenizer reads).
HELD_OUT_PHRASINGS: tuple[str, ...] = (
    "a {s}, {c}, {t}", "a {s}, {t}, {c}", "a {c} {t} {s}", "a {s}, {c} {t}", "a {s}, {c}",
)
EVAL_PHRASINGS: tuple[str, ...] = TRAINED_PHRASINGS + HELD_OUT_PHRASINGS


def axis_of(concept: str) -> str:
    for axis, values in AXES.items():
        if concept in values:
            return axis
    from ..errors import ConfigError

    words = ", ".join(VOCABULARY)
    raise ConfigError("concepts", concept, "not a toy-world concept", f"use one of: {words}")


def tidy(text: str) -> str:
    """Normalise spaces and commas after a word was removed: "a , striped" -> "a, striped"."""
    out: list[str] = []
    for w in text.replace(",", " , ").split():
        if w == "," and (not out or out[-1] == ","):
            continue
        out.append(w)
    while out and out[-1] == ",":
        out.pop()
    return " ".join(out).replace(" ,", ",")


def fill(phrasing: str, concept: str) -> list[str]:
    """Every caption of ``phrasing`` that names ``concept`` (others over the whole vocabulary);
    none if the phrasing has no slot for the concept's kind."""
    slot = _SLOT[axis_of(concept)]
    if "{" + slot + "}" not in phrasing:
        return []
    others = [k for k in "sct" if k != slot and "{" + k + "}" in phrasing]
    out = []
    for values in itertools.product(*(AXES[_VALUES[k]] for k in others)):
        out.append(phrasing.format(**dict(zip(others, values)), **{slot: concept}))
    return out


def captions(concept: str, phrasings: Sequence[str] = TRAINED_PHRASINGS) -> list[str]:
    """Every caption of ``phrasings`` that names ``concept``, phrasing by phrasing."""
    return [caption for phrasing in phrasings for caption in fill(phrasing, concept)]


def _words(text: str) -> list[str]:
    return text.replace(",", " , ").split()


def swapped(caption: str, concept: str, value: str) -> str:
    """``caption`` with the word ``concept`` replaced by ``value``."""
    return tidy(" ".join(value if w == concept else w for w in _words(caption)))


def anchor(caption: str, erased: Sequence[str], defaults: Sequence[str] = (),
           swapped: Sequence[str] = ()) -> str:
    """``caption`` with no ``erased`` concept in it: each is left out, except

    - one the model draws by default (``defaults``, ``erasure.default_values``), which a caption
      without it still shows: replaced by another value of its kind that is not erased ("a red
      circle" -> "a red square" for circle, "a square" for circle and red erased together);
      left out where every other value of its kind is erased;
    - one of ``swapped`` (``erasure.self_drawn_values``: a value of a wholly erased kind that its
      own target draws): replaced by another value of its kind, erased too -- the target is the
      frozen base model's prediction for that caption.

    The replacement is chosen by a hash of the caption, so that the values share the captions."""
    gone = {*erased, *defaults, *swapped}
    words = []
    for word in _words(caption):
        if word in gone:
            kind = AXES[axis_of(word)]
            if word in swapped:
                others = [v for v in kind if v != word]
            elif word in defaults:
                others = [v for v in kind if v not in gone]
            else:
                others = []
            if others:
                words.append(others[zlib.crc32(caption.encode()) % len(others)])
            continue
        words.append(word)
    return tidy(" ".join(words))


def context_pairs(concept: str, phrasings: Sequence[str] = TRAINED_PHRASINGS,
                  erased: Sequence[str] = (), defaults: Sequence[str] = (),
                  swapped: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(caption, its ``anchor``) for every caption of ``phrasings`` naming ``concept``: the
    anchor leaves out the concept and the other ``erased`` concepts the caption names (the target
    is a caption none of them is in). Where one of them is in ``defaults`` -- the concept itself,
    or another concept of the run the caption names -- the anchor names another value of its
    kind in its place: pulling one caption to several values at once averaged their predictions
    and erased more slowly (BENCHMARKS.md §5m), and leaving a default value out keeps it in the
    target (§5q). Where one is in ``swapped``, the anchor names another value of its kind, erased
    too: left out, the target would draw that value itself (§5v)."""
    gone = (concept, *erased)
    return [(caption, anchor(caption, gone, defaults, swapped))
            for caption in captions(concept, phrasings)]


def neighbours(concepts: Sequence[str], phrasings: Sequence[str] = TRAINED_PHRASINGS,
               erased: Sequence[str] = ()) -> tuple[str, ...]:
    """Captions of the concepts' contexts with each concept replaced by another value of its kind,
    without any caption that names one of ``concepts`` or of ``erased`` (the other concepts of the
    same run: a caption naming one of them, held to the base model, would hold that concept
    too -- BENCHMARKS.md §5p). Empty when every other value of their kinds is erased."""
    gone = {*concepts, *erased}
    out: set[str] = set()
    for concept in concepts:
        for caption in captions(concept, phrasings):
            for value in AXES[axis_of(concept)]:
                other = swapped(caption, concept, value)
                if value != concept and not set(_words(other)) & gone:
                    out.add(other)
    return tuple(sorted(out))


def caption_length(caption: str) -> int:
    """Words the toy tokenizer reads (a comma is a word)."""
    return len(_words(caption))


def efficacy_by_phrasing(model, judges, concepts: Sequence[str], erasure=None, repeats: int = 1,
                         seed: int = 30_000, steps: int = 20,
                         phrasings: Sequence[str] = EVAL_PHRASINGS,
                         min_images: int = 12) -> dict[str, dict]:
    """Efficacy of ``erasure`` (None = the untouched model) per phrasing and per caption length:
    {"phrasing": {template: rate}, "length": {words: rate}, "n": {template: images}}. Every
    caption of each phrasing that names an erased concept, ``repeats`` images each and more where
    a phrasing has few captions, so that each phrasing is judged on at least ``min_images``
    images ("a circle" is one caption: one image would make its rate 0 or 1 by chance). The same
    noise for every model (image i has seed ``seed + i``)."""
    import contextlib

    import torch

    from ..denoiser import DiffusersDenoiser
    from .generation import generate
    from .judges import judge

    items: list[tuple[str, str, str]] = []  # (phrasing, caption, concept)
    for phrasing in phrasings:
        captions = [(caption, concept) for concept in concepts for caption in fill(phrasing, concept)]
        times = max(repeats, -(-min_images // len(captions))) if captions else 0
        for caption, concept in captions:
            items += [(phrasing, caption, concept)] * times
    ctx = (erasure.applied(DiffusersDenoiser(model.unet, model.alphas_cumprod))
           if erasure is not None else contextlib.nullcontext())
    with ctx, torch.no_grad():
        images = generate(model, [c for _, c, _ in items], [seed + i for i in range(len(items))],
                          steps=steps)
    pred = judge(images, judges)
    hits: dict[str, list[int]] = {}
    by_length: dict[int, list[int]] = {}
    for i, (phrasing, caption, concept) in enumerate(items):
        axis = axis_of(concept)
        still = int(pred[axis][i]) == AXES[axis].index(concept)
        hits.setdefault(phrasing, []).append(still)
        by_length.setdefault(caption_length(caption), []).append(still)
    return {
        "phrasing": {p: sum(v) / len(v) for p, v in hits.items()},
        "length": {n: sum(v) / len(v) for n, v in sorted(by_length.items())},
        "n": {p: len(v) for p, v in hits.items()},
    }
