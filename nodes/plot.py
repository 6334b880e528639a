"""The loss history as a picture (the Erase nodes' ``loss_plot`` IMAGE output).

An IMAGE, not a STRING: stock ComfyUI can show an image (Preview Image) but has no node that shows
text. Drawn with Pillow (no plotting library at run time). The raw loss is drawn faint, its
moving average dark -- the curve and scale of ``metrics.plots.loss_curve``, as in the report; the
title says the step count and the first/last/lowest values. A low loss is no proof of erasure:
judge by the before/after images and the measuring nodes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..unlearn_core.metrics.plots import loss_curve

WIDTH, HEIGHT = 512, 256
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 12, 28, 24


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def loss_plot(history: Sequence[float], title: str = "loss") -> torch.Tensor:
    """IMAGE tensor (1, HEIGHT, WIDTH, 3) float32 in [0, 1]: the loss against the step.

    Log scale when every value is positive and they span more than a factor of 20.
    """
    img = Image.new("RGB", (WIDTH, HEIGHT), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    curve = loss_curve(history)  # the values, their moving average and the scale: as the report's
    values = curve.values
    left, right = MARGIN_L, WIDTH - MARGIN_R
    top, bottom = MARGIN_T, HEIGHT - MARGIN_B
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not values:
        draw.text((8, 6), f"{title}: no training loss (closed-form edit)", fill=(20, 20, 20),
                  font=font)
        return _to_image(img)
    log_scale = curve.log_scale

    def scaled(v: float) -> float:
        return math.log10(v) if log_scale else v

    ys = [scaled(v) for v in values]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5

    def point(i: int, y: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, len(ys) - 1))
        return x, bottom - (bottom - top) * (y - lo) / (hi - lo)

    raw = [point(i, y) for i, y in enumerate(ys)]
    avg = [point(i + curve.window - 1, scaled(float(m))) for i, m in enumerate(curve.mean)]
    if len(raw) == 1:
        x, y = raw[0]
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 90, 200))
    else:
        draw.line(raw, fill=(170, 195, 235), width=1)
        if len(avg) > 1:
            draw.line(avg, fill=(30, 90, 200), width=2)
    label_hi = _fmt(10**hi if log_scale else hi)
    label_lo = _fmt(10**lo if log_scale else lo)
    draw.text((4, top - 4), label_hi, fill=(60, 60, 60), font=font)
    draw.text((4, bottom - 8), label_lo, fill=(60, 60, 60), font=font)
    draw.text((left, bottom + 6), "step 1", fill=(60, 60, 60), font=font)
    draw.text((right - 60, bottom + 6), f"step {len(values)}", fill=(60, 60, 60), font=font)
    head = (f"{title}: {len(values)} steps, first {_fmt(values[0])}, last {_fmt(values[-1])}, "
            f"min {_fmt(min(values))}{'  (log scale)' if log_scale else ''}")
    draw.text((8, 6), head, fill=(20, 20, 20), font=font)
    return _to_image(img)


def _to_image(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(array.copy()).unsqueeze(0)
