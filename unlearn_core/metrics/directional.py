"""CLIP directional similarity (Gal et al. 2021, StyleGAN-NADA, https://arxiv.org/abs/2108.00946;
as "Towards robust concept erasure in diffusion models" reports it for erasures):

    DS = cos(E_img(after) - E_img(before), E_txt(target) - E_txt(source))

with every embedding unit-normalised before the differences. DS is in [-1, 1]: positive when the
change from ``before`` to ``after`` moves the image the way the text moves from ``source`` to
``target``. For an erasure, source = the concept prompt and target = what it should become (e.g.
the empty prompt, or a replacement such as "a painting"): higher is better. An unchanged image
(after == before) has no direction and scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .clip_score import DEFAULT_TEMPLATE, ClipModel, _per_image_prompts, check_images

Tensor = torch.Tensor


def directional_similarity_from_embeddings(
    image_before: Tensor, image_after: Tensor, text_source: Tensor, text_target: Tensor
) -> Tensor:
    """Per pair cos(n(a) - n(b), n(t) - n(s)), n = unit-normalise. Images (B, E); texts (B, E) or
    (E,). Returns (B,) in [-1, 1]; 0 where either difference is zero."""
    img_b = F.normalize(image_before.double(), dim=-1)
    img_a = F.normalize(image_after.double(), dim=-1)
    txt_s = F.normalize(text_source.double(), dim=-1).expand_as(img_b)
    txt_t = F.normalize(text_target.double(), dim=-1).expand_as(img_b)
    d_img = img_a - img_b  # (B, E)
    d_txt = txt_t - txt_s  # (B, E)
    return F.cosine_similarity(d_img, d_txt, dim=-1, eps=1e-12).to(image_before.dtype)


@dataclass(frozen=True)
class DirectionalScores:
    """Directional similarity per (before, after) pair (B,) and the mean."""

    per_pair: Tensor
    mean: float
    source: tuple[str, ...]
    target: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"per_pair": [round(float(s), 5) for s in self.per_pair], "mean": self.mean,
                "source": list(self.source), "target": list(self.target)}


def directional_similarity(
    clip: ClipModel,
    before: Tensor,
    after: Tensor,
    source: str | Sequence[str],
    target: str | Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 32,
) -> DirectionalScores:
    """Directional similarity of image pairs: before/after (B, 3, H, W) in [0, 1], pair i made
    from the same seed; ``source``/``target`` one prompt for all or one per pair."""
    check_images(before, "before")
    check_images(after, "after")
    if before.shape != after.shape:
        raise ConfigError("after", tuple(after.shape), f"before is {tuple(before.shape)}: the two "
                          "image batches must pair up one to one",
                          "give the same number of images, same size, in the same order")
    n = before.shape[0]
    src = _per_image_prompts(source, n, template)
    tgt = _per_image_prompts(target, n, template)
    unique = list(dict.fromkeys(src + tgt))
    emb = clip.encode_texts(unique)
    idx = {t: i for i, t in enumerate(unique)}
    e_src = emb[torch.tensor([idx[t] for t in src], dtype=torch.long)]
    e_tgt = emb[torch.tensor([idx[t] for t in tgt], dtype=torch.long)]
    e_before = clip.encode_images(before, batch_size)
    e_after = clip.encode_images(after, batch_size)
    scores = directional_similarity_from_embeddings(e_before, e_after, e_src, e_tgt).cpu()
    mean = float(scores.mean())
    return DirectionalScores(per_pair=scores, mean=mean, source=tuple(src), target=tuple(tgt))
