"""Quality at equal budget on the toy world: the SDD loop's settings (a fresh 50-step trajectory
per training step, one state per step, unweighted loss) against our loop (the engine's defaults:
10-step trajectories, two states per step, one trajectory for four steps, SNR-weighted loss), at
two training lengths, at equal steps and at equal wall time, over several seeds, evaluated on the
same prompts and noise. A speed-up that loses quality does not count: read the efficacy and
retention intervals side by side.

    python benchmarks/quality.py --seeds 5 --jobs 2

"Our loop" here is ``RECIPES["fast"]`` on the toy settings, measured when the targets were the
bare word's (BENCHMARKS.md §2a). With the current targets (captions, anchors) the comparison at
equal quality runs through ``benchmarks/concepts.py`` with this file's ``REFERENCE`` as
``--set-config`` overrides, on the full evaluation (BENCHMARKS.md §5g).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SDD's loop: a fresh 50-step trajectory every step, one state, the unweighted loss.
REFERENCE = dict(sampling_steps=50, batch_size=1, trajectory_reuse=1, timestep_weighting="none")
# Training lengths on the toy world: the toy settings' (300 steps, EMA 0.99: the returned EMA
# teacher moves 95% of the way) and a short one (150 steps, EMA 0.95: the teacher lags ~20 steps).
LONG = dict(steps=300, ema_decay=0.99)
SHORT = dict(steps=150, ema_decay=0.95)

_STATE: dict = {}


def _init(threads: int) -> None:
    import torch

    from unlearn_core.toyworld import load_judges, load_toy_model

    torch.set_num_threads(threads)
    _STATE["model"], _STATE["judges"] = load_toy_model(), load_judges()


def erase_and_evaluate(model, judges, base, concept: str, settings: dict, seed: int) -> dict:
    """One toy erasure with ``settings`` over the toy settings; its cost and its quality against
    the untouched model's evaluation ``base``."""
    from unlearn_core.toyworld.erasure import erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio

    cfg = toy_config([concept], seed=seed, **settings)
    t0 = time.perf_counter()
    res = erase_toy(model, cfg)
    sec = time.perf_counter() - t0
    ev = evaluate(model, judges, [concept], res, repeats=2, with_clip=False)
    return {"steps": cfg.steps, "ema_decay": cfg.ema_decay, "seed": seed, "seconds": sec,
            "unet_evals": res.metadata["unet_evals_nograd"] + res.metadata["unet_evals_grad"],
            "efficacy": ev.efficacy, "retention": retention_ratio(ev, base)}


def base_evaluation(model, judges, concept: str):
    from unlearn_core.toyworld.evaluate import evaluate

    return evaluate(model, judges, [concept], repeats=2, with_clip=False)


def _run(job: tuple[str, str, dict, int]) -> dict:
    name, concept, settings, seed = job
    model, judges = _STATE["model"], _STATE["judges"]
    if "base" not in _STATE:
        _STATE["base"] = base_evaluation(model, judges, concept)
    row = {"setting": name} | erase_and_evaluate(model, judges, _STATE["base"], concept,
                                                  settings, seed)
    print(f"  {name} seed {seed}: {row['seconds']:.1f} s, {row['unet_evals']} UNet evals, "
          f"efficacy {row['efficacy']:.2f}, retention {row['retention']:.3f}", file=sys.stderr,
          flush=True)
    return row


def main() -> None:
    from unlearn_core.config import RECIPES
    from unlearn_core.metrics.stats import mean_ci
    from unlearn_core.toyworld.erasure import TOY_SETTINGS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="cross")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    ap.add_argument("--lora-lr", type=float, nargs="*", default=[],
                    help="also run our short loop as a rank-8 LoRA at each of these lr")
    ap.add_argument("--skip-main", action="store_true",
                    help="run only the --lora-lr rows (no SDD loop, no equal-time row)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    ours = dict(RECIPES["fast"])  # == the engine's defaults (tests/test_bad_inputs.py pins it)
    seeds = range(args.seeds)
    first = [] if args.skip_main else [
        ("SDD loop, 300 steps, EMA 0.99", REFERENCE | LONG),
        ("our loop, 300 steps, EMA 0.99", ours | LONG),
        ("SDD loop, 150 steps, EMA 0.95", REFERENCE | SHORT),
        ("our loop, 150 steps, EMA 0.95", ours | SHORT),
    ]
    first += [(f"our loop, 150 steps, EMA 0.95, LoRA rank 8, lr {lr:g}",
               ours | SHORT | dict(parametrization="lora", lora_rank=8, lora_alpha=8.0, lr=lr))
              for lr in args.lora_lr]
    rows: list[dict] = []

    def mean_of(name: str, field: str) -> float:
        sel = [r[field] for r in rows if r["setting"] == name]
        return sum(sel) / len(sel)

    with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(1,)) as pool:
        jobs = [(name, args.concept, s, seed) for name, s in first for seed in seeds]
        rows += list(pool.map(_run, jobs))
        if not args.skip_main:
            # The SDD loop given the wall time our short run took (its steps cost more).
            per_step = mean_of("SDD loop, 150 steps, EMA 0.95", "seconds") / SHORT["steps"]
            equal_time = max(1, round(mean_of("our loop, 150 steps, EMA 0.95", "seconds")
                                      / per_step))
            name = f"SDD loop at our short run's wall time, {equal_time} steps, EMA 0.95"
            jobs = [(name, args.concept, REFERENCE | SHORT | {"steps": equal_time}, seed)
                    for seed in seeds]
            rows += list(pool.map(_run, jobs))
    print(f"concept {args.concept!r}; our loop {ours}; SDD loop {REFERENCE}; toy settings "
          f"otherwise {({k: v for k, v in TOY_SETTINGS.items() if k not in ours | LONG})}; "
          f"{args.seeds} seeds, mean ± 95% interval\n")
    print("| setting | steps | seconds | UNet evals | efficacy ↓ | retention ↑ |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["setting"] for r in rows):
        sel = [r for r in rows if r["setting"] == name]
        cells = []
        for f, fmt in (("seconds", ".1f"), ("unet_evals", ".0f"), ("efficacy", ".2f"),
                       ("retention", ".3f")):
            m, h = mean_ci([r[f] for r in sel])
            cells.append(f"{m:{fmt}} ± {h:{fmt}}")
        print(f"| {name} | {sel[0]['steps']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.skip_main:
        return
    print()
    for length in ("300 steps, EMA 0.99", "150 steps, EMA 0.95"):
        ref, us = f"SDD loop, {length}", f"our loop, {length}"
        print(f"{length}: SDD loop / our loop — UNet evals "
              f"{mean_of(ref, 'unet_evals') / mean_of(us, 'unet_evals'):.1f}×, wall time "
              f"{mean_of(ref, 'seconds') / mean_of(us, 'seconds'):.1f}×")
    best = min(("SDD loop, 300 steps, EMA 0.99", "SDD loop, 150 steps, EMA 0.95"),
               key=lambda n: mean_of(n, "efficacy"))
    us = "our loop, 150 steps, EMA 0.95"
    print(f"the SDD loop's better erasure ({best}) / our short run — UNet evals "
          f"{mean_of(best, 'unet_evals') / mean_of(us, 'unet_evals'):.1f}×, wall time "
          f"{mean_of(best, 'seconds') / mean_of(us, 'seconds'):.1f}×")


if __name__ == "__main__":
    main()
