"""Every toy-world concept erased with the engine's defaults: one row per vocabulary item (and per
set of concepts erased at once), against the issue's bars.

For each concept (or set): the untouched model's efficacy and unconditional floor; then, per
training seed, the erasure with the defaults (``toy_config``: the toy settings, nothing set per
concept; a set that holds a default value's neighbours trains its longer default steps), its
efficacy, retention and efficacy per phrasing and caption length (``phrasings.EVAL_PHRASINGS``:
the toy grammar's five phrasings and five held-out ones, up to the six words the tokenizer
reads); UCE once (deterministic). Mean and 95% interval over seeds
(Student t). Bars: efficacy <= floor + 0.05, retention >= 0.97, half-width <= 0.10, the worst
phrasing inside the efficacy bar, and for a set each concept's mean efficacy (on the captions
naming it) within its own unconditional floor + 0.05.

    python benchmarks/concepts.py --concepts all --seeds 5 --out concepts-out
    python benchmarks/concepts.py --quick          # two concepts, one seed: a smoke run
    python benchmarks/concepts.py --concepts square,green --set-config loss=cramer_wold \
        --vary lr=3e-4,1e-3 --seeds 1 --no-uce     # other settings; one row per value of lr

Writes concepts.md (table), concepts.json (every run, written after each run) and concepts.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
EFFICACY_MARGIN = 0.05
RETENTION_BAR = 0.97
HALF_WIDTH_BAR = 0.10


def mean_ci(values: list[float]) -> tuple[float, float]:
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def parse_targets(concepts: str, sets: list[str]) -> list[tuple[str, ...]]:
    from unlearn_core.toyworld.settings import AXES

    words = [v for values in AXES.values() for v in values]
    chosen = words if concepts == "all" else [c.strip() for c in concepts.split(",") if c.strip()]
    targets = [(c,) for c in chosen]
    targets += [tuple(c.strip() for c in s.split(",") if c.strip()) for s in sets]
    return targets


def parse_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> config overrides, each value read as its EraseConfig field's type
    (as ``unlearn bench --set`` reads them); a bad pair ends the script with one line."""
    from unlearn_core.cli.common import parse_settings
    from unlearn_core.errors import ConfigError

    try:
        return parse_settings(pairs, flag="--set-config/--vary")
    except ConfigError as e:
        raise SystemExit(str(e)) from None


def variants(fixed: list[str], vary: list[str]) -> list[dict]:
    """Every training configuration: the ``--set-config`` overrides with each combination of the
    ``--vary KEY=V1,V2`` values (one empty dict without either)."""
    base = parse_overrides(fixed)
    axes = [[f"{key}={v}" for v in values.split(",")]
            for key, _, values in (item.partition("=") for item in vary)]
    return [base | parse_overrides(list(combo)) for combo in itertools.product(*axes)]


def variant_label(overrides: dict, vary: list[str]) -> str:
    """The part of a row's name that tells the ``--vary`` values apart ('' without --vary)."""
    keys = [item.partition("=")[0].strip() for item in vary]
    return " ".join(f"{k}={overrides[k]}" for k in keys)


_STATE: dict = {}


def _init(threads: int) -> None:
    import torch

    from unlearn_core.toyworld import load_judges, load_toy_model

    torch.set_num_threads(threads)
    _STATE["model"], _STATE["judges"] = load_toy_model(verify=True), load_judges(verify=True)


def _baseline(concepts: tuple[str, ...], repeats: int, phrasing_images: int) -> dict:
    from unlearn_core.toyworld.evaluate import evaluate, uncond_rates
    from unlearn_core.toyworld.phrasings import efficacy_by_phrasing

    model, judges = _STATE["model"], _STATE["judges"]
    base = evaluate(model, judges, concepts, repeats=repeats, with_clip=False)
    phr = efficacy_by_phrasing(model, judges, concepts, min_images=phrasing_images)
    floors = uncond_rates(model, judges, concepts)  # one set of empty-prompt samples for all
    return {"efficacy": base.efficacy, "uncond_rate": sum(floors) / len(floors),
            "floors": dict(zip(concepts, floors, strict=True)),
            "phrasing": phr["phrasing"], "length": phr["length"], "evaluation": base}


