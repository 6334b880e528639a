"""Image plumbing for the metrics: PNG in and out, and labelled before | after grids.

Images are float tensors (3, H, W) or (B, 3, H, W) in [0, 1] throughout the core; channels-last
layouts (ComfyUI's IMAGE) are converted only at the node boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Tensor = torch.Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL image."""
    arr = (image.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), "RGB")


def from_pil(img: Image.Image) -> Tensor:
    """PIL image -> (3, H, W) float32 in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def save_png(image: Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)
    return path


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (a folder contributes its images, sorted by name)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def load_image(path: str | Path) -> Tensor:
    """(3, H, W) in [0, 1] from an image file. A file that is not a readable image raises
    ConfigError naming it."""
    from ..errors import ConfigError

    try:
        with Image.open(path) as img:
            return from_pil(img)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # the path's problem, reported as such
    except (OSError, ValueError, SyntaxError) as e:
        # not an image: UnidentifiedImageError (an OSError); truncated data: OSError; some
        # malformed headers: SyntaxError
        raise ConfigError("image", str(path), f"not an image Pillow can read ({e})",
                          f"give image files ({', '.join(IMAGE_SUFFIXES)}), or remove this one") from e


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _upscale(images: Tensor, min_cell: int) -> Tensor:
    """Nearest-neighbour upscale (…, 3, H, W) so the short side is at least ``min_cell``."""
    h, w = images.shape[-2:]
    factor = max(1, -(-min_cell // min(h, w)))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def labelled_grid(
    blocks: Sequence[tuple[str, Tensor]],
    row_labels: Sequence[str],
    column_labels: Sequence[str] | None = None,
    min_cell: int = 64,
    pad: int = 2,
    gap: int = 16,
    font_size: int = 14,
) -> Tensor:
    """Side-by-side blocks of images, rows labelled, e.g. [("before", A), ("after", B)].

    Each block is (R, C, 3, H, W) with the same R (rows, e.g. prompts) and C (columns, e.g. seeds);
    ``column_labels`` (C) label the columns inside each block. Returns (3, H', W') in [0, 1].
    """
    if not blocks:
        raise ValueError("no image blocks to lay out")
    rows, cols = blocks[0][1].shape[:2]
    if any(b.shape[:2] != (rows, cols) for _, b in blocks):
        raise ValueError("all blocks need the same rows and columns")
    if len(row_labels) != rows:
        raise ValueError(f"{rows} rows but {len(row_labels)} row labels")
    cells = [(name, _upscale(b.float().clamp(0, 1).cpu(), min_cell)) for name, b in blocks]
    ch, cw = cells[0][1].shape[-2:]
    font = _font(font_size)
    small = _font(max(8, font_size - 3))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max((probe.textlength(t, font=font) for t in row_labels), default=0)
    label_w = int(min(label_w, 360)) + 2 * gap
    header_h = font_size + 8 + (font_size + 4 if column_labels else 0)
    block_w = cols * (cw + pad) - pad
    width = label_w + len(cells) * block_w + (len(cells) - 1) * gap + gap
    height = header_h + rows * (ch + pad) - pad + gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for b, (name, imgs) in enumerate(cells):
        x0 = label_w + b * (block_w + gap)
        draw.text((x0 + block_w // 2, 4), name, fill=(0, 0, 0), font=font, anchor="mt")
        if column_labels:
            for c, lab in enumerate(column_labels):
                draw.text((x0 + c * (cw + pad) + cw // 2, font_size + 10), str(lab), fill=(90, 90, 90),
                          font=small, anchor="mt")
        for r in range(rows):
            for c in range(cols):
                canvas.paste(to_pil(imgs[r, c]), (x0 + c * (cw + pad), header_h + r * (ch + pad)))
    for r, text in enumerate(row_labels):
        y = header_h + r * (ch + pad) + ch // 2
        while text and draw.textlength(text, font=font) > label_w - gap:
            text = text[:-2] + "…"
        draw.text((gap // 2, y), text, fill=(0, 0, 0), font=font, anchor="lm")
    return from_pil(canvas)
