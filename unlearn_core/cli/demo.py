"""``unlearn demo``: erase one concept from the embedded toy model and show before/after.

Runs offline on the CPU with the committed toy model, judges and tiny CLIP. Writes ``grid.png``
(rows = prompts, columns = seeds; before | after; erased prompts first, then retained prompts) and
``summary.json`` into ``--out``, and prints efficacy, retention and CLIP scores.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, OutputExistsError
from ..threads import THREADS_HELP, check_threads
from ..toyworld.settings import AXES, TOY_SETTINGS

if TYPE_CHECKING:
    import torch

    from ..toyworld.generation import PromptSet

GRID_SEEDS = (0, 1, 2)
GRID_ROWS = 3  # erased and kept prompts each
# Evaluation sizes: 2 generations per erased caption, 1 per retained caption, 48 unconditional.
EVAL = dict(repeats=2, retained_repeats=1)
# Scores while training: at these fractions of the steps, on one image per erased caption and
# RETAINED_CHECK retained captions (about 2 s each on one core).
CHECKPOINTS = (1 / 3, 2 / 3)
RETAINED_CHECK = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    words = "; ".join(f"{axis}: {', '.join(values)}" for axis, values in AXES.items())
    p.add_argument("--concept", default="cross", help=f"toy concept to erase ({words})")
    p.add_argument("--loss", default="l2", help="l2, jensen_shannon, cramer_wold, "
                   "jensen_shannon_gaussian")
    p.add_argument("--objective", default="esd", help="esd (the engine's default: a target from the "
                   "frozen base) or sdd (the student's own target)")
    p.add_argument("--method", default="train", help="train or uce")
    p.add_argument("--steps", type=int, default=TOY_SETTINGS["steps"], help="training steps")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", type=Path, default=Path("unlearn-demo"), help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace grid.png/summary.json in --out if they exist")
    p.add_argument("--threads", type=int, default=0, help=THREADS_HELP)


def varied_prompts(prompts: PromptSet, k: int = GRID_ROWS) -> list[str]:
    """Up to ``k`` prompts of the set, each differing from those already picked on as many axes
    as it can (colour and texture for a shape, ...), so a grid shows what else an erasure kept.
    Works for a set of any size, in the set's order."""
    labels = prompts.labels()
    chosen: list[int] = []
    for _ in range(min(k, len(prompts))):
        def novelty(i: int) -> tuple[int, int]:
            differs = sum(all(int(labels[a][i]) != int(labels[a][j]) for j in chosen) for a in labels)
            return differs, -i

        chosen.append(max((i for i in range(len(prompts)) if i not in chosen), key=novelty))
    return [prompts.prompts[i] for i in sorted(chosen)]


