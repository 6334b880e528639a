"""``unlearn bench``: the erasure-quality benchmark on the toy world.

Tasks (one shape; one texture, the "style" analogue; one colour; three concepts at once) x
methods (trained: losses x objectives; and UCE) x training seeds, at a fixed step budget. Each run
is evaluated on the same prompts and the same evaluation noise (common random numbers) as the
untouched model. Reported per cell: efficacy, retention, CLIP score on erased and retained
prompts, wall time and UNet evaluations, as mean and 95% interval over seeds (Student t); a task
of several concepts adds a line per concept, its efficacy on the captions naming it.
Writes ``bench.md`` (table), ``bench.json`` (every run) and ``bench.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..metrics.stats import mean_ci
from ..threads import THREADS_HELP, check_threads
from ..toyworld.settings import SET_WITH_DEFAULT_STEPS, TASKS, TOY_SETTINGS
from .common import parse_settings

LOSSES_DEFAULT = ("l2", "jensen_shannon", "cramer_wold")
# --quick: the benchmark's flags it sets, and config settings for its trained runs (under --set).
# 200 steps with the EMA teacher at decay 0.95: the returned teacher moves 1 - 0.95^200 = all of
# the way to the student (at the full setting's 0.99 it would move 87%; 30 steps at 0.99 moved it
# 26% and erased nothing). Measured on "cross", training seeds 0-3, 12 erased and 36 retained
# images: efficacy 1.00 -> 0.17, 0.25, 0.25, 0.42; retention 0.90-0.94.
QUICK: dict[str, Any] = dict(tasks="shape", losses="l2", objectives="esd", seeds=1, steps=200,
                             repeats=1)
QUICK_SETTINGS: dict[str, Any] = dict(ema_decay=0.95)
OBJECTIVES_DEFAULT = ("sdd", "esd")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--concepts", metavar="all|A,B+C",
                   help="instead of --tasks: one row per toy concept erased alone ('all': every "
                   "shape, colour and texture), or several erased together joined by '+'")
    p.add_argument("--losses", default=",".join(LOSSES_DEFAULT), help="comma list of losses")
    p.add_argument("--objectives", default=",".join(OBJECTIVES_DEFAULT), help="sdd, esd")
    p.add_argument("--uce", action=argparse.BooleanOptionalAction, default=True,
                   help="add UCE as a row")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per cell")
    p.add_argument("--steps", type=int, default=None,
                   help="step budget per run (default: the engine's, as `unlearn erase --model "
                   f"toy` gives it: {TOY_SETTINGS['steps']}, and {SET_WITH_DEFAULT_STEPS} for a "
                   "set that holds a default value or erases every texture)")
    p.add_argument("--repeats", type=int, default=2,
                   help="evaluation images per caption (erased and retained sets)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field for every trained run (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help=f"a few minutes: one task (shape), l2 + sdd and UCE, 1 seed, {QUICK['steps']} "
                   f"steps with {_settings_text(QUICK_SETTINGS)} (settings that erase in that "
                   "budget), small evaluation sets")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)


# Config fields the benchmark sweeps per run from its own flags; --set may not give them too.
# (steps is one value for every run: --set steps=N is the same as --steps N.)
_OWN_FLAGS = {"seed": "--seeds N", "loss": "--losses", "objective": "--objectives",
              "concepts": "--tasks"}


def _plan(args: argparse.Namespace) -> tuple[list[str], list[tuple[str, str, str]], dict]:
    """(tasks, methods, config overrides of the trained runs) from the flags, every config checked
    before any work; ``--quick`` and ``--set steps=N`` are applied to ``args``."""
    from ..toyworld.erasure import toy_config

    quick_settings: dict[str, Any] = {}
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        quick_settings = dict(QUICK_SETTINGS)
    overrides = quick_settings | parse_settings(args.set, own_flags=_OWN_FLAGS)
    args.steps = overrides.pop("steps", args.steps)
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps), ("--repeats", args.repeats)):
        if value is not None and value < 1:
            raise ConfigError(flag, value, "must be 1 or more", f"give {flag} 1 or more")
    check_threads(args.threads)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.concepts is not None:
        tasks = concept_tasks(args.concepts)
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    objectives = [x.strip() for x in args.objectives.split(",") if x.strip()]
    for t in tasks:
        if t not in TASKS and args.concepts is None:
            raise ConfigError("--tasks", t, "unknown task", f"use {', '.join(TASKS)}")
    if not tasks:
        raise ConfigError("--tasks", args.tasks, "no task given", f"use {', '.join(TASKS)}")
    methods = [("train", loss, obj) for loss in losses for obj in objectives]
    if args.uce:
        methods.append(("uce", "-", "-"))
    if not methods:
        raise ConfigError("--losses", args.losses, "nothing to run", "give a loss and an objective, "
                          "or keep --uce")
    for _, loss, obj in methods:  # validate every config before any work
        if loss != "-":
            toy_config(["cross"], loss=loss, objective=obj, **_steps(args), **_cw(loss),
                       **overrides)
    return tasks, methods, overrides


def _bench_task(model, judges, task: str, methods, overrides: dict, args: argparse.Namespace
                ) -> tuple[dict, list[dict]]:
    """The untouched model's figures for one task, and one row per (method, seed)."""
    from ..toyworld.erasure import erase_toy, toy_config
    from ..toyworld.evaluate import evaluate, retention_ratio, uncond_rate

    concepts = TASKS.get(task) or tuple(task.split("+"))
    base = evaluate(model, judges, concepts, repeats=args.repeats)
    floor = uncond_rate(model, judges, concepts)
    baseline = {"efficacy": base.efficacy, "accuracy": base.retention_accuracy,
                "clip_erased": base.clip_erased, "clip_retained": base.clip_retained,
                "uncond_rate": floor, "efficacy_by_concept": _by_concept(base, concepts)}
    print(f"[{task}] untouched: efficacy {base.efficacy:.2f}, uncond {floor:.2f}, accuracy "
          f"{ {k: round(v, 3) for k, v in base.retention_accuracy.items()} }", flush=True)
    rows = []
    for method, loss, obj in methods:
        seeds = range(args.seeds) if method == "train" else range(1)  # UCE is deterministic
        for seed in seeds:
            if method == "uce":
                cfg = toy_config(concepts, method="uce", seed=seed)
            else:
                # with no --steps, the model decides them as for `unlearn erase --model toy`
                cfg = toy_config(concepts, model, loss=loss, objective=obj, seed=seed,
                                 **_steps(args), **_cw(loss), **overrides)
            t0 = time.perf_counter()
            res = erase_toy(model, cfg)
            seconds = time.perf_counter() - t0
            ev = evaluate(model, judges, concepts, res, repeats=args.repeats)
            row = {
                "task": task, "method": method, "loss": loss, "objective": obj, "seed": seed,
                "efficacy": ev.efficacy, "efficacy_by_concept": _by_concept(ev, concepts),
                "retention": retention_ratio(ev, base),
                "clip_erased": ev.clip_erased, "clip_retained": ev.clip_retained,
                "seconds": seconds,
                "unet_evals": res.metadata["unet_evals_nograd"] + res.metadata["unet_evals_grad"],
                "config": cfg.to_dict(),
            }
            rows.append(row)
            print(f"  {method:5s} {loss:15s} {obj:4s} seed {seed}: efficacy "
                  f"{row['efficacy']:.2f} retention {row['retention']:.3f} "
                  f"{cfg.steps} steps {seconds:.1f} s", flush=True)
    return baseline, rows


