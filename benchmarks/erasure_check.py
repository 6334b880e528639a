#!/usr/bin/env python3
"""Does the in-loop erasure check see the erasure? (toy world; BENCHMARKS.md §5i)

Each erasure runs with the defaults and ``check_every`` (no stopping); at every check the erasure
so far (``StepInfo.weights``) is judged afterwards: efficacy and retention on the §1 prompt sets
(``--repeats`` images per caption). Beside the engine's residual (x0-weighted distance to the
target), the residual's variants measured on the same probe predictions: unweighted (``dist_u``),
the share of the way still left along the target's direction (``proj``), and how far the
prediction moved from the base's, over the gap (``move``). Prints one line per check (JSON, also
written to ``--out``) and a summary per run: the first check where the concept is erased (efficacy
at or under its floor + 0.05), the residual there, and where ``stop_patience`` 2 would have
stopped and the efficacy at that check.

Usage: python benchmarks/erasure_check.py --concepts circle,red,striped --seeds 0,1 --steps 400
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import unlearn_core.trainer as trainer  # noqa: E402
from unlearn_core import erasure_check  # noqa: E402
from unlearn_core.result import EraseResult  # noqa: E402

EFFICACY_MARGIN = 0.05  # issue 13's bar: efficacy <= floor + 0.05 counts as erased
_VARIANTS: list[list[dict]] = []  # per check: per concept, the residual's variants


def variants(p: erasure_check.Probe, eps: torch.Tensor) -> dict[str, float]:
    gap = p.target - p.base
    out = {}
    for name, w in (("u", torch.ones_like(p.weight)), ("x0", p.weight)):
        w = w.view(-1, 1, 1, 1)
        norm = float((w * gap ** 2).sum())
        out[f"dist_{name}"] = float((w * (eps - p.target) ** 2).sum()) / norm
        out[f"proj_{name}"] = 1 - float((w * (eps - p.base) * gap).sum()) / norm
        out[f"move_{name}"] = float((w * (eps - p.base) ** 2).sum()) / norm
    return out


def _instrumented(run, state, probes):
    preds = erasure_check.predictions(run, state, probes)
    _VARIANTS.append([variants(p, e) for p, e in zip(probes, preds, strict=True)])
    return [erasure_check.residual(p, e) for p, e in zip(probes, preds, strict=True)]


def one_run(model, judges, concepts: list[str], seed: int, steps: int, every: int, repeats: int,
            base, floor: float, out: Path) -> list[dict]:
    from unlearn_core.toyworld.erasure import erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio

    cfg = toy_config(concepts, seed=seed, steps=steps, check_every=every)
    snaps = {}
    _VARIANTS.clear()

    def keep(info) -> None:
        if info.residuals is not None:
            snaps[info.step] = (info.residuals, info.weights(), info.unet_evals, _VARIANTS[-1])

    t0 = time.perf_counter()
    erase_toy(model, cfg, keep)
    seconds = time.perf_counter() - t0
    rows = []
    for n, (found, weights, evals, extra) in sorted(snaps.items()):
        ev = evaluate(model, judges, concepts, EraseResult(weights, cfg, [], {}), repeats=repeats,
                      with_clip=False)
        rows.append(dict(concepts=",".join(concepts), seed=seed, step=n, residual=found,
                         variants=extra, unet_evals=evals, efficacy=ev.efficacy,
                         retention=retention_ratio(ev, base), floor=floor,
                         train_seconds=round(seconds, 1)))
        print(json.dumps(rows[-1]), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
    return rows


def summary(rows: list[dict]) -> str:
    """One line per run: where the judge first calls it erased, and where the plateau rule
    (stop_patience 2) would stop."""
    runs: dict[tuple, list[dict]] = {}
    for r in rows:
        runs.setdefault((r["concepts"], r["seed"]), []).append(r)
    lines = ["| concepts | seed | erased at step (efficacy ≤ floor + 0.05) | residual there | "
             "residual range after | stop_patience 2 stops at | efficacy / retention there | "
             "at the last step |", "|---|---|---|---|---|---|---|---|"]
    for (name, seed), rs in runs.items():
        bar = rs[0]["floor"] + EFFICACY_MARGIN
        first = next((r for r in rs if r["efficacy"] <= bar), None)
        series = [max(r["residual"]) for r in rs]
        stop = next((r for k, r in enumerate(rs) if erasure_check.plateaued(series[:k + 1], 2)),
                    None)
        after = series[rs.index(first):] if first else []
        last = rs[-1]
        lines.append(
            f"| {name} | {seed} | {first['step'] if first else 'not erased'} | "
            f"{max(first['residual']):.3f} | " if first else
            f"| {name} | {seed} | not erased | – | ")
        lines[-1] += (f"{min(after):.3f}–{max(after):.3f} | " if after else "– | ")
        lines[-1] += (f"{stop['step']} | {stop['efficacy']:.2f} / {stop['retention']:.3f} | "
                      if stop else "never | – | ")
        lines[-1] += f"{last['step']}: {last['efficacy']:.2f} / {last['retention']:.3f} |"
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concepts", default="circle,red,striped",
                    help="comma-separated; each erased alone ('a+b' erases a and b together)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=25, help="check_every")
    ap.add_argument("--repeats", type=int, default=2, help="images per caption when judging")
    ap.add_argument("--out", type=Path, default=Path("bench-out/erasure_check.jsonl"))
    ap.add_argument("--table", action="store_true", help="only print the summary of --out")
    args = ap.parse_args()
    if not args.table:
        torch.set_num_threads(1)  # one thread: two runs side by side on two cores
        from unlearn_core.toyworld import load_judges, load_toy_model
        from unlearn_core.toyworld.evaluate import evaluate, uncond_rate

        trainer.residuals = _instrumented  # the same residuals, with their variants kept
        args.out.parent.mkdir(parents=True, exist_ok=True)
        model, judges = load_toy_model(), load_judges()
        for name in args.concepts.split(","):
            concepts = name.split("+")
            base = evaluate(model, judges, concepts, repeats=args.repeats, with_clip=False)
            floor = uncond_rate(model, judges, concepts)
            for seed in (int(s) for s in args.seeds.split(",")):
                one_run(model, judges, concepts, seed, args.steps, args.every, args.repeats,
                        base, floor, args.out)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(summary(rows))


if __name__ == "__main__":
    main()