class TrainingMonitor:
    """Efficacy, retention and CLIP score of the weights being trained, at a few steps.

    It scores the student, the weights the optimizer moves; the erasure returned at the end is
    their EMA teacher (``ema_decay``), which trails them by about 1/(1 - decay) steps. Captions and
    noise are those of the first images of the untouched model's evaluation (``untouched()``): one
    per erased caption and RETAINED_CHECK retained captions, so the untouched scores cost nothing.
    """

    def __init__(self, model, judges, concepts: list[str], steps: int, untouched, write) -> None:
        import torch

        from ..toyworld.evaluate import split_prompts

        erased, retained = split_prompts(concepts)
        self.n = len(erased)
        self.keep = list(range(len(retained)))[:: max(1, len(retained) // RETAINED_CHECK)][:RETAINED_CHECK]
        self.prompts = list(erased.prompts) + [retained.prompts[i] for i in self.keep]
        self.labels = {a: torch.cat([erased.labels()[a], retained.labels()[a][self.keep]]) for a in AXES}
        self.model, self.judges, self.concepts, self.write = model, judges, concepts, write
        self.at = sorted({max(1, round(f * steps)) for f in CHECKPOINTS} - {steps})
        self.steps = steps
        self.seconds = 0.0  # spent scoring during training
        self.untouched = untouched  # () -> the untouched model's Evaluation, when it is ready
        self.base: tuple[float, float, float] | None = None

    def scores(self, images: torch.Tensor | None = None) -> tuple[float, float, float]:
        """(efficacy, mean accuracy on the retained captions, CLIP score of the erased prompts) of
        ``images``, or of images the model generates now."""
        from ..metrics.clip_score import clip_score
        from ..metrics.generation import unit_from_signed
        from ..toyworld.evaluate import EVAL_SEED, RETAINED_SEED_OFFSET, concept_axis, toy_clip
        from ..toyworld.generation import generate
        from ..toyworld.judges import judge

        if images is None:
            seeds = [EVAL_SEED + i for i in range(self.n)]
            seeds += [EVAL_SEED + RETAINED_SEED_OFFSET + i for i in self.keep]
            images = generate(self.model, self.prompts, seeds)
        pred = judge(images, self.judges)
        n = self.n
        hits = pairs = 0
        for axis, idx in map(concept_axis, self.concepts):
            mask = self.labels[axis][:n] == idx
            hits += int(((pred[axis][:n] == idx) & mask).sum())
            pairs += int(mask.sum())
        kept = [float((pred[a][n:] == self.labels[a][n:]).float().mean()) for a in AXES]
        clip = clip_score(toy_clip(), unit_from_signed(images[:n]), self.prompts[:n],
                          template="{}").mean
        return hits / max(pairs, 1), sum(kept) / len(kept), clip

    def __call__(self, step: int) -> None:
        if step not in self.at:
            return
        started = time.perf_counter()
        eff, acc, clip = self.scores()
        if self.base is None:
            import torch

            before = self.untouched()
            self.base = self.scores(torch.cat([before.images_erased[: self.n],
                                               before.images_retained[self.keep]]))
        self.seconds += time.perf_counter() - started
        eff0, acc0, clip0 = self.base
        self.write(f"step {step}/{self.steps}, weights being trained: still judged "
                   f"{'/'.join(self.concepts)} {eff:.2f} (untouched {eff0:.2f}), retention "
                   f"{acc / max(acc0, 1e-9):.2f}, CLIP score erased prompts {clip:.1f} "
                   f"(untouched {clip0:.1f})")


def _grid_images(model, prompts: list[str]) -> torch.Tensor:
    """One image per (prompt, grid seed), prompt-major."""
    from ..toyworld.generation import generate

    return generate(model, [p for p in prompts for _ in GRID_SEEDS],
                    [s for _ in prompts for s in GRID_SEEDS])


def _grid(before: torch.Tensor, after: torch.Tensor, erased_prompts: list[str],
          retained_prompts: list[str]) -> torch.Tensor:
    from ..metrics.generation import unit_from_signed
    from ..metrics.images import labelled_grid

    prompts = erased_prompts + retained_prompts

    def block(x: torch.Tensor) -> torch.Tensor:
        return unit_from_signed(x).reshape(len(prompts), len(GRID_SEEDS), *x.shape[1:])

    labels = [f"{'erased' if i < len(erased_prompts) else 'kept'}: {p}"
              for i, p in enumerate(prompts)]
    return labelled_grid([("before", block(before)), ("after", block(after))], labels,
                         [f"seed {s}" for s in GRID_SEEDS], min_cell=48)


class Background:
    """``fn()`` in a daemon thread; ``result()`` waits for it and returns it, or raises its error.

    The demo measures the untouched model on a copy of it while the original trains: two
    single-threaded tasks use two cores without the lock-step waits of two threads per operation
    (which is what makes intra-op threads slow on a small model when the machine is busy). A daemon
    thread, so Ctrl-C does not wait for it."""

    def __init__(self, fn) -> None:
        self._done = threading.Event()
        self._value = self._error = None
        threading.Thread(target=self._run, args=(fn,), daemon=True, name="unlearn-untouched").start()

    def _run(self, fn) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # handed to the caller of result()
            self._error = e
        finally:
            self._done.set()

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..threads import parameter_count, set_threads
    from ..toyworld import load_judges, load_toy_model
    from ..toyworld.erasure import erase_toy, toy_denoiser
    from ..toyworld.evaluate import (
        evaluate,
        retention_ratio,
        split_prompts,
        toy_clip,
        uncond_rate,
    )

    config, out, targets = _checked(args)
    start = time.perf_counter()
    model, judges = load_toy_model(verify=True), load_judges(verify=True)
    threads = set_threads(args.threads, parameter_count(model.unet, model.text_encoder))
    print(f"erasing {args.concept!r} from the toy model ({config.method}, loss {config.loss}, "
          f"objective {config.objective}, {config.steps} steps, {threads} CPU "
          f"thread{'s' if threads > 1 else ''})", flush=True)
    erased_set, retained_set = split_prompts([args.concept])
    erased_rows, kept_rows = varied_prompts(erased_set), varied_prompts(retained_set)
    toy_clip()  # loaded once, before two threads use it
    # The trainer hooks its weight changes into model.unet; the copy stays as loaded.
    untouched = copy.deepcopy(model)

    def measure_untouched():
        return (evaluate(untouched, judges, [args.concept], **EVAL),
                uncond_rate(untouched, judges, [args.concept], n=48),
                _grid_images(untouched, erased_rows + kept_rows))

    measured = Background(measure_untouched)
    bar = tqdm(total=config.steps, desc="erasing", unit="step", disable=config.method == "uce")
    monitor = (TrainingMonitor(model, judges, [args.concept], config.steps,
                               lambda: measured.result()[0], bar.write)
               if config.method == "train" else None)

    def progress(info) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.3g}")
        if monitor is not None:
            monitor(info.step)

    try:
        result = erase_toy(model, config, progress)
    finally:
        bar.close()
    scoring_seconds = monitor.seconds if monitor is not None else 0.0
    train_seconds = round(result.metadata["seconds"] - scoring_seconds, 3)
    after = evaluate(model, judges, [args.concept], result, **EVAL)
    with result.applied(toy_denoiser(model)):
        grid_after = _grid_images(model, erased_rows + kept_rows)
    before, floor, grid_before = measured.result()
    base_eff = before.efficacy
    retention = retention_ratio(after, before)
    grid = _grid(grid_before, grid_after, erased_rows, kept_rows)
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
        "threads": threads,
        "unet_evals": result.metadata["unet_evals_nograd"] + result.metadata["unet_evals_grad"],
        "final_loss": result.loss_history[-1] if result.loss_history else None,
        "config": config.to_dict(),
    }
    _write(out, targets, grid, summary)
    _print_results(summary, config, seconds, scoring_seconds, targets)
    return 0