def _by_concept(evaluation, concepts) -> dict[str, float]:
    """A set's efficacy per concept (on the captions naming it): the pooled figure can hide one
    concept left behind the others' zeros. Empty for a single concept."""
    return dict(evaluation.efficacy_by_concept) if len(concepts) > 1 else {}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..threads import parameter_count, set_threads
    from ..toyworld import load_judges, load_toy_model

    tasks, methods, overrides = _plan(args)
    model, judges = load_toy_model(verify=True), load_judges(verify=True)
    set_threads(args.threads, parameter_count(model.unet, model.text_encoder))
    args.out.mkdir(parents=True, exist_ok=True)
    runs, baselines = [], {}
    started = time.perf_counter()
    for task in tasks:
        baselines[task], rows = _bench_task(model, judges, task, methods, overrides, args)
        runs += rows
    table = markdown_table(runs, baselines)
    header = (f"Command: `unlearn bench {_argline(args)}`  \n"
              f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
              f"torch {torch.__version__}; date {datetime.now(timezone.utc):%Y-%m-%d}; "
              f"{time.perf_counter() - started:.0f} s in all.\n\n")
    (args.out / "bench.md").write_text(header + table)
    (args.out / "bench.json").write_text(json.dumps({"runs": runs, "baselines": baselines},
                                                    indent=1))
    plot(runs, args.out / "bench.png")
    print(header + table)
    return 0


