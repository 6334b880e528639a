"""The toy world's images: procedural, deterministic from a seed, labelled.

Each image is 16x16 RGB in [-1, 1] on a black background and shows one shape (circle, square,
triangle, cross) in one colour (red, green, blue, yellow) with one texture (solid, striped,
dotted), at a random size and position. Textures stand in for "styles": striped = horizontal
stripes of period 4, dotted = one-pixel dots on a period-3 grid; the pixels of the shape that are
not on a stripe or dot are drawn at ``DIM`` of full brightness, so the silhouette stays visible.

Captions name the shape always and the colour and texture usually ("a red circle, striped",
"a striped red circle", "a red circle", "a circle, dotted", "a circle"), so a model trained on
them also learns what a prompt that leaves an axis out means.

``make_rejects`` draws the judge's reject class ("none"): noise, smooth noise, soft blobs and
irregular blobs, i.e. images with no clear shape, such as the untouched model's unconditional
samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .settings import AXES, COLOURS, SHAPES, TEXTURES  # noqa: F401 (AXES: importable from here too)

IMAGE_SIZE = 16
DIM = 0.3  # brightness of a textured shape's pixels between stripes / dots
RADIUS_RANGE = (4.0, 7.5)  # half-size of a shape in pixels
STRIPE_PERIOD = 4
DOT_PERIOD = 3

# RGB in [0, 1]; images are mapped to [-1, 1] with 2x - 1 (black background = -1).
COLOUR_RGB = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}

# (template, probability); {s} shape, {c} colour, {t} texture.
PHRASINGS = (
    ("a {c} {s}, {t}", 0.35),
    ("a {t} {c} {s}", 0.15),
    ("a {c} {s}", 0.2),
    ("a {s}, {t}", 0.15),
    ("a {s}", 0.15),
)


@dataclass(frozen=True)
class ToyBatch:
    """A labelled batch. ``images``: (B, 3, 16, 16) float32 in [-1, 1]; labels: (B,) int64
    indices into ``SHAPES``, ``COLOURS``, ``TEXTURES``; ``captions``: B strings."""

    images: torch.Tensor
    shape: torch.Tensor
    colour: torch.Tensor
    texture: torch.Tensor
    captions: tuple[str, ...]

    def labels(self) -> dict[str, torch.Tensor]:
        return {"shape": self.shape, "colour": self.colour, "texture": self.texture}


def caption(shape: int, colour: int, texture: int, phrasing: int = 0) -> str:
    """The caption of one label triple in one of the ``PHRASINGS`` (0 = "a red circle, striped")."""
    template = PHRASINGS[phrasing][0]
    return template.format(s=SHAPES[shape], c=COLOURS[colour], t=TEXTURES[texture])


def shape_masks(
    shape: torch.Tensor, radius: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor,
    size: int = IMAGE_SIZE,
) -> torch.Tensor:
    """Boolean masks (B, size, size) of the shapes, evaluated at pixel centres (y points down)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords.view(1, size, 1)
    x = coords.view(1, 1, size)
    r = radius.view(-1, 1, 1)
    dx = (x - cx.view(-1, 1, 1)).abs()
    dy_signed = y - cy.view(-1, 1, 1)
    dy = dy_signed.abs()
    circle = dx**2 + dy**2 <= r**2
    half = 0.8 * r
    square = (dx <= half) & (dy <= half)
    # apex up at (cx, cy - r), base at y = cy + r with half-width r
    triangle = (dy <= r) & (dx <= (dy_signed + r) / 2)
    arm = 0.35 * r
    cross = ((dx <= arm) & (dy <= r)) | ((dy <= arm) & (dx <= r))
    stacked = torch.stack([circle, square, triangle, cross], dim=1)  # (B, 4, size, size)
    return stacked.gather(1, shape.view(-1, 1, 1, 1).expand(-1, 1, size, size)).squeeze(1)


def texture_pattern(
    texture: torch.Tensor, phase_x: torch.Tensor, phase_y: torch.Tensor, size: int = IMAGE_SIZE
) -> torch.Tensor:
    """Brightness (B, size, size) in {DIM, 1} of each texture with its random phase."""
    idx = torch.arange(size)
    y = idx.view(1, size, 1)
    x = idx.view(1, 1, size)
    ones = torch.ones(texture.shape[0], size, size)
    stripes = ((y + phase_y.view(-1, 1, 1)) % STRIPE_PERIOD) < STRIPE_PERIOD // 2
    dots = (((x + phase_x.view(-1, 1, 1)) % DOT_PERIOD) == 0) & (
        ((y + phase_y.view(-1, 1, 1)) % DOT_PERIOD) == 0
    )
    striped = torch.where(stripes, 1.0, DIM).expand_as(ones)
    dotted = torch.where(dots, 1.0, DIM).expand_as(ones)
    stacked = torch.stack([ones, striped, dotted], dim=1)
    return stacked.gather(1, texture.view(-1, 1, 1, 1).expand(-1, 1, size, size)).squeeze(1)


