"""``unlearn erase``: erase concepts from a local diffusers-format SD-1.x folder (or the embedded
toy model) and write a LoRA or diff file. Its flags are the fields of ``EraseConfig``, with the
fields' own help text (``cli.common.add_config_arguments``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..config import RECIPES
from ..devices import DEVICE_HELP, resolve_device
from ..errors import ConfigError
from ..toyworld.settings import SET_WITH_DEFAULT_STEPS, TOY_SETTINGS
from .common import add_clip_arguments, add_config_arguments, config_from_args
from .run_options import add_run_arguments, plan_run


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="local diffusers-format SD-1.x folder, or 'toy' for the embedded toy "
                        "model (no weights needed; concepts are toy-world words such as cross, "
                        "red or dotted; its settings are the toy world's, under your flags: "
                        f"{TOY_SETTINGS['steps']} steps, {SET_WITH_DEFAULT_STEPS} for a set that "
                        "holds a value the model draws by default, such as circle or solid, "
                        "or erases every texture)")
    p.add_argument("--concepts-file", default=None, metavar="FILE",
                   help="a UTF-8 text file of concepts to erase, one a line (blank lines and "
                        "lines starting with # are skipped), added to any --concept")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--svd-rank", type=int, default=0,
                   help="with --parametrization full: compress the delta into a LoRA of this rank")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    # --preset: the flag's former name, still accepted (scripts and notes that use it keep working)
    p.add_argument("--recipe", "--preset", dest="recipe", choices=list(RECIPES), default=None,
                   help="named settings under the flags you give: sdd-paper = the official SDD "
                        "loop (50-step trajectories, batch 1, slow); fast = the defaults; "
                        "fast-lora = the defaults with a rank-8 LoRA (less memory)")
    judge = p.add_argument_group(
        "the judge of --judge-every on SD-1.x (the toy model brings its own judges)",
        "a local open_clip model scores each sampled image against the concept's name; an image "
        "shows the concept at a score of --judge-threshold or more")
    add_clip_arguments(judge)
    add_run_arguments(p)
    add_config_arguments(p)


def read_concepts_file(path: str) -> tuple[str, ...]:
    """The concepts of a ``--concepts-file``: one a line, blank lines and ``#`` comments skipped."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("--concepts-file", path, "is a folder" if file.is_dir()
                          else "the file does not exist", "give a text file, one concept a line")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--concepts-file", path, "is not UTF-8 text",
                          "save it as UTF-8 text, one concept a line") from None
    concepts = tuple(line.strip() for line in text.splitlines()
                     if line.strip() and not line.strip().startswith("#"))
    if not concepts:
        raise ConfigError("--concepts-file", path, "holds no concept",
                          "write one concept a line")
    return concepts


def run(args: argparse.Namespace) -> int:
    if args.concepts_file is not None:
        args.concepts = [*(args.concepts or []), *read_concepts_file(args.concepts_file)]
    if args.model == "toy":
        return run_erase_toy(args)
    return run_erase_sd1(args)


def run_erase_toy(args: argparse.Namespace) -> int:
    """``unlearn erase --model toy``: the embedded toy model, so the command runs anywhere."""
    from tqdm import tqdm

    from ..files import check_output_path, save_erasure
    from ..threads import parameter_count, set_threads

    config = config_from_args(args, base=TOY_SETTINGS)
    if args.svd_rank:
        raise ConfigError("--svd-rank", args.svd_rank, "is for SD-1.x files",
                          "drop --svd-rank with --model toy")
    if args.device not in ("auto", "cpu"):
        raise ConfigError("--device", args.device, "the toy model runs on the CPU",
                          "drop --device with --model toy")
    from ..toyworld.phrasings import axis_of

    for concept in config.concepts:
        axis_of(concept)  # a toy-world word, or a ConfigError naming the vocabulary
    out = check_output_path(args.output, args.overwrite, "--output")
    from ..toyworld import load_toy_model
    from ..toyworld.erasure import erase_toy, toy_steps

    start = time.perf_counter()
    model = load_toy_model()
    if args.steps is None and "steps" not in RECIPES.get(args.recipe or "", {}):
        # a set holding a default value's neighbours, or swapping a value its own target draws,
        # takes the toy world's longer default
        config = config.replace(steps=toy_steps(model, config))
    plan = plan_run(args, config, out)
    set_threads(0, parameter_count(model.unet, model.text_encoder))
    bar = tqdm(total=config.steps, desc="erasing (toy)", unit="step",
               disable=config.method == "uce" or not plan.is_main)
    try:
        result = erase_toy(model, config, callback=progress_to(bar), **plan.erase_options())
    finally:
        bar.close()
    report_check(result.metadata, plan.is_main)
    out = plan.publish(lambda: save_erasure(out, result.deltas, dict(result.metadata),
                                            overwrite=args.overwrite))
    if out is None:  # not the first process of a data-parallel run: it writes
        return 0
    ran = f", {len(result.loss_history)} steps" if result.loss_history else ""
    print(f"done: {config.method} on the toy model{ran}, {time.perf_counter() - start:.1f} s, "
          f"wrote {out}")
    return 0