def concept_tasks(text: str) -> list[str]:
    """The tasks of ``--concepts``: 'all' = every vocabulary item alone; else the comma list, each
    item a concept or several joined by '+' (checked against the vocabulary)."""
    from ..toyworld.settings import VOCABULARY

    if text.strip() == "all":
        return list(VOCABULARY)
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--concepts", text, "no concept given", "give 'all' or a comma list")
    words = list(VOCABULARY)
    for task in tasks:
        for concept in task.split("+"):
            if concept not in words:
                raise ConfigError("--concepts", concept, "not a toy-world concept",
                                  f"use 'all' or some of: {', '.join(words)}")
    return tasks


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _steps(args: argparse.Namespace) -> dict:
    return {} if args.steps is None else {"steps": args.steps}


def _cw(loss: str) -> dict:
    return {"batch_size": max(2, TOY_SETTINGS["batch_size"])} if loss == "cramer_wold" else {}


def _argline(args: argparse.Namespace) -> str:
    if args.quick:
        return " ".join(["--quick", *(f"--set {s}" for s in args.set)])
    chosen = f"--concepts {args.concepts}" if args.concepts is not None else f"--tasks {args.tasks}"
    parts = [chosen, f"--losses {args.losses}", f"--objectives {args.objectives}",
             f"--seeds {args.seeds}", f"--repeats {args.repeats}"]
    if args.steps is not None:
        parts.append(f"--steps {args.steps}")
    parts += [f"--set {s}" for s in args.set]
    return " ".join(parts) + ("" if args.uce else " --no-uce")


def _ci_text(values: list[float], fmt: str) -> str:
    """A table cell: the mean ± 95% half-width over the seeds, or the one value."""
    m, h = mean_ci(values)
    return f"{m:{fmt}} ± {h:{fmt}}" if len(values) > 1 else f"{m:{fmt}}"


def markdown_table(runs: list[dict], baselines: dict) -> str:
    lines = ["| task | method | loss | objective | n | efficacy ↓ | retention ↑ | CLIP erased ↓ | "
             "CLIP retained | seconds | UNet evals |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, base in baselines.items():
        lines.append(f"| {task} | untouched | | | | {base['efficacy']:.2f} (uncond "
                     f"{base['uncond_rate']:.2f}) | 1 | {base['clip_erased']:.1f} | "
                     f"{base['clip_retained']:.1f} | | |")
        keys = []
        for r in runs:
            k = (r["method"], r["loss"], r["objective"])
            if r["task"] == task and k not in keys:
                keys.append(k)
        for k in keys:
            rows = [r for r in runs if r["task"] == task and (r["method"], r["loss"],
                                                               r["objective"]) == k]

            def cell(field: str, fmt: str, rows: list[dict] = rows) -> str:
                return _ci_text([r[field] for r in rows], fmt)

            lines.append(f"| {task} | {k[0]} | {k[1]} | {k[2]} | {len(rows)} | "
                         f"{cell('efficacy', '.2f')} | {cell('retention', '.3f')} | "
                         f"{cell('clip_erased', '.1f')} | {cell('clip_retained', '.1f')} | "
                         f"{cell('seconds', '.1f')} | {cell('unet_evals', '.0f')} |")
            # a set: each concept on the captions naming it, beside its untouched figure
            for concept in rows[0].get("efficacy_by_concept", {}):
                value = _ci_text([r["efficacy_by_concept"][concept] for r in rows], ".2f")
                before = base.get("efficacy_by_concept", {}).get(concept)
                was = "" if before is None else f" (untouched {before:.2f})"
                lines.append(f"| {task}: {concept} | {k[0]} | {k[1]} | {k[2]} | {len(rows)} | "
                             f"{value}{was} | | | | | |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    cols = min(4, len(tasks))  # --concepts all: 11 panels in rows of four
    rows_n = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.8 * rows_n), squeeze=False)
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes.flat, tasks):
        keys = list(dict.fromkeys((r["method"], r["loss"], r["objective"]) for r in runs
                                  if r["task"] == task))
        for k in keys:
            rows = [r for r in runs if r["task"] == task and (r["method"], r["loss"],
                                                               r["objective"]) == k]
            ex, eh = mean_ci([r["efficacy"] for r in rows])
            rx, rh = mean_ci([r["retention"] for r in rows])
            label = "uce" if k[0] == "uce" else f"{k[1]}/{k[2]}"
            ax.errorbar(ex, rx, xerr=eh, yerr=rh, fmt="o", capsize=3, label=label)
        ax.set_title(task)
        ax.set_xlabel("efficacy (still judged concept) ↓")
        ax.set_ylabel("retention ↑")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
