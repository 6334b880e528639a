"""Quality at equal budget on the toy world: the SDD loop's settings (a fresh 50-step trajectory
per training step, one state per step) against our fast settings, at equal steps and at equal wall
time, over several seeds, evaluated on the same prompts and noise. A speed-up that loses quality
does not count: read the efficacy and retention intervals side by side.

    python benchmarks/quality.py --seeds 3 --concept cross
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# SDD's loop: a fresh 50-step trajectory every step, one state, the unweighted loss.
REFERENCE = dict(sampling_steps=50, batch_size=1, trajectory_reuse=1, timestep_weighting="none")


def main() -> None:
    import torch

    from unlearn_core.config import PRESETS
    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.bench import mean_ci
    from unlearn_core.toyworld.erasure import TOY_SETTINGS, erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="cross")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=TOY_SETTINGS["steps"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, judges = load_toy_model(), load_judges()
    base = evaluate(model, judges, [args.concept], repeats=2)
    fast = {k: TOY_SETTINGS[k] for k in PRESETS["fast"]}
    rows = []

    def run(name: str, settings: dict, steps: int) -> None:
        for seed in range(args.seeds):
            cfg = toy_config([args.concept], steps=steps, seed=seed, **settings)
            t0 = time.perf_counter()
            res = erase_toy(model, cfg)
            sec = time.perf_counter() - t0
            ev = evaluate(model, judges, [args.concept], res, repeats=2, with_clip=False)
            rows.append({"setting": name, "steps": steps, "seed": seed, "seconds": sec,
                         "unet_evals": res.metadata["unet_evals_nograd"]
                         + res.metadata["unet_evals_grad"],
                         "efficacy": ev.efficacy, "retention": retention_ratio(ev, base)})
            print(f"  {name} seed {seed}: {sec:.1f} s, efficacy {ev.efficacy:.2f}, retention "
                  f"{rows[-1]['retention']:.3f}", file=sys.stderr, flush=True)

    run("reference settings, equal steps", REFERENCE, args.steps)
    run("fast settings", fast, args.steps)
    ref_sec = sum(r["seconds"] for r in rows if r["setting"].startswith("reference")) / args.seeds
    fast_sec = sum(r["seconds"] for r in rows if r["setting"] == "fast settings") / args.seeds
    equal_time_steps = max(1, round(args.steps * fast_sec / ref_sec))
    run("reference settings, equal wall time", REFERENCE, equal_time_steps)
    run("fast settings, half the steps", fast, max(1, args.steps // 2))
    print(f"concept {args.concept!r}; untouched efficacy {base.efficacy:.2f}; fast settings "
          f"{fast}; reference {REFERENCE}; toy settings otherwise {TOY_SETTINGS}\n")
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


if __name__ == "__main__":
    main()
