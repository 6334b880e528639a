"""``unlearn demo``: erase one concept from the embedded toy model and show before/after.

Runs offline on the CPU with the committed toy model, judges and tiny CLIP. Writes ``grid.png``
(rows = prompts, columns = seeds; before | after; erased prompts first, then retained prompts) and
``summary.json`` into ``--out``, and prints efficacy, retention and CLIP scores.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    """Efficacy, retention and CLIP score of the erasure so far, at a few steps, scored by the
    worker process while training goes on.

    At a checkpoint step it copies the weights that would be returned if training stopped there
    (``StepInfo.weights``: the EMA teacher) and sends them to the worker (``_score_so_far``),
    whose line ``write`` prints when it is ready; ``finish()`` waits for the lines not yet
    printed. ``seconds`` is the worker's time spent on them."""

    def __init__(self, worker, concept: str, steps: int, write) -> None:
        self.worker, self.concept, self.steps, self.write = worker, concept, steps, write
        self.at = sorted({max(1, round(f * steps)) for f in CHECKPOINTS} - {steps})
        self.seconds = 0.0
        self.pending: list = []

    def __call__(self, info, config) -> None:
        if info.step in self.at and info.weights is not None:
            self.pending.append(self.worker.apply_async(
                _score_so_far, (self.concept, info.step, self.steps, config, info.weights()),
                callback=self._done))

    def _done(self, line_and_seconds: tuple[str, float]) -> None:
        line, seconds = line_and_seconds
        self.seconds += seconds
        self.write(line)

    def finish(self) -> None:
        for job in self.pending:
            job.get()  # re-raises the worker's error, if any


# The worker process: a second Python process, so that its work runs beside training on the
# other core without taking turns with it for the interpreter lock (with a thread, training ran
# 38% slower while the other thread generated images). It loads its own toy model, judges and
# tiny CLIP; the main process sends it prompts and erasures (the deltas: 224 KiB for the toy
# settings' 14 to_k/to_v layers) and gets back scores and images.
_WORLD: dict = {}


def start_worker(threads: int):
    """A one-process pool (spawned: a fresh interpreter, whatever the parent has running) that
    loads the toy world while the main process loads its own."""
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(1, initializer=_load_world,
                                                     initargs=(threads,))


