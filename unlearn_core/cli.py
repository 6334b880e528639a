"""The ``unlearn`` command line.

``unlearn erase`` erases concepts from a local diffusers-format SD-1.x folder and writes a LoRA
or diff file. Its flags are the fields of ``EraseConfig`` with their own help text. Other
subcommands (demo, bench, score, probe, attack) live beside the code they drive and are registered in
``SUBCOMMANDS``; each module offers ``add_arguments(parser)`` and ``run(args) -> int``.

Parsing is torch-free: ``--help`` and argument errors answer in a fraction of a second, and each
subcommand imports torch, diffusers or open_clip only when it runs. A failure the user can cause
ends in one line naming the input and the fix, with exit code 2; ``--debug`` (or
``UNLEARN_DEBUG=1``) prints the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from .config import PRESETS, EraseConfig, config_fields
from .devices import DEVICE_HELP, resolve_device
from .errors import ConfigError, UnlearnError

# name -> (module, one-line help). Modules are imported only when their subcommand runs.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("unlearn_core.toyworld.demo", "erase a concept from the embedded toy model and show "
             "before/after (runs offline, no weights needed)"),
    "bench": ("unlearn_core.toyworld.bench", "erasure-quality benchmark on the toy world"),
    "score": ("unlearn_core.metrics.cli", "CLIP score of images on disk"),
    "probe": ("unlearn_core.metrics.probe_cli", "partial-diffusion probe of an erasure"),
    "attack": ("unlearn_core.attacks.cli", "red-team an erasure: try to bring the concept back "
               "(concept inversion, prompt attack, probe) and report the attack success rate"),
}


DEBUG_ENV = "UNLEARN_DEBUG"
DEBUG_HELP = f"on an error, print the full traceback too (or set {DEBUG_ENV}=1)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" where a flag has a default worth showing, not "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _escape(text: str) -> str:
    """Help text that argparse shows as written (argparse %-formats help strings)."""
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """One flag per EraseConfig field, named after it, with the field's help text."""
    for name, f in config_fields().items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        meta = f.metadata
        help_text = _escape(meta["help"] + f" (default: {f.default!r})")
        if isinstance(f.default, tuple):
            single = "--" + ("concept" if name == "concepts" else name.replace("_", "-")[:-1])
            parser.add_argument(single, dest=name, action="append", default=None,
                                help=help_text + " Repeat the flag for several.")
        elif isinstance(f.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=type(f.default), default=None,
                                choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace, base: dict | None = None, **overrides
                     ) -> EraseConfig:
    """The flags given, over ``--preset``'s settings (where the parser has one), over ``base``
    (e.g. the toy model's settings), over defaults."""
    preset = getattr(args, "preset", None)
    values = dict(base or {})
    values.update(PRESETS[preset] if preset else {})
    for name in config_fields():
        v = getattr(args, name, None)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    values.update(overrides)
    return EraseConfig(**values)


def _erase_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("erase", help="erase concepts from a local SD-1.x model; write a LoRA file",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="local diffusers-format SD-1.x folder, or 'toy' for the embedded toy "
                        "model (no weights needed; concepts are toy-world words such as cross, "
                        "red or dotted; its settings are the toy world's, under your flags)")
    p.add_argument("--concepts-file", default=None, metavar="FILE",
                   help="a UTF-8 text file of concepts to erase, one a line (blank lines and "
                        "lines starting with # are skipped), added to any --concept")
    p.add_argument("--output", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--svd-rank", type=int, default=0,
                   help="with --parametrization full: compress the delta into a LoRA of this rank")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="named settings under the flags you give: sdd-paper = the official SDD "
                        "loop (50-step trajectories, batch 1, slow); fast = the defaults; "
                        "fast-lora = the defaults with a rank-8 LoRA (less memory)")
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


def run_erase(args: argparse.Namespace) -> int:
    if args.concepts_file is not None:
        args.concepts = [*(args.concepts or []), *read_concepts_file(args.concepts_file)]
    if args.model == "toy":
        return run_erase_toy(args)
    return run_erase_sd1(args)