def _run(job: tuple[str, int, tuple[str, ...], int, int, dict, str]) -> dict:
    """One erasure with the defaults and ``overrides`` (or UCE) and its measurement; runs in a
    worker. ``variant`` tells the --vary values apart ('' without --vary)."""
    from unlearn_core.toyworld.erasure import erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio
    from unlearn_core.toyworld.phrasings import efficacy_by_phrasing

    method, seed, concepts, repeats, phrasing_images, overrides, variant = job
    model, judges = _STATE["model"], _STATE["judges"]
    name = ",".join(concepts)
    if name not in _STATE:  # the untouched model's figures, once per worker and target
        _STATE[name] = _baseline(concepts, repeats, phrasing_images)
    base = _STATE[name]
    cfg = toy_config(concepts, model, seed=seed,
                     **({"method": "uce"} if method == "uce" else overrides))
    t0 = time.perf_counter()
    res = erase_toy(model, cfg)
    seconds = time.perf_counter() - t0
    ev = evaluate(model, judges, concepts, res, repeats=repeats, with_clip=False)
    phr = efficacy_by_phrasing(model, judges, concepts, res, min_images=phrasing_images)
    row = {"concepts": name, "variant": variant, "method": method, "seed": seed, "efficacy": ev.efficacy,
           "floor": base["uncond_rate"], "efficacy_before": base["efficacy"],
           "efficacy_by_concept": ev.efficacy_by_concept, "floor_by_concept": base["floors"],
           "retention": retention_ratio(ev, base["evaluation"]),
           "retention_by_axis": {a: ev.retention_accuracy[a] / max(v, 1e-9)
                                 for a, v in base["evaluation"].retention_accuracy.items()},
           "kept_on_erased_captions": ev.erased_accuracy_other_axes, "seconds": seconds,
           "unet_evals": res.metadata.get("unet_evals_nograd", 0)
           + res.metadata.get("unet_evals_grad", 0),
           "steps_run": len(res.loss_history),  # fewer than steps when the check stopped it
           "phrasing": phr["phrasing"], "length": phr["length"],
           "worst_phrasing": max(phr["phrasing"].values()), "config": cfg.to_dict()}
    print(f"  {_label(row)} {method} seed {seed}: efficacy {row['efficacy']:.2f} (floor "
          f"{row['floor']:.2f}), retention {row['retention']:.3f}, worst phrasing "
          f"{row['worst_phrasing']:.2f}, {row['steps_run']} steps, {row['unet_evals']} UNet "
          f"evaluations, {seconds:.0f} s", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concepts", default="all", help="'all' or a comma list of toy concepts")
    ap.add_argument("--set", action="append", default=[], metavar="A,B,C",
                    help="a set of concepts erased in one run (repeatable)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="evaluation images per caption")
    ap.add_argument("--phrasing-images", type=int, default=32,
                    help="images each phrasing is judged on, at least (the worst-phrasing column "
                    "is a maximum over ten phrasings: few images each bias it upwards)")
    ap.add_argument("--no-uce", dest="uce", action="store_false")
    ap.add_argument("--quick", action="store_true", help="red and striped, one seed, 1 repeat")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes")
    ap.add_argument("--set-config", action="append", default=[], metavar="KEY=VALUE",
                    help="override a toy setting in every training run, e.g. loss=cramer_wold "
                    "(repeatable; UCE runs are not affected)")
    ap.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                    help="train once per value (repeatable: every combination); rows are "
                    "named 'concepts KEY=V'")
    ap.add_argument("--out", type=Path, default=Path("concepts-out"))
    ap.add_argument("--table", type=Path, metavar="JSON",
                    help="only print the table (and write the plot) of a concepts.json")
    args = ap.parse_args()
    if args.table:
        data = json.loads(args.table.read_text())
        runs = [r | {"length": {int(k): v for k, v in r["length"].items()}} for r in data["runs"]]
        plot(runs, args.table.with_suffix(".png"))
        print(markdown_table(runs) + "\n" + concept_table(runs))
        return
    if args.quick:
        args.concepts, args.set, args.seeds, args.repeats = "red,striped", [], 1, 1
    import torch

    targets = parse_targets(args.concepts, args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # seed by seed over every target, so a run cut short still covers every concept
    configs = variants(args.set_config, args.vary)
    jobs = ([("uce", 0, c, args.repeats, args.phrasing_images, {}, "") for c in targets]
            if args.uce else [])
    jobs += [("train", s, c, args.repeats, args.phrasing_images, o, variant_label(o, args.vary))
             for s in range(args.first_seed, args.first_seed + args.seeds) for o in configs
             for c in targets]
    runs: list[dict] = []
    with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(args.threads,)) as pool:
        for row in pool.map(_run, jobs):
            runs.append(row)
            (args.out / "concepts.json").write_text(json.dumps({"runs": runs}, indent=1))
    header = (f"Command: `python benchmarks/concepts.py {' '.join(sys.argv[1:])}`  \n"
              f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.jobs} worker(s) x "
              f"{args.threads} torch thread(s), torch {torch.__version__}; load average at the "
              f"end {os.getloadavg()[0]:.1f}; {datetime.now(timezone.utc):%Y-%m-%d}; "
              f"{time.perf_counter() - started:.0f} s in all.\n\n")
    table = markdown_table(runs) + "\n" + concept_table(runs)
    (args.out / "concepts.md").write_text(header + table)
    plot(runs, args.out / "concepts.png")
    print(header + table)


def _label(run: dict) -> str:
    """A row of the table: the concepts, then the --vary values if the run had any."""
    return f"{run['concepts']} {run.get('variant', '')}".strip()


def _rows(runs: list[dict], label: str, method: str) -> list[dict]:
    """The training runs of one row (by label), or the UCE run of its concepts."""
    if method == "uce":
        label = label.split(" ")[0]
    return [r for r in runs if (_label(r) if method == "train" else r["concepts"]) == label
            and r["method"] == method]