def progress_to(bar):
    """The trainer's callback for a tqdm bar: loss, and the erasure check's residual when there
    is one; returns None (a true value would cancel the run)."""
    shown = {}

    def progress(info) -> None:
        bar.update(1)
        shown["loss"] = f"{info.loss:.3g}"
        if info.residuals is not None:
            shown["residual"] = f"{max(info.residuals):.3f}"
        if info.judged is not None:
            shown["judged"] = f"{max(info.judged):.2f}"
        bar.set_postfix(shown)

    return progress


def report_check(metadata: dict, is_main: bool) -> None:
    """Print the erasure check's (``--check-every``) and the judge's (``--judge-every``)
    outcome, once."""
    from ..erasure_check import describe
    from ..judge_stop import describe as describe_judged

    for line in (describe(metadata), describe_judged(metadata)):
        if line and is_main:
            print(line)


def check_judge_flags(args: argparse.Namespace, config) -> None:
    """``--judge-every`` on SD-1.x needs a local CLIP model; checked before loading."""
    if not config.judge_every:
        return
    if args.clip_weights is None or args.clip_arch is None:
        raise ConfigError("--judge-every", config.judge_every, "on SD-1.x the judge is a CLIP model "
                          "you have locally, and none was given",
                          "give --clip-arch and --clip-weights (and --judge-threshold, default "
                          "25), or drop --judge-every")
    if not Path(args.clip_weights).is_file():
        raise ConfigError("--clip-weights", args.clip_weights, "the file does not exist",
                          "give the path of a local open_clip weights file")


def sd_judge(args: argparse.Namespace, config, device: str):
    """The CLIP judge of ``--judge-every`` on SD-1.x: the folder's VAE decodes, CLIP scores."""
    from ..judge_stop import ScoreJudge
    from ..metrics.scorers import ClipScorer
    from .common import load_clip_from_args, load_vae, vae_decode

    vae = load_vae(args.model, device)
    scorer = ClipScorer(load_clip_from_args(args, device), args.template)
    return ScoreJudge(scorer, lambda latents: vae_decode(vae, latents), config.concepts,
                      config.judge_threshold)


def run_erase_sd1(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..conditioning import encode_conditioning
    from ..errors import OutputExistsError
    from ..files import check_output_path, compress_deltas, save_erasure, save_erasure_beside, svd_metadata
    from ..prompts import check_config_prompts
    from ..sd1 import SD1Pipeline, check_sd1_folder, check_training_layers, load_tokenizer, token_counter
    from ..trainer import erase

    # Everything cheap first: config, output path, model folder, prompt lengths (the tokenizer),
    # the LoRA rank against the layer sizes (unet/config.json). Then load.
    device = resolve_device(args.device)
    config = config_from_args(args)
    out = check_output_path(args.output, args.overwrite, "--output")
    if args.svd_rank < 0:
        raise ConfigError("--svd-rank", args.svd_rank, "must be >= 0", "give 0 (off) or a rank")
    if args.svd_rank and config.parametrization != "full":
        raise ConfigError("--svd-rank", args.svd_rank,
                          "compresses a full delta, and this run trains a LoRA already",
                          "drop --svd-rank (a LoRA's rank is --lora-rank), or train with "
                          "--parametrization full")
    check_sd1_folder(args.model)
    check_config_prompts(config, token_counter(load_tokenizer(args.model)))
    check_training_layers(args.model, config)
    check_judge_flags(args, config)
    plan = plan_run(args, config, out, device)
    start = time.perf_counter()
    pipe = SD1Pipeline(args.model, device=device)
    cond = encode_conditioning(pipe.encode, config, pipe.last_token, pipe.count_tokens)
    bar = tqdm(total=config.steps, desc="erasing", unit="step",
               disable=config.method == "uce" or not plan.is_main)
    try:
        judge = sd_judge(args, config, device) if config.judge_every else None
        result = erase(pipe.denoiser, cond, config, callback=progress_to(bar),
                       judge=judge, **plan.erase_options())
    finally:
        bar.close()
    report_check(result.metadata, plan.is_main)
    deltas = result.deltas
    meta = dict(result.metadata)
    if args.svd_rank and config.parametrization == "full" and plan.is_main:
        deltas, errors = compress_deltas(deltas, args.svd_rank)
        svd_meta, note = svd_metadata(args.svd_rank, deltas, errors)
        meta.update(svd_meta)
        print(f"SVD rank {svd_meta['svd_rank']}: worst relative reconstruction error "
              f"{svd_meta['svd_max_relative_error']:.3g}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    def write() -> Path:
        try:
            return save_erasure(out, deltas, meta, overwrite=args.overwrite)
        except OutputExistsError:  # the name was taken during the run: keep the work beside it
            beside = save_erasure_beside(out, deltas, meta)
            print(f"unlearn erase: warning: --output {out} was created by something else while "
                  f"this run was working; it was left as it is and the erasure was written to "
                  f"{beside}", file=sys.stderr)
            return beside

    written = plan.publish(write)
    if written is None:  # not the first process of a data-parallel run: it writes
        return 0
    if result.loss_history:
        what = f"{len(result.loss_history)} steps, final loss {result.loss_history[-1]:.4g}"
    else:
        what = f"closed-form UCE edit, condition number {result.metadata['condition_number']:.3g}"
    print(f"done: {what}, {time.perf_counter() - start:.1f} s, wrote {written}")
    return 0