def _load_world(threads: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the main process to handle
    try:
        from ..threads import parameter_count, set_threads
        from ..toyworld import load_judges, load_toy_model
        from ..toyworld.evaluate import toy_clip

        model = load_toy_model(verify=True)
        set_threads(threads, parameter_count(model.unet, model.text_encoder))
        _WORLD.update(model=model, judges=load_judges(verify=True))
        toy_clip()
    except Exception as e:  # raised by the first job (a pool whose start fails would restart
        _WORLD["error"] = e  # its worker forever, and no job would ever end)


def _world() -> dict:
    if "error" in _WORLD:
        raise _WORLD["error"]
    return _WORLD


def _measure_untouched(concept: str, grid_prompts: list[str]):
    """The untouched model's evaluation, unconditional floor and grid images; its scores on the
    captions scored during training are kept here (the erasure so far is compared with them)."""
    import torch

    from ..toyworld.evaluate import evaluate, uncond_rate

    model, judges = _world()["model"], _WORLD["judges"]
    before = evaluate(model, judges, [concept], **EVAL)
    probe = _WORLD["probe"] = _probe_set(concept)
    _WORLD["untouched_scores"] = _probe_scores(probe, concept, torch.cat(
        [before.images_erased[: probe["n"]], before.images_retained[probe["keep"]]]))
    return before, uncond_rate(model, judges, [concept], n=48), _grid_images(model, grid_prompts)


def _score_so_far(concept: str, step: int, steps: int, config, deltas) -> tuple[str, float]:
    """The line printed for the erasure so far, and the seconds it took to score."""
    started = time.perf_counter()
    eff, acc, clip = _probe_scores(_WORLD["probe"], concept, config=config, deltas=deltas)
    eff0, acc0, clip0 = _WORLD["untouched_scores"]  # scored once, by _measure_untouched
    line = (f"step {step}/{steps}, erasure so far (EMA teacher): still judged {concept} "
            f"{eff:.2f} (untouched {eff0:.2f}), retention {acc / max(acc0, 1e-9):.2f}, CLIP score "
            f"erased prompts {clip:.1f} (untouched {clip0:.1f})")
    return line, time.perf_counter() - started


def _retained_after(concept: str, config, deltas):
    """The final evaluation's retained images under the erasure (the main process makes the
    erased ones and the grid meanwhile: about as many images)."""
    from ..result import EraseResult
    from ..toyworld.evaluate import evaluation_images

    return evaluation_images(_world()["model"], [concept], "retained",
                             EraseResult(deltas=deltas, config=config),
                             repeats=EVAL["retained_repeats"])


def _probe_set(concept: str) -> dict:
    """The captions scored during training: the first images of the untouched model's
    evaluation, one per erased caption and RETAINED_CHECK retained captions (so the untouched
    scores cost nothing), with their labels."""
    import torch

    from ..toyworld.evaluate import split_prompts

    erased, retained = split_prompts([concept])
    keep = list(range(len(retained)))[:: max(1, len(retained) // RETAINED_CHECK)][:RETAINED_CHECK]
    return {"n": len(erased), "keep": keep,
            "prompts": list(erased.prompts) + [retained.prompts[i] for i in keep],
            "labels": {a: torch.cat([erased.labels()[a], retained.labels()[a][keep]])
                       for a in AXES}}


def _probe_scores(probe: dict, concept: str, images=None, config=None,
                  deltas=None) -> tuple[float, float, float]:
    """(efficacy, mean accuracy on the retained captions, CLIP score of the erased prompts) of
    ``images``, or of the worker's model generating them now with ``deltas`` applied."""
    from ..metrics.clip_score import clip_score
    from ..metrics.generation import unit_from_signed
    from ..result import EraseResult
    from ..toyworld.erasure import toy_denoiser
    from ..toyworld.evaluate import EVAL_SEED, RETAINED_SEED_OFFSET, concept_axis, toy_clip
    from ..toyworld.generation import generate
    from ..toyworld.judges import judge

    n, labels, model = probe["n"], probe["labels"], _world()["model"]
    if images is None:
        seeds = [EVAL_SEED + i for i in range(n)]
        seeds += [EVAL_SEED + RETAINED_SEED_OFFSET + i for i in probe["keep"]]
        with EraseResult(deltas=deltas, config=config).applied(toy_denoiser(model)):
            images = generate(model, probe["prompts"], seeds)
    pred = judge(images, _WORLD["judges"])
    axis, idx = concept_axis(concept)
    mask = labels[axis][:n] == idx
    efficacy = int(((pred[axis][:n] == idx) & mask).sum()) / max(int(mask.sum()), 1)
    kept = [float((pred[a][n:] == labels[a][n:]).float().mean()) for a in AXES]
    clip = clip_score(toy_clip(), unit_from_signed(images[:n]), probe["prompts"][:n],
                      template="{}").mean
    return efficacy, sum(kept) / len(kept), clip


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


def run(args: argparse.Namespace) -> int:
    config, out, targets = _checked(args)
    start = time.perf_counter()
    worker = start_worker(args.threads)  # loads its own copy while this process loads
    try:
        return _run(args, config, out, targets, start, worker)
    finally:
        worker.terminate()


def _run(args, config, out, targets, start, worker) -> int:
    from tqdm import tqdm

    from ..threads import parameter_count, set_threads
    from ..toyworld import load_judges, load_toy_model
    from ..toyworld.erasure import erase_toy, toy_denoiser
    from ..toyworld.evaluate import evaluate, evaluation_images, retention_ratio, split_prompts

    model, judges = load_toy_model(verify=True), load_judges(verify=True)
    threads = set_threads(args.threads, parameter_count(model.unet, model.text_encoder))
    print(f"erasing {args.concept!r} from the toy model ({config.method}, loss {config.loss}, "
          f"objective {config.objective}, {config.steps} steps, {threads} CPU "
          f"thread{'s' if threads > 1 else ''})", flush=True)
    erased_set, retained_set = split_prompts([args.concept])
    erased_rows, kept_rows = varied_prompts(erased_set), varied_prompts(retained_set)
    measured = worker.apply_async(_measure_untouched, (args.concept, erased_rows + kept_rows))
    bar = tqdm(total=config.steps, desc="erasing", unit="step", disable=config.method == "uce")
    monitor = (TrainingMonitor(worker, args.concept, config.steps, bar.write)
               if config.method == "train" else None)

    def progress(info) -> None:
        bar.set_postfix(loss=f"{info.loss:.3g}", refresh=False)  # drawn by update, rate-limited
        bar.update(1)
        if monitor is not None:
            monitor(info, config)

    try:
        result = erase_toy(model, config, progress)
        if monitor is not None:
            monitor.finish()
    finally:
        bar.close()
    scoring_seconds = monitor.seconds if monitor is not None else 0.0
    train_seconds = result.metadata["seconds"]
    # the final images in two halves of about equal work: the retained ones in the worker, the
    # erased ones and the grid here
    retained = worker.apply_async(_retained_after, (args.concept, config, result.deltas))
    erased = evaluation_images(model, [args.concept], "erased", result, repeats=EVAL["repeats"])
    with result.applied(toy_denoiser(model)):
        grid_after = _grid_images(model, erased_rows + kept_rows)
    after = evaluate(model, judges, [args.concept], result, **EVAL,
                     images=(erased, retained.get()))
    before, floor, grid_before = measured.get()
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
    print(f"{seconds:.1f} s in all ({s['train_seconds']:.1f} s training; beside it, "
          f"{scoring_seconds:.1f} s scoring the erasure so far); wrote {targets[0]} and "
          f"{targets[1]}", file=sys.stdout)


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
