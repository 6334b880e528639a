#!/usr/bin/env python3
"""Where the kept attributes go on the erased captions (toy world; BENCHMARKS.md §5o).

A retention miss of a set says how often a kept value is lost, not what the model draws instead.
For each training seed this trains the erasure (the defaults, or ``--set-config`` overrides), draws
the captions that name an erased concept (``--repeats`` images each, the benchmark's evaluation
noise) and, for every axis the set keeps a value of, prints what the judge names on the captions
with that value (the shape judge's fifth class is "none": no shape found) and how the images lost
spread over the caption's other values. With ``--grid``, a PNG per seed: for each caption of
``--captions``, a row of the untouched model's images and a row of the erased model's (the same
noise), 4x enlarged.

    python benchmarks/kept_loss.py --concepts square,triangle,cross,red,green,blue,yellow,solid,striped,dotted \
        --seeds 2,4 --repeats 16 --grid kept-out --captions "a yellow circle, solid;a yellow circle"
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.concepts import parse_overrides  # noqa: E402


def kept_report(pred: dict, labels: dict, concepts: tuple[str, ...]) -> list[str]:
    """Lines: per kept value, what the judge names on its captions and the lost images' other
    values."""
    from unlearn_core.toyworld.evaluate import concept_axis
    from unlearn_core.toyworld.judges import JUDGE_CLASSES
    from unlearn_core.toyworld.settings import AXES

    erased = {concept_axis(c) for c in concepts}
    lines = []
    for axis, values in AXES.items():
        for index, value in enumerate(values):
            if (axis, index) in erased:
                continue
            mask = labels[axis] == index
            if not mask.any():
                continue
            named = collections.Counter(JUDGE_CLASSES[axis][int(i)] for i in pred[axis][mask])
            lost = mask & (pred[axis] != index)
            spread = {other: dict(collections.Counter(AXES[other][int(i)] for i in labels[other][lost]))
                      for other in AXES if other != axis}
            lines.append(f"  kept {value!r}: {int(mask.sum())} images, judged {dict(named)}; "
                         f"lost {int(lost.sum())}, by " + ", ".join(f"{o} {s}" for o, s in spread.items()))
    return lines


def grid_prompts(captions: list[str], n: int) -> tuple[list[str], list[int]]:
    """Each caption ``n`` times, with the grid's noise seeds."""
    return [c for c in captions for _ in range(n)], [7000 + i for _ in captions for i in range(n)]


def grid(model, result, captions: list[str], n: int, base: torch.Tensor, path: Path) -> None:
    """``base``: the untouched model's images of ``grid_prompts`` (the same for every seed)."""
    from torchvision.utils import save_image

    from unlearn_core.toyworld.erasure import toy_denoiser
    from unlearn_core.toyworld.generation import generate

    with result.applied(toy_denoiser(model)):
        erased = generate(model, *grid_prompts(captions, n))
    rows = torch.stack([base.view(len(captions), n, 3, 16, 16),
                        erased.view(len(captions), n, 3, 16, 16)], 1).reshape(-1, 3, 16, 16)
    rows = torch.nn.functional.interpolate(rows, scale_factor=4, mode="nearest")  # 64 px a tile
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((rows.clamp(-1, 1) + 1) / 2, str(path), nrow=n, padding=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", required=True, help="comma list of toy concepts erased at once")
    ap.add_argument("--seeds", default="0", help="comma list of training seeds")
    ap.add_argument("--repeats", type=int, default=16, help="images per caption")
    ap.add_argument("--set-config", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--grid", type=Path, metavar="DIR", help="write kept-<seed>.png here")
    ap.add_argument("--captions", default="", help="';'-separated captions for the grid")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.erasure import erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluation_images, split_prompts
    from unlearn_core.toyworld.generation import generate
    from unlearn_core.toyworld.judges import judge

    concepts = tuple(c.strip() for c in args.concepts.split(",") if c.strip())
    overrides = parse_overrides(args.set_config)
    captions = [c.strip() for c in args.captions.split(";") if c.strip()]
    if args.grid and not captions:
        raise SystemExit("--grid needs --captions: the captions to draw, separated by ';'")
    model, judges = load_toy_model(), load_judges()
    labels = split_prompts(concepts, args.repeats)[0].labels()
    print(f"untouched, {','.join(concepts)}:")
    base = judge(evaluation_images(model, concepts, "erased", None, repeats=args.repeats), judges)
    print("\n".join(kept_report(base, labels, concepts)), flush=True)
    base_grid = generate(model, *grid_prompts(captions, 12)) if args.grid else None
    for seed in (int(s) for s in args.seeds.split(",")):
        result = erase_toy(model, toy_config(concepts, model, seed=seed, **overrides))
        pred = judge(evaluation_images(model, concepts, "erased", result, repeats=args.repeats),
                     judges)
        print(f"seed {seed}:")
        print("\n".join(kept_report(pred, labels, concepts)), flush=True)
        if args.grid:
            grid(model, result, captions, 12, base_grid, args.grid / f"kept-{seed}.png")


if __name__ == "__main__":
    main()
