"""Screening of speed levers on the toy world: one erasure per (lever, seed), efficacy and
retention against the untouched model, one JSON line per run. Cheaper than quality.py (no SDD
loop); the levers that look right here go into quality.py's intervals.

    python benchmarks/levers.py --concept cross teacher-target:0 student-result:0 ...
    python benchmarks/levers.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each lever: overrides of the toy settings (unlearn_core.toyworld.erasure.TOY_SETTINGS: batch 4,
# reuse 4, 10 sampling steps, SNR, lr 3e-4, 300 steps, EMA 0.99, to_k/to_v full delta).
LEVERS: dict[str, dict] = {
    "toy": {},
    "teacher-target": dict(target_from="teacher"),
    "kept-target": dict(target_from="trajectory"),
    "kept-target-reuse8": dict(target_from="trajectory", trajectory_reuse=8),
    "kept-target-batch2-reuse8": dict(target_from="trajectory", batch_size=2, trajectory_reuse=8),
    "lr1e-3-150": dict(steps=150, lr=1e-3, ema_decay=0.98),
    "lr1e-3-150-batch2": dict(steps=150, lr=1e-3, ema_decay=0.98, batch_size=2),
    "lr1e-3-120": dict(steps=120, lr=1e-3, ema_decay=0.97),
    "lr1e-3-120-reuse8": dict(steps=120, lr=1e-3, ema_decay=0.97, trajectory_reuse=8),
    "student-result-150": dict(steps=150, result="student"),
    "student-result-150-batch2": dict(steps=150, result="student", batch_size=2),
    "ema0.95-150": dict(steps=150, ema_decay=0.95),
    "ema0.95-150-batch2": dict(steps=150, ema_decay=0.95, batch_size=2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="LEVER:SEED ...")
    ap.add_argument("--concept", default="cross")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--list", action="store_true", help="print the levers and exit")
    args = ap.parse_args()
    if args.list or not args.runs:
        for name, settings in LEVERS.items():
            print(f"{name}: {settings}")
        return
    runs = []
    for spec in args.runs:
        name, _, seed = spec.partition(":")
        if name not in LEVERS or not seed.isdigit():
            raise SystemExit(f"{spec!r}: give LEVER:SEED with a lever from --list")
        runs.append((name, int(seed)))
    import torch
    from quality import base_evaluation, erase_and_evaluate

    from unlearn_core.toyworld import load_judges, load_toy_model

    torch.set_num_threads(args.threads)
    model, judges = load_toy_model(), load_judges()
    base = base_evaluation(model, judges, args.concept)
    for name, seed in runs:
        row = erase_and_evaluate(model, judges, base, args.concept, LEVERS[name], seed)
        print(json.dumps({
            "lever": name, "seed": seed, "concept": args.concept,
            "seconds": round(row["seconds"], 1), "unet_evals": row["unet_evals"],
            "efficacy": round(row["efficacy"], 3), "retention": round(row["retention"], 3),
        }), flush=True)

if __name__ == "__main__":
    main()
