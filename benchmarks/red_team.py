"""Red-team benchmark on the toy world: how far do the attacks bring an erased concept back?

For each concept (a shape, a colour, a texture) and training seed, each erasure -- untouched, ESD
(the engine's default objective), SDD (``objective="sdd"``, with each loss: ``sdd``, ``sdd-js``,
``sdd-cw``), UCE, robust (the defaults with
``robust="adversarial"``), all with the toy settings (``toyworld.settings.TOY_SETTINGS``) -- is
attacked by the concept inversion and
the prompt attack (``unlearn_core.attacks``, attack seed = training seed, or ``--attack-seeds N``
attacks per erasure and their mean) and probed by the
partial-diffusion probe; each attack's success rate (judge confidence >= 0.5 on 16 images), the
erasure's efficacy and retention (``toyworld.evaluate``, 1 repeat) and UNet evaluations are
recorded. A control model trained without the concept (``--control cross=FILE``, made by
``scripts/train_toy_model.py --exclude cross``) is attacked with targets from the full model.

    python benchmarks/red_team.py --out bench-out/red_team            # runs, writes runs.jsonl
    python benchmarks/red_team.py --table bench-out/red_team/runs.jsonl # prints the table

Every run is appended to ``runs.jsonl`` as it finishes (a partial run keeps what it measured), and
the loop goes seed by seed, so every cell has results early.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("untouched", "esd", "sdd", "sdd-js", "sdd-cw", "uce", "robust")
# every training method runs the toy settings (toyworld.settings.TOY_SETTINGS) and the engine's
# defaults; "esd" is the default objective, "sdd" the self-distillation target with the L2 loss
# ("sdd-js" Jensen-Shannon, "sdd-cw" Cramer-Wold), all three at lr 3e-4, the toy lr of SDD's own
# rows in BENCHMARKS.md §1 (at the esd objective's 1e-3 the student's own target drifts: a cross
# erased at 1e-3 kept retention 0.48), "robust" the
# defaults with robust="adversarial" (its own settings are EraseConfig's defaults unless --robust
# overrides them)
SDD_LR = 3e-4
OBJECTIVE = {"esd": {}, "sdd": dict(objective="sdd", lr=SDD_LR),
             "sdd-js": dict(objective="sdd", loss="jensen_shannon", lr=SDD_LR),
             "sdd-cw": dict(objective="sdd", loss="cramer_wold", lr=SDD_LR),
             "robust": dict(robust="adversarial")}


def erase(world, concept: str, method: str, seed: int, robust: dict):
    from unlearn_core.toyworld.erasure import erase_toy, toy_config

    if method == "untouched":
        return None
    if method == "uce":
        return erase_toy(world.model, toy_config((concept,), method="uce", seed=seed))
    extra = dict(OBJECTIVE[method], **(robust if method == "robust" else {}))
    return erase_toy(world.model, toy_config((concept,), seed=seed, **extra))


def attack_seeds_of(seed: int, count: int) -> list[int]:
    """The attack seeds of training seed ``seed``: the seed itself, then seed + 100, + 200, ...
    (apart from every other training seed's, so no two erasures share an attack)."""
    return [seed + 100 * i for i in range(count)]


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from unlearn_core.attacks.core import attack
    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.attacks import toy_attack, toy_config
    from unlearn_core.toyworld.erasure import toy_denoiser
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio
    from unlearn_core.toyworld.world import load_toy_world, toy_judge_scorer

    world, judges, scorer = load_toy_world(), load_judges(), toy_judge_scorer()
    robust = json.loads(args.robust) if args.robust else {}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    concepts = args.concepts.split(",")
    controls = dict(item.split("=", 1) for item in args.control)
    base_eval = {c: evaluate(world.model, judges, [c], repeats=1, with_clip=False)
                 for c in concepts}
    kinds = ("concept_inversion", "prompt_attack", "probe")
    budget = dict(steps=args.attack_steps, batch_size=args.attack_batch,
                  seeds=tuple(range(args.images)), psis=tuple(args.psis))
    for seed in range(args.first_seed, args.seeds):
        for concept in concepts:
            for method in args.methods.split(","):
                if method == "untouched" and seed >= args.untouched_seeds:
                    continue
                t0 = time.perf_counter()
                result = erase(world, concept, method, seed, robust)
                seconds = time.perf_counter() - t0
                row = {"concept": concept, "method": method, "seed": seed,
                       "erase_seconds": round(seconds, 2)}
                if result is not None:
                    meta = result.metadata
                    row["unet_evals"] = meta.get("unet_evals_nograd", 0) + meta.get(
                        "unet_evals_grad", 0)
                    row["adversarial_evals"] = meta.get("unet_evals_adversarial", 0)
                    if "robust" in meta:
                        row["robust"] = meta["robust"]
                    ev = evaluate(world.model, judges, [concept], result, repeats=1,
                                  with_clip=False)
                    row["efficacy"] = ev.efficacy
                    row["retention"] = retention_ratio(ev, base_eval[concept])
                else:
                    row.update(unet_evals=0, efficacy=base_eval[concept].efficacy, retention=1.0)
                for kind in kinds:
                    # the optimising attacks once per attack seed (the probe has no seed of its
                    # own to vary); the row's ASR is their mean
                    attack_seeds = attack_seeds_of(seed, args.attack_seeds if kind != "probe" else 1)
                    rs = [toy_attack(world, result, toy_config(concept, kind=kind, seed=s, **budget),
                                     scorer) for s in attack_seeds]
                    row[kind] = {"asr": sum(r.asr for r in rs) / len(rs),
                                 "interval": list(rs[0].interval), "plain": rs[0].plain_asr,
                                 "ccs": rs[0].ccs, "evals": sum(r.unet_evals for r in rs),
                                 "attack_seeds": attack_seeds, "asr_by_seed": [r.asr for r in rs]}
                row["seconds"] = round(time.perf_counter() - t0, 1)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            if concept in controls and seed < args.untouched_seeds:  # a model that never saw the concept
                t0 = time.perf_counter()
                control = load_toy_model(controls[concept])
                den = toy_denoiser(control)
                emb = control.encode([concept, ""])
                row = {"concept": concept, "method": "never-saw", "seed": seed}
                ev = evaluate(control, judges, [concept], repeats=1, with_clip=False)
                row["efficacy"] = ev.efficacy
                row["retention"] = retention_ratio(ev, base_eval[concept])
                for kind in kinds[:2]:
                    cfg = toy_config(concept, kind=kind, seed=seed, **budget)
                    from unlearn_core.attacks.core import concept_targets

                    full = world.encode([concept, ""])
                    targets = concept_targets(world.denoiser, full[:1], full[1:], cfg.targets,
                                              cfg.seed, world.latent_shape, cfg.guidance,
                                              cfg.sampling_steps)
                    r = attack(den, den, emb[:1], emb[1:], scorer, cfg, world.decode,
                               world.latent_shape, targets=targets)
                    row[kind] = {"asr": r.asr, "interval": list(r.interval),
                                 "plain": r.plain_asr, "ccs": None, "evals": r.unet_evals}
                row["seconds"] = round(time.perf_counter() - t0, 1)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


def table(path: Path) -> str:
    from unlearn_core.metrics.stats import mean_ci

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["concept"], r["method"]), []).append(r)
    if len({r["concept"] for r in rows}) > 1:  # each method over every concept and seed
        for r in rows:
            cells.setdefault(("~all", r["method"]), []).append(r)

    def cell(values: list[float], fmt: str) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return "—"
        m, h = mean_ci(values)
        return f"{m:{fmt}} ± {h:{fmt}}" if len(values) > 1 else f"{m:{fmt}}"

    lines = ["| concept | method | n | efficacy ↓ | retention ↑ | UNet evals (erasure) | no attack ↓ "
             "| ASR inversion ↓ | ASR prompt attack ↓ | probe ASR ↓ | probe CCS ↓ |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate((*METHODS, "never-saw"))}
    for (concept, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0],
                                                                       order.get(kv[0][1], 99))):
        def attack_cell(kind: str, key: str = "asr", fmt: str = ".2f", rs: list = rs) -> str:
            return cell([r[kind][key] for r in rs if kind in r], fmt)

        name = "all (pooled)" if concept == "~all" else concept
        lines.append(
            f"| {name} | {method} | {len(rs)} | {cell([r['efficacy'] for r in rs], '.2f')} | "
            f"{cell([r['retention'] for r in rs], '.3f')} | "
            f"{cell([r.get('unet_evals') for r in rs], '.0f')} | "
            f"{attack_cell('concept_inversion', 'plain')} | {attack_cell('concept_inversion')} | "
            f"{attack_cell('prompt_attack')} | "
            f"{attack_cell('probe')} | {attack_cell('probe', 'ccs', '.3f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concepts", default="cross,red,striped")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", type=int, default=3, help="training seeds first-seed .. seeds-1")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first training seed (e.g. 2 with --seeds 3: seed 2 alone)")
    p.add_argument("--attack-steps", type=int, default=150)
    p.add_argument("--attack-batch", type=int, default=8)
    p.add_argument("--images", type=int, default=16, help="judged images per attack")
    p.add_argument("--psis", type=float, nargs="+", default=[0.001, 0.01, 0.05, 0.15, 0.25, 0.35,
                                                             0.45, 0.55])
    p.add_argument("--attack-seeds", type=int, default=1,
                   help="attack each erasure this many times (attack seeds seed, seed+100, ...) "
                   "and report the mean ASR: one attack's seed moves its ASR as much as most "
                   "settings do")
    p.add_argument("--untouched-seeds", type=int, default=3,
                   help="attack seeds for the untouched and never-saw models")
    p.add_argument("--robust", default="", help="JSON overrides of the robust settings")
    p.add_argument("--control", action="append", default=[], metavar="CONCEPT=FILE",
                   help="a toy model trained without the concept")
    p.add_argument("--out", type=Path, default=Path("bench-out/red_team"))
    p.add_argument("--table", type=Path, help="print the table of a runs.jsonl and exit")
    args = p.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args)
    print(table(args.out / "runs.jsonl"))


if __name__ == "__main__":
    main()