def render(
    shape: torch.Tensor,
    colour: torch.Tensor,
    texture: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw images (B, 3, 16, 16) in [-1, 1] for the given labels, with random size, position and
    texture phase from ``generator``."""
    n = shape.shape[0]
    lo, hi = RADIUS_RANGE
    radius = lo + (hi - lo) * torch.rand(n, generator=generator)
    # keep the shape inside the image: centre in [r, size - r]
    cx = radius + (IMAGE_SIZE - 2 * radius) * torch.rand(n, generator=generator)
    cy = radius + (IMAGE_SIZE - 2 * radius) * torch.rand(n, generator=generator)
    phase_x = torch.randint(0, 12, (n,), generator=generator)
    phase_y = torch.randint(0, 12, (n,), generator=generator)
    mask = shape_masks(shape, radius, cx, cy).float()  # (B, H, W)
    brightness = mask * texture_pattern(texture, phase_x, phase_y)  # (B, H, W)
    rgb = torch.tensor([COLOUR_RGB[c] for c in COLOURS])[colour]  # (B, 3)
    image01 = rgb.view(n, 3, 1, 1) * brightness.unsqueeze(1)
    return image01 * 2 - 1


def make_batch(n: int, seed: int | None = None, generator: torch.Generator | None = None) -> ToyBatch:
    """``n`` random labelled images with captions; the same seed gives the same batch.

    Pass either ``seed`` or a ``generator`` (whose state advances, for a stream of batches).
    """
    if generator is None:
        if seed is None:
            raise ValueError("make_batch needs a seed or a generator")
        generator = torch.Generator().manual_seed(seed)
    shape = torch.randint(0, len(SHAPES), (n,), generator=generator)
    colour = torch.randint(0, len(COLOURS), (n,), generator=generator)
    texture = torch.randint(0, len(TEXTURES), (n,), generator=generator)
    probs = torch.tensor([p for _, p in PHRASINGS])
    phrasing = torch.multinomial(probs, n, replacement=True, generator=generator)
    images = render(shape, colour, texture, generator)
    captions = tuple(
        caption(int(s), int(c), int(t), int(p))
        for s, c, t, p in zip(shape, colour, texture, phrasing)
    )
    return ToyBatch(images, shape, colour, texture, captions)


def _smooth_noise(n: int, low: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, 3, low, low, generator=generator)
    return torch.nn.functional.interpolate(
        coarse, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )


def make_rejects(n: int, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (n, 3, 16, 16) in [-1, 1] with no clear shape: the shape judge's "none" class.

    Four kinds in equal parts: white noise, smooth colour noise, 1-3 soft Gaussian blobs in the
    toy colours (the look of the untouched model's unconditional samples), and irregular blobs
    (thresholded smooth noise) in a toy colour.
    """
    if generator is None:
        if seed is None:
            raise ValueError("make_rejects needs a seed or a generator")
        generator = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 4, (n,), generator=generator)
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)

    # white noise around a random mean level
    level = torch.rand(n, 1, 1, 1, generator=generator) * 1.5 - 1
    scale = 0.1 + 0.9 * torch.rand(n, 1, 1, 1, generator=generator)
    noise = (level + scale * torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator))
    # smooth colour noise
    low = int(torch.randint(2, 6, (1,), generator=generator))
    smooth = _smooth_noise(n, low, generator) * 0.8 - 0.3
    # soft blobs: Gaussian bumps, sigma 1.5-4 px, in toy colours
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    y = coords.view(1, 1, IMAGE_SIZE, 1)
    x = coords.view(1, 1, 1, IMAGE_SIZE)
    n_blobs = 3
    bx = torch.rand(n, n_blobs, 1, 1, generator=generator) * IMAGE_SIZE
    by = torch.rand(n, n_blobs, 1, 1, generator=generator) * IMAGE_SIZE
    sigma = 1.5 + 2.5 * torch.rand(n, n_blobs, 1, 1, generator=generator)
    amp = 0.4 + 0.6 * torch.rand(n, n_blobs, 1, 1, generator=generator)
    keep = torch.rand(n, n_blobs, 1, 1, generator=generator) < torch.tensor([1.0, 0.5, 0.3]).view(1, 3, 1, 1)
    bumps = amp * keep * torch.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma**2))  # (n, 3b, H, W)
    palette = torch.tensor([COLOUR_RGB[c] for c in COLOURS])  # (4, 3)
    blob_colour = palette[torch.randint(0, 4, (n, n_blobs), generator=generator)]  # (n, b, 3)
    blobs01 = torch.einsum("nbhw,nbc->nchw", bumps, blob_colour).clamp(0, 1)
    blobs = blobs01 * 2 - 1
    # irregular blobs: thresholded smooth noise, one toy colour
    field = _smooth_noise(n, 4, generator)[:, :1]
    region = (field > 0.6).float()
    irr_colour = palette[torch.randint(0, 4, (n,), generator=generator)].view(n, 3, 1, 1)
    irregular = irr_colour * region * (0.5 + 0.5 * torch.rand(n, 1, 1, 1, generator=generator)) * 2 - 1

    for k, source in enumerate((noise, smooth, blobs, irregular)):
        sel = kind == k
        out[sel] = source[sel]
    return out.clamp(-1, 1)


def corrupt(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Light random corruption for training judges and the tiny CLIP, so they stay right on
    generated images, which are never pixel-perfect: brightness ×[0.75, 1.1], a per-channel
    offset (±0.04 of the [0, 1] range), a partial 3x3 blur on 30% of images, Gaussian noise
    (std up to 0.12). images (B, 3, 16, 16) in [-1, 1] → same shape, clamped to [-1, 1]."""
    g = generator
    n = images.shape[0]
    x01 = (images + 1) / 2
    x01 = x01 * (0.75 + 0.35 * torch.rand(n, 1, 1, 1, generator=g))
    x01 = x01 + 0.08 * (torch.rand(n, 3, 1, 1, generator=g) - 0.5)
    x = x01 * 2 - 1
    blur_amount = torch.rand(n, 1, 1, 1, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) < 0.3)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    blurred = torch.nn.functional.conv2d(padded, kernel.expand(3, 1, 3, 3), groups=3)
    x = x + 0.7 * blur_amount * (blurred - x)
    x = x + 0.12 * torch.rand(n, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(-1, 1)