def concept_stats(rows: list[dict]) -> dict[str, dict]:
    """Per concept of a set's runs (one per seed): its efficacy on the captions naming it, over
    the seeds -- mean, 95% half-width, per seed -- its own floor, and whether it meets the bars a
    single concept meets (mean within floor + EFFICACY_MARGIN, half-width within
    HALF_WIDTH_BAR). Empty for one concept or runs without the figures."""
    if not rows or not all(len(r.get("efficacy_by_concept", {})) > 1 for r in rows):
        return {}
    rows = sorted(rows, key=lambda r: r["seed"])
    out = {}
    for c, floor in rows[0]["floor_by_concept"].items():
        per_seed = [r["efficacy_by_concept"][c] for r in rows]
        mean, half = mean_ci(per_seed)
        out[c] = dict(mean=mean, half=half, floor=floor, per_seed=per_seed,
                      ok=mean <= floor + EFFICACY_MARGIN and half <= HALF_WIDTH_BAR)
    return out


def worst_concept(rows: list[dict]) -> tuple[str, bool]:
    """A set's row pools its concepts' captions against their mean floor, so one concept left
    can hide behind the others: each concept's mean efficacy over the seeds against its own
    floor. Returns the cell (the concept furthest over its floor, e.g. "square 0.19 (0.11)";
    empty for one concept or runs without the figures) and whether every concept meets its own
    bars (``concept_stats``)."""
    stats = concept_stats(rows)
    if not stats:
        return "", True
    c = max(stats, key=lambda k: stats[k]["mean"] - stats[k]["floor"])
    return (f"{c} {stats[c]['mean']:.2f} ({stats[c]['floor']:.2f})",
            all(v["ok"] for v in stats.values()))


def concept_table(runs: list[dict]) -> str:
    """Each set's concepts, one line each: efficacy on the captions naming the concept, mean ±
    95% interval and per seed, against its own floor; empty when no row is a set."""
    lines = []
    for name in dict.fromkeys(_label(r) for r in runs):
        for c, v in concept_stats(_rows(runs, name, "train")).items():
            seeds = " / ".join(f"{x:.2f}" for x in v["per_seed"])
            lines.append(f"| {name} | {c} | {v['floor']:.2f} | {len(v['per_seed'])} | "
                         f"{v['mean']:.2f} ± {v['half']:.2f} | {seeds} | "
                         f"{'met' if v['ok'] else 'not met'} |")
    if not lines:
        return ""
    return "\n".join(["| set | concept | its floor | n | efficacy ↓ | per seed | bars |",
                      "|---|---|---|---|---|---|---|", *lines]) + "\n"


def markdown_table(runs: list[dict]) -> str:
    lines = ["| concepts | floor | n | efficacy ↓ | retention ↑ | worst phrasing ↓ | UNet evals | "
             "efficacy by caption length (words) | UCE efficacy / retention | "
             "worst concept (its floor) | bars |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(_label(r) for r in runs):
        rows = _rows(runs, name, "train")
        if not rows:
            continue
        floor = rows[0]["floor"]
        e, eh = mean_ci([r["efficacy"] for r in rows])
        ret = [r["retention"] for r in rows]
        rm, rh = mean_ci(ret)
        w, wh = mean_ci([r["worst_phrasing"] for r in rows])
        evals = statistics.fmean(r.get("unet_evals", 0) for r in rows)
        lengths = sorted({int(k) for r in rows for k in r["length"]})
        by_len = ", ".join(f"{n}: {statistics.fmean(r['length'][n] for r in rows):.2f}"
                           for n in lengths)
        uce = _rows(runs, name, "uce")
        uce_text = (f"{uce[0]['efficacy']:.2f} / {uce[0]['retention']:.3f}" if uce else "")
        bar = floor + EFFICACY_MARGIN
        worst, concept_ok = worst_concept(rows)
        ok = (e <= bar and rm >= RETENTION_BAR and eh <= HALF_WIDTH_BAR
              and rh <= HALF_WIDTH_BAR and w <= bar and concept_ok)
        lines.append(f"| {name} | {floor:.2f} | {len(rows)} | {e:.2f} ± {eh:.2f} | "
                     f"{rm:.3f} ± {rh:.3f} | {w:.2f} ± {wh:.2f} | {evals:.0f} | {by_len} | {uce_text} | "
                     f"{worst} | {'met' if ok else 'not met'} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(_label(r) for r in runs):
        rows = _rows(runs, name, "train")
        if rows:
            ex, eh = mean_ci([r["efficacy"] - r["floor"] for r in rows])
            rx, rh = mean_ci([r["retention"] for r in rows])
            ax.errorbar(ex, rx, xerr=eh, yerr=rh, fmt="o", capsize=3, label=name)
        uce = _rows(runs, name, "uce")
        if uce:
            ax.plot(uce[0]["efficacy"] - uce[0]["floor"], uce[0]["retention"], "x", color="grey")
    ax.axvline(EFFICACY_MARGIN, color="red", lw=0.8, ls="--")
    ax.axhline(RETENTION_BAR, color="red", lw=0.8, ls="--")
    ax.set_xlabel("efficacy − unconditional floor ↓ (x: UCE)")
    ax.set_ylabel("retention ↑")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