def _print_results(summary: dict, config, seconds: float, scoring_seconds: float,
                   targets: list[Path]) -> None:
    s = summary
    returned = "EMA teacher" if config.method == "train" and config.result == "teacher" else config.method
    print(f"erasure returned ({returned}): efficacy (still judged {s['concept']!r}) "
          f"{s['efficacy_before']:.2f} -> {s['efficacy']:.2f}  (unconditional floor "
          f"{s['uncond_rate']:.2f})")
    print(f"retention (accuracy on other prompts, relative): {s['retention']:.3f}  "
          f"per axis after {s['retention_accuracy']}")
    print(f"CLIP score erased prompts {s['clip_erased']['before']:.1f} -> "
          f"{s['clip_erased']['after']:.1f}, retained prompts {s['clip_retained']['before']:.1f} "
          f"-> {s['clip_retained']['after']:.1f}")
    print(f"{seconds:.1f} s in all ({s['train_seconds']:.1f} s training, {scoring_seconds:.1f} s "
          f"scoring while training); wrote {targets[0]} and {targets[1]}", file=sys.stdout)


def _checked(args: argparse.Namespace):
    """(config, output folder, output files), every flag checked before anything loads."""
    from ..toyworld.erasure import toy_config
    from ..toyworld.evaluate import concept_axis

    concept_axis(args.concept)  # cheap checks first
    check_threads(args.threads)
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
    return config, out, targets


def _write(out: Path, targets: list[Path], grid, summary: dict) -> None:
    """The grid and the summary, each written whole (a temporary file renamed) or not at all."""
    from ..files import replace_whole
    from ..metrics.images import save_png

    out.mkdir(parents=True, exist_ok=True)
    replace_whole(targets[0], lambda p: save_png(grid, p))
    replace_whole(targets[1], lambda p: p.write_text(json.dumps(summary, indent=1)))
