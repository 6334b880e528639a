"""``unlearn demo``: erase one concept from the embedded toy model and show before/after.

Runs offline on the CPU with the committed toy model, judges and tiny CLIP. Writes ``grid.png``
(rows = prompts, columns = seeds; before | after; erased prompts first, then retained prompts) and
``summary.json`` into ``--out``, and prints efficacy, retention and CLIP scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from ..errors import ConfigError, OutputExistsError
from .erasure import TOY_SETTINGS, erase_toy, toy_config
from .evaluate import concept_axis, evaluate, retention_ratio, uncond_rate

GRID_SEEDS = (0, 1, 2)
# Evaluation sizes: 24 generations of erased prompts, 36 of retained ones, 48 unconditional.
EVAL = dict(repeats=2, retained_repeats=1)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concept", default="cross", help="toy concept to erase (a shape, colour or "
                   "texture word, e.g. cross, circle, red, striped)")
    p.add_argument("--loss", default="l2", help="l2, jensen_shannon, cramer_wold, "
                   "jensen_shannon_gaussian")
    p.add_argument("--objective", default="sdd", help="sdd or esd")
    p.add_argument("--method", default="train", help="train or uce")
    p.add_argument("--steps", type=int, default=TOY_SETTINGS["steps"], help="training steps")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", type=Path, default=Path("unlearn-demo"), help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace grid.png/summary.json in --out if they exist")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")


def _grid(model, erasure, erased_prompts, retained_prompts) -> torch.Tensor:
    from ..metrics.images import labelled_grid
    from .erasure import toy_denoiser
    from .generation import generate

    prompts = list(erased_prompts) + list(retained_prompts)
    flat = [p for p in prompts for _ in GRID_SEEDS]
    seeds = [s for _ in prompts for s in GRID_SEEDS]
    before = generate(model, flat, seeds)
    with erasure.applied(toy_denoiser(model)):
        after = generate(model, flat, seeds)

    def block(x: torch.Tensor) -> torch.Tensor:
        return ((x.clamp(-1, 1) + 1) / 2).reshape(len(prompts), len(GRID_SEEDS), *x.shape[1:])

    labels = [f"{'erased' if i < len(erased_prompts) else 'kept'}: {p}"
              for i, p in enumerate(prompts)]
    return labelled_grid([("before", block(before)), ("after", block(after))], labels,
                         [f"seed {s}" for s in GRID_SEEDS], min_cell=48)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import load_judges, load_toy_model
    from .evaluate import split_prompts

    concept_axis(args.concept)  # cheap checks first
    config = toy_config([args.concept], loss=args.loss, objective=args.objective,
                        method=args.method, steps=args.steps, seed=args.seed,
                        **({"batch_size": max(2, TOY_SETTINGS["batch_size"])}
                           if args.loss == "cramer_wold" else {}))
    out: Path = args.out
    targets = [out / "grid.png", out / "summary.json"]
    if any(t.exists() for t in targets) and not args.overwrite:
        raise OutputExistsError(f"--out = {str(out)!r} already holds a demo result. Fix: pass "
                                "--overwrite, or choose another --out.")
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "is a file", "give a folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, judges = load_toy_model(verify=True), load_judges(verify=True)
    print(f"erasing {args.concept!r} from the toy model ({config.method}, loss {config.loss}, "
          f"objective {config.objective}, {config.steps} steps)")
    before = evaluate(model, judges, [args.concept], **EVAL)
    floor = uncond_rate(model, judges, [args.concept], n=48)
    base_eff = before.efficacy
    bar = tqdm(total=config.steps, desc="erasing", unit="step", disable=config.method == "uce")

    def progress(info) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.3g}")

    try:
        result = erase_toy(model, config, progress)
    finally:
        bar.close()
    train_seconds = result.metadata["seconds"]
    after = evaluate(model, judges, [args.concept], result, **EVAL)
    retention = retention_ratio(after, before)
    erased_set, retained_set = split_prompts([args.concept])
    # Three erased and three kept captions that differ in colour and texture too.
    grid = _grid(model, result, [erased_set.prompts[i] for i in (0, 4, 8)],
                 [retained_set.prompts[i] for i in (0, 17, 34)])
    seconds = time.perf_counter() - start
    summary = {
        "concept": args.concept,
        "efficacy": after.efficacy,
        "efficacy_before": base_eff,
        "retention": retention,
        "retention_accuracy": after.retention_accuracy,
        "base_accuracy": before.retention_accuracy,
        "erased_prompts_other_axes_kept": after.erased_accuracy_other_axes,
        "uncond_rate": floor,
        "clip_erased": {"before": before.clip_erased, "after": after.clip_erased},
        "clip_retained": {"before": before.clip_retained, "after": after.clip_retained},
        "seconds": round(seconds, 2),
        "train_seconds": train_seconds,
        "unet_evals": result.metadata["unet_evals_nograd"] + result.metadata["unet_evals_grad"],
        "final_loss": result.loss_history[-1] if result.loss_history else None,
        "config": config.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    from ..metrics.images import save_png

    for path, write in ((targets[0], lambda p: save_png(grid, p)),
                        (targets[1], lambda p: Path(p).write_text(json.dumps(summary, indent=1)))):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp-", suffix=path.suffix)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    print(f"efficacy (still judged {args.concept!r}): {base_eff:.2f} -> {after.efficacy:.2f}  "
          f"(unconditional floor {floor:.2f})")
    print(f"retention (accuracy on other prompts, relative): {retention:.3f}  "
          f"per axis after {after.retention_accuracy}")
    print(f"CLIP score erased prompts {before.clip_erased:.1f} -> {after.clip_erased:.1f}, "
          f"retained prompts {before.clip_retained:.1f} -> {after.clip_retained:.1f}")
    print(f"{seconds:.1f} s in all ({train_seconds:.1f} s training); wrote {targets[0]} and "
          f"{targets[1]}", file=sys.stdout)
    return 0
