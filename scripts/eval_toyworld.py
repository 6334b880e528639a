"""Measure the committed toy-world assets: judges on fresh images, the toy model's judged generations,
the unconditional samples' judged shapes, and the tiny CLIP's caption checks.

    python scripts/eval_toyworld.py                       # 4 x 48 generations, guidance 3, 20 DDIM steps
    python scripts/eval_toyworld.py --repeats 8 --guidance 2,3,5 --model path/to/other.safetensors

Prints one JSON object. Every figure is measured here; nothing is read from file metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from unlearn_core.toyworld import (  # noqa: E402
    JUDGE_CLASSES,
    generate,
    judge,
    judged_accuracy,
    load_judges,
    load_tiny_clip,
    load_toy_model,
    make_batch,
    make_rejects,
)

EVAL_SEED = 30_000  # never used by the training scripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="toy model file (default: committed asset)")
    parser.add_argument("--repeats", type=int, default=4, help="generations per (shape, colour, texture)")
    parser.add_argument("--guidance", default="3", help="comma-separated guidance scales")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report: dict = {}
    judges = load_judges(verify=True)
    batch = make_batch(4000, seed=EVAL_SEED)
    pred = judge(batch.images, judges)
    report["judges_fresh_images"] = {a: (pred[a] == y).float().mean().item() for a, y in batch.labels().items()}
    none = JUDGE_CLASSES["shape"].index("none")
    rejects = make_rejects(1000, seed=EVAL_SEED + 1)
    reject_recall = (judge(rejects, judges)["shape"] == none).float().mean().item()
    report["judges_fresh_images"]["shape_reject_recall"] = reject_recall

    model = load_toy_model(args.model, verify=args.model is None)
    report["toy_model_file"] = str(args.model or "committed asset")
    for g in (float(x) for x in args.guidance.split(",")):
        t0 = time.time()
        acc = judged_accuracy(model, judges, repeats=args.repeats, seed=EVAL_SEED, guidance=g, steps=args.steps)
        report[f"generations_guidance_{g:g}"] = {**acc, "images": 48 * args.repeats,
                                                 "seconds": round(time.time() - t0, 1)}
    n_uncond = 48 * args.repeats
    uncond = generate(model, [""] * n_uncond, list(range(EVAL_SEED, EVAL_SEED + n_uncond)), steps=args.steps)
    shapes = judge(uncond, judges)["shape"]
    report["unconditional_judged_shape"] = {
        name: (shapes == k).float().mean().item() for k, name in enumerate(JUDGE_CLASSES["shape"])
    }

    clip, preprocess, tokenizer = load_tiny_clip(verify=True)
    from train_tiny_clip import held_out_metrics  # same checks as at training time, fresh seed

    report["tiny_clip"] = held_out_metrics(clip, lambda t: tokenizer(t), n=1000, seed=EVAL_SEED + 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