def run_erase_toy(args: argparse.Namespace) -> int:
    """``unlearn erase --model toy``: the embedded toy model, so the command runs anywhere."""
    from tqdm import tqdm

    from .files import check_output_path, save_erasure
    from .threads import parameter_count, set_threads
    from .toyworld.settings import TOY_SETTINGS

    config = config_from_args(args, base=TOY_SETTINGS)
    if args.svd_rank:
        raise ConfigError("--svd-rank", args.svd_rank, "is for SD-1.x files",
                          "drop --svd-rank with --model toy")
    if args.device not in ("auto", "cpu"):
        raise ConfigError("--device", args.device, "the toy model runs on the CPU",
                          "drop --device with --model toy")
    from .toyworld.phrasings import axis_of

    for concept in config.concepts:
        axis_of(concept)  # a toy-world word, or a ConfigError naming the vocabulary
    out = check_output_path(args.output, args.overwrite, "--output")
    from .toyworld import load_toy_model
    from .toyworld.erasure import erase_toy

    start = time.perf_counter()
    model = load_toy_model()
    set_threads(0, parameter_count(model.unet, model.text_encoder))
    bar = tqdm(total=config.steps, desc="erasing (toy)", unit="step",
               disable=config.method == "uce")
    def progress(info) -> None:  # returns None: a true value would cancel the run
        bar.update(1)

    try:
        result = erase_toy(model, config, callback=progress)
    finally:
        bar.close()
    out = save_erasure(out, result.deltas, dict(result.metadata), overwrite=args.overwrite)
    print(f"done: {config.method} on the toy model, {time.perf_counter() - start:.1f} s, "
          f"wrote {out}")
    return 0


def run_erase_sd1(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .conditioning import encode_conditioning
    from .errors import OutputExistsError
    from .files import check_output_path, compress_deltas, save_erasure, save_erasure_beside, svd_metadata
    from .prompts import check_config_prompts
    from .sd1 import SD1Pipeline, check_sd1_folder, check_training_layers, load_tokenizer, token_counter
    from .trainer import erase

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
    start = time.perf_counter()
    pipe = SD1Pipeline(args.model, device=device)
    cond = encode_conditioning(pipe.encode, config, pipe.last_token, pipe.count_tokens)
    bar = tqdm(total=config.steps, desc="erasing", unit="step", disable=config.method == "uce")

    def progress(info) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{info.loss:.3g}")

    try:
        result = erase(pipe.denoiser, cond, config, callback=progress)
    finally:
        bar.close()
    deltas = result.deltas
    meta = dict(result.metadata)
    if args.svd_rank and config.parametrization == "full":
        deltas, errors = compress_deltas(deltas, args.svd_rank)
        svd_meta, note = svd_metadata(args.svd_rank, deltas, errors)
        meta.update(svd_meta)
        print(f"SVD rank {svd_meta['svd_rank']}: worst relative reconstruction error "
              f"{svd_meta['svd_max_relative_error']:.3g}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    try:
        out = save_erasure(out, deltas, meta, overwrite=args.overwrite)
    except OutputExistsError:  # the name was taken during the run: keep the work beside it
        taken = out
        out = save_erasure_beside(taken, deltas, meta)
        print(f"unlearn erase: warning: --output {taken} was created by something else while "
              f"this run was working; it was left as it is and the erasure was written to {out}",
              file=sys.stderr)
    if result.loss_history:
        what = f"{config.steps} steps, final loss {result.loss_history[-1]:.4g}"
    else:
        what = f"closed-form UCE edit, condition number {result.metadata['condition_number']:.3g}"
    print(f"done: {what}, {time.perf_counter() - start:.1f} s, wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _erase_parser(sub)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    for p in sub.choices.values():  # --debug after the subcommand too
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def describe_failure(error: BaseException) -> tuple[str, int]:
    """(one-line message, exit code) for an error that reached the command line.

    2: the input or the machine (a bad value, an unreadable file, no memory); 1: anything else,
    which is a bug in unlearn, not something the user did.
    """
    if isinstance(error, UnlearnError):
        return str(error), 2
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return ("out of memory. Fix: a smaller --resolution or --batch-size, "
                "--gradient-checkpointing, --parametrization lora, or --device cpu"), 2
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        what = error.strerror or str(error)
        return f"{where}{what}. Fix: check the path, its permissions and the free disk space", 2
    return (f"unexpected {type(error).__name__}: {error}. This is a bug in unlearn, not in your "
            f"input; run again with --debug and report the traceback"), 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        if args.command == "erase":
            return run_erase(args)
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("cancelled; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        message, code = describe_failure(e)
        print(f"unlearn {args.command}: error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
