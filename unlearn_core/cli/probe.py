"""``unlearn probe``: the partial-diffusion probe of an erasure, on the toy world by default or on a
local diffusers-format SD-1.x folder; optionally the before/after report too.

    unlearn probe --concept cross                      # toy world: erase "cross" by UCE, probe it
    unlearn probe --concept cross --method train --retained "a red circle" --output out/
    unlearn probe --model ~/sd-v1-4 --erasure vangogh.safetensors --concept "Van Gogh" \\
        --clip-arch ViT-L-14 --clip-weights ~/clip/ViT-L-14.safetensors --output out/

Without ``--erasure`` the toy world erases the concept itself first (``--method uce``: closed form,
seconds; ``train``: short-run SDD, about a minute). Outputs: the curve and the CCS-style score on
stdout; with ``--output``, ``probe_curve.png``, ``probe_images.png``, ``probe.json``, ``probe.md``
(and ``report_*`` with ``--retained``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..devices import DEVICE_HELP, check_device, resolve_device
from ..errors import ConfigError
from ..metrics.config import ProbeConfig, ReportConfig
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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concept", required=True, help=_help("concept"))
    p.add_argument("--model", default=None, help="local diffusers-format SD-1.x folder; default: "
                   "the toy world's model")
    p.add_argument("--erasure", default=None, help="the erasure to probe: a LoRA/diff .safetensors "
                   "file written by `unlearn erase` (toy world: optional)")
    p.add_argument("--method", default="uce", choices=("uce", "train"),
                   help="toy world without --erasure: how to erase the concept first")
    p.add_argument("--steps", type=int, default=None, help="toy world, --method train: training steps")
    for f in dataclasses.fields(ProbeConfig):
        if f.name == "concept":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = ", ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        if f.name == "guidance":
            default += "; toy world: 3"
        # SUPPRESS: an unset flag leaves the config's own default (and its help shows it once).
        p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                       type=None if isinstance(f.default, tuple) else type(f.default),
                       help=f"{_help(f.name)} (default: {default})")
    p.add_argument("--scorer", default="auto", choices=("auto", "judge", "clip"),
                   help="presence score: the toy judges' confidence in what the prompt names (toy "
                   "world: shape, colour, texture) or CLIP score against the prompt; auto picks "
                   "the judges where they know the concept")
    add_clip_arguments(p)
    p.add_argument("--retained", action="append", default=None,
                   help="also write the before/after report, with this retained prompt (repeat)")
    p.add_argument("--resolution", type=int, default=512, help="SD: image size in pixels")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + "; the toy world runs on the CPU")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument("--output", default=None, help="folder for the images and the JSON/markdown")


def _help(name: str) -> str:
    return {f.name: f for f in dataclasses.fields(ProbeConfig)}[name].metadata["help"]


def run(args: argparse.Namespace) -> int:
    import torch

    from ..metrics.probe import partial_diffusion_probe

    check_threads(args.threads)
    check_device(args.device)
    toy = args.model is None
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ProbeConfig)
              if f.name != "concept" and getattr(args, f.name, None) is not None}
    if toy:
        from ..toyworld.world import TOY_GUIDANCE

        values.setdefault("guidance", TOY_GUIDANCE)
    config = ProbeConfig(concept=args.concept, **values)  # checked before anything loads
    check_sources(args, toy, "probe", "the probe needs a separate CLIP model",
                  "give --clip-arch and --clip-weights",
                  {"--concept": [config.concept], "--retained": args.retained or []})
    device = resolve_device(args.device)
    world = load_world(args, device)
    encode, decode, latent_shape = world.encode, world.decode, world.latent_shape
    denoiser = world.denoiser

    if args.erasure is not None:
        erased = load_erasure_file(args.erasure, denoiser)
    else:
        settings = {"steps": args.steps} if args.steps and args.method == "train" else {}
        erased = erase_in_world(world, config.concept, args.method, **settings)
    scorer = _scorer(args, toy, config.concept, device)
    emb = encode([config.concept, ""])
    result = with_progress("probe", lambda progress: partial_diffusion_probe(
        denoiser, erased, emb[:1], emb[1:], scorer, config, decode, latent_shape,
        on_progress=progress))
    print(result.markdown())
    if args.output:
        _write(result, Path(args.output))
    if args.retained:
        from ..metrics.report import build_report

        rconf = ReportConfig(erased_prompts=(config.concept,), retained_prompts=tuple(args.retained),
                             seeds=config.seeds, guidance=config.guidance,
                             sampling_steps=config.sampling_steps, strength=config.strength,
                             batch_size=config.batch_size)
        with torch.no_grad():
            report = build_report(denoiser, erased, encode, decode, latent_shape, scorer, rconf)
        print(report.markdown())
        if args.output:
            paths = report.save(args.output)
            print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def _scorer(args: argparse.Namespace, toy: bool, concept: str, device: str):
    """CLIP score (SD, or --scorer clip, or a concept the toy judges do not know under auto), or
    the toy judges' confidence."""
    from ..metrics.scorers import ClipScorer

    if args.scorer == "clip" or (args.scorer == "auto" and not toy):
        return ClipScorer(load_clip_from_args(args, device), args.template)
    from ..toyworld.world import toy_judge_scorer

    scorer = toy_judge_scorer()
    if scorer.understands(concept):
        return scorer
    if args.scorer == "judge":
        raise ConfigError("--concept", concept, "the toy judges know shapes, colours "
                          "and textures, and the concept names none", "name one, or use "
                          "--scorer clip")
    return ClipScorer(load_clip_from_args(args, device), args.template)


def _write(result, out: Path) -> None:
    from ..metrics.images import save_png

    save_png(result.plot(), out / "probe_curve.png")
    save_png(result.grid(), out / "probe_images.png")
    (out / "probe.json").write_text(json.dumps(result.to_dict(), indent=2))
    (out / "probe.md").write_text(result.markdown() + "\n\n![curve](probe_curve.png)\n\n"
                                  "![images](probe_images.png)\n")
    print(f"wrote {out}/probe_curve.png, probe_images.png, probe.json, probe.md", file=sys.stderr)
