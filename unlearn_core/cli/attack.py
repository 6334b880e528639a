"""``unlearn attack``: red-team an erasure -- try to bring the erased concept back -- on the toy
world by default, or on a local diffusers-format SD-1.x folder.

    unlearn attack --concept cross                                # toy: erase by UCE, attack it
    unlearn attack --concept cross --method train --robust adversarial --kind prompt_attack
    unlearn attack --concept cross --erasure cross.safetensors --output out/
    unlearn attack --model ~/sd-v1-4 --erasure vangogh.safetensors --concept "Van Gogh" \\
        --clip-arch ViT-L-14 --clip-weights ~/clip/ViT-L-14.safetensors --threshold 25

Without ``--erasure`` the toy world erases the concept first (``--method uce``: closed form;
``train``: the toy world's SDD settings; ``none``: attack the untouched model). On SD the attacked
images are scored by CLIP against ``--threshold``; the toy world's judges decide by default.
``--images`` gives your own pictures of the concept as the targets instead of the base model's.
Prints the attack success rate (ASR) with its 95% interval; ``--output`` writes
``attack_images.png``, ``attack.json`` and ``attack.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..attacks.config import KINDS, AttackConfig
from ..devices import DEVICE_HELP, check_device, resolve_device
from ..errors import ConfigError
from ..threads import THREADS_HELP, check_threads
from .common import (
    add_clip_arguments,
    check_sources,
    erase_in_world,
    load_clip_from_args,
    load_erasure_file,
    load_world,
    with_progress,
)

TOY_DEFAULTS = "toy world: guidance 3, 10 sampling steps, 16 seeds and targets, batch 8"


def _help(name: str) -> str:
    return {f.name: f for f in dataclasses.fields(AttackConfig)}[name].metadata["help"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concept", required=True, help=_help("concept"))
    p.add_argument("--kind", default="concept_inversion", choices=KINDS, help=_help("kind"))
    p.add_argument("--model", default=None, help="local diffusers-format SD-1.x folder; default: "
                   "the toy world's model")
    p.add_argument("--erasure", default=None, help="the erasure to attack: a LoRA/diff "
                   ".safetensors file written by `unlearn erase` (toy world: optional)")
    p.add_argument("--method", default="uce", choices=("uce", "train", "none"),
                   help="toy world without --erasure: how to erase the concept first (none: "
                   "attack the untouched model)")
    p.add_argument("--robust", default="none", choices=("none", "adversarial"),
                   help="toy world, --method train: erase with robust=adversarial")
    p.add_argument("--erase-steps", type=int, default=None,
                   help="toy world, --method train: training steps")
    for f in dataclasses.fields(AttackConfig):
        if f.name in ("concept", "kind"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = ", ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                       type=None if isinstance(f.default, tuple) else type(f.default),
                       help=f"{_help(f.name)} (default: {default}; {TOY_DEFAULTS})")
    p.add_argument("--images", nargs="+", default=None,
                   help="your own images of the concept (files or folders) as the attack's "
                   "targets, instead of the base model's")
    p.add_argument("--scorer", default="auto", choices=("auto", "judge", "clip"),
                   help="success judge: the toy judges' confidence, or CLIP score (SD: always)")
    add_clip_arguments(p)
    p.add_argument("--resolution", type=int, default=512, help="SD: image size in pixels")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + "; the toy world runs on the CPU")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("--output", default=None, help="folder for the images and the JSON/markdown")


def _target_latents(paths, world, toy: bool):
    import torch

    from ..metrics.clip_score import resize_center_crop
    from ..metrics.images import image_files, load_image

    files = image_files(paths)
    missing = [str(p) for p in files if not p.is_file()]
    if missing or not files:
        raise ConfigError("--images", missing[:3] or list(paths), "no such image files",
                          "give image files or folders that hold images")
    size = world.latent_shape[1] * (1 if toy else 8)
    images = torch.cat([resize_center_crop(load_image(p)[None], (size, size)) for p in files])
    if toy:
        from ..metrics.generation import signed_from_unit

        return signed_from_unit(images)
    return world.encode_images(images)


def run(args: argparse.Namespace) -> int:
    from ..attacks.core import attack

    toy = args.model is None
    config = _checked_config(args, toy)
    device = resolve_device(args.device)
    world = load_world(args, device)
    denoiser = world.denoiser

    if args.erasure is not None:
        erased = load_erasure_file(args.erasure, denoiser)
    elif args.method == "none":
        erased = denoiser
    else:
        settings = {"steps": args.erase_steps} if args.erase_steps else {}
        if args.robust != "none":
            settings["robust"] = args.robust
        erased = erase_in_world(world, config.concept.split()[-1], args.method,
                                label=config.concept, **settings)
    scorer = _scorer(args, toy, config.concept, device)
    targets = _target_latents(args.images, world, toy) if args.images else None
    emb = world.encode([config.concept, ""])
    result = with_progress(config.kind, lambda progress: attack(
        denoiser, erased, emb[:1], emb[1:], scorer, config, world.decode, world.latent_shape,
        targets=targets, on_progress=progress))
    print(result.summary())
    if args.output:
        _write(result, config, Path(args.output))
    return 0


def _checked_config(args: argparse.Namespace, toy: bool) -> AttackConfig:
    """The attack's config and every check of the flags, before anything loads."""
    check_threads(args.threads)
    check_device(args.device)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(AttackConfig)
              if f.name not in ("concept", "kind") and hasattr(args, f.name)}
    if toy:
        from ..toyworld.attacks import TOY_ATTACK, TOY_KIND

        values = TOY_ATTACK | TOY_KIND[args.kind] | values
    config = AttackConfig(concept=args.concept, kind=args.kind, **values)  # checked first
    check_sources(args, toy, "attack", "the attack's success needs a separate CLIP model",
                  "give --clip-arch and --clip-weights (and --threshold)",
                  {"--concept": [config.concept]})
    if args.erase_steps is not None and args.erase_steps < 1:
        raise ConfigError("--erase-steps", args.erase_steps, "must be 1 or more",
                          "give a positive number of steps")
    if args.robust != "none" and (not toy or args.method != "train" or args.erasure):
        raise ConfigError("--robust", args.robust, "only the toy world's own training erasure "
                          "(--method train, no --erasure) can be made robust here",
                          "erase with `unlearn erase --robust adversarial` and pass --erasure")
    if args.images:
        from ..metrics.images import image_files

        files = image_files(args.images)
        missing = [str(p) for p in files if not p.is_file()]
        if missing or not files:
            raise ConfigError("--images", missing[:3] or args.images, "no such image files",
                              "give image files or folders that hold images")
    return config


def _scorer(args: argparse.Namespace, toy: bool, concept: str, device: str):
    """CLIP score on SD-1.x or with --scorer clip; else the toy judges' confidence."""
    if args.scorer == "clip" or not toy:
        from ..metrics.scorers import ClipScorer

        return ClipScorer(load_clip_from_args(args, device), args.template)
    from ..toyworld.world import toy_judge_scorer

    scorer = toy_judge_scorer()
    if not scorer.understands(concept):
        raise ConfigError("--concept", concept, "the toy judges know shapes, colours "
                          "and textures, and the concept names none",
                          "name one, or use --scorer clip with a --threshold on CLIP scores")
    return scorer


def _write(result, config: AttackConfig, out: Path) -> None:
    from ..metrics.images import labelled_grid, save_png

    grid = labelled_grid([(f"{config.kind}: {config.concept}", result.images[None])],
                         [f"ASR {result.asr:.2f}"],
                         [f"#{i}" for i in range(result.images.shape[0])])
    save_png(grid, out / "attack_images.png")
    (out / "attack.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out / "attack.md").write_text(result.summary() + "\n\n![images](attack_images.png)\n")
    print(f"wrote {out}/attack_images.png, attack.json, attack.md", file=sys.stderr)
