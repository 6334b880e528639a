"""``unlearn score``: CLIP score of images on disk against a prompt, and optionally the CLIP
directional similarity of before/after pairs. Offline: the CLIP model is a local file (default:
the toy world's tiny CLIP).

    unlearn score out/*.png --prompt "a painting by Van Gogh" \\
        --clip-arch ViT-L-14 --clip-weights ~/models/clip/ViT-L-14.safetensors
    unlearn score after/ --before before/ --source "a cross" --target "a shape" --prompt "a cross"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..devices import DEVICE_HELP, check_device, resolve_device
from ..errors import ConfigError
from .common import add_clip_arguments, load_clip_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files or folders (their images, by name)")
    p.add_argument("--prompt", default=None, help="the prompt every image is scored against")
    p.add_argument("--prompt-file", default=None,
                   help="text file with one prompt per image, in the order of the images")
    p.add_argument("--before", nargs="+", default=None,
                   help="images before the change, paired in order with IMAGES: adds the CLIP "
                   "directional similarity (needs --source and --target)")
    p.add_argument("--source", default=None, help="directional similarity: the text before (e.g. "
                   "the erased concept)")
    p.add_argument("--target", default=None, help="directional similarity: the text after (e.g. "
                   'what the concept should become; "" for the empty prompt)')
    add_clip_arguments(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per CLIP batch")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--json", default=None, help="also write the scores to this JSON file")


def _load_batch(paths: list[Path], size: tuple[int, int]):
    import torch

    from ..metrics.clip_score import resize_center_crop
    from ..metrics.images import load_image

    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ConfigError("images", missing[:3], f"{len(missing)} image files do not exist",
                          "check the paths")
    # Resize each to the model's input size first, so images of different sizes batch together.
    return torch.cat([resize_center_crop(load_image(p)[None], size) for p in paths])


def run(args: argparse.Namespace) -> int:
    from ..metrics.clip_score import check_template, clip_score
    from ..metrics.images import image_files

    check_device(args.device)
    check_template(args.template)
    if args.batch_size < 1:
        raise ConfigError("--batch-size", args.batch_size, "must be 1 or more", "give a positive count")
    paths = image_files(args.images)
    if not paths:
        raise ConfigError("images", args.images, "no image files found", "give image files or folders")
    if (args.prompt is None) == (args.prompt_file is None):
        raise ConfigError("--prompt", args.prompt, "give exactly one of --prompt and --prompt-file",
                          "score all images against one --prompt, or one line each in --prompt-file")
    if args.prompt is not None:
        prompts = [args.prompt] * len(paths)
    else:
        if not Path(args.prompt_file).is_file():
            raise ConfigError("--prompt-file", args.prompt_file, "the file does not exist",
                              "give a text file with one prompt per line")
        prompts = [line.strip() for line in Path(args.prompt_file).read_text().splitlines() if line.strip()]
        if len(prompts) != len(paths):
            raise ConfigError("--prompt-file", len(prompts), f"{len(paths)} images need as many prompts",
                              "write one prompt per line, one line per image")
    before_paths = image_files(args.before) if args.before else None
    if before_paths is not None:
        if args.source is None or args.target is None:
            raise ConfigError("--source", args.source, "directional similarity needs --source and --target",
                              "give both texts")
        if len(before_paths) != len(paths):
            raise ConfigError("--before", len(before_paths), f"{len(paths)} images need as many "
                              "before images", "pair every image with its before image")
    clip = load_clip_from_args(args, resolve_device(args.device))
    size = tuple(clip.info["image_size"])
    images = _load_batch(paths, size)
    scores = clip_score(clip, images, prompts, args.template, args.batch_size)
    out = {"clip_arch": clip.arch, "clip_weights": clip.weights, "template": args.template,
           "images": [str(p) for p in paths], "clip_score": scores.to_dict()}
    print(scores.table([p.name for p in paths]))
    if before_paths is not None:
        from ..metrics.directional import directional_similarity

        before = _load_batch(before_paths, size)
        ds = directional_similarity(clip, before, images, args.source, args.target, args.template,
                                    args.batch_size)
        out["directional_similarity"] = ds.to_dict()
        out["before_images"] = [str(p) for p in before_paths]
        print(f"\nCLIP directional similarity ({args.source!r} -> {args.target!r}): mean "
              f"{ds.mean:.4f} over {len(paths)} pairs")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
