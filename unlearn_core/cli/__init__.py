"""The ``unlearn`` command line.

``unlearn erase`` erases concepts from a local diffusers-format SD-1.x folder and writes a LoRA
or diff file. Its flags are the fields of ``EraseConfig`` with their own help text. Every
subcommand (erase, demo, bench, score, probe, attack) is a module of this package, registered in
``SUBCOMMANDS``; each module offers ``add_arguments(parser)`` and ``run(args) -> int``, and calls
the library (``unlearn_core`` and its ``metrics``, ``attacks`` and ``toyworld`` packages) for the
work. Nothing in the library imports this package.

Parsing is torch-free: ``--help`` and argument errors answer in a fraction of a second. A
subcommand's module is imported only when that subcommand is parsed (its flags) or run, and it
imports torch, diffusers or open_clip only when it runs. A failure the user can cause ends in one
line naming the input and the fix, with exit code 2; ``--debug`` (or ``UNLEARN_DEBUG=1``) prints
the traceback as well.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from ..errors import UnlearnError

# name -> (module, one-line help). A module is imported only when its subcommand is parsed.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "erase": ("unlearn_core.cli.erase", "erase concepts from a local SD-1.x model; write a LoRA "
              "file"),
    "demo": ("unlearn_core.cli.demo", "erase a concept from the embedded toy model and show "
             "before/after (runs offline, no weights needed)"),
    "bench": ("unlearn_core.cli.bench", "erasure-quality benchmark on the toy world"),
    "score": ("unlearn_core.cli.score", "CLIP score of images on disk"),
    "probe": ("unlearn_core.cli.probe", "partial-diffusion probe of an erasure"),
    "attack": ("unlearn_core.cli.attack", "red-team an erasure: try to bring the concept back "
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


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that gets its flags from the subcommand's module the first time it
    parses or shows help, so ``unlearn --help`` and ``unlearn demo ...`` import one module at most."""

    def __init__(self, *args, module: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._module_name = module
        self._loaded = not module

    def load(self) -> CommandParser:
        """Add the subcommand's flags (once); returns the parser."""
        if not self._loaded:
            self._loaded = True
            command_module(self._module_name).add_arguments(self)
            self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help=DEBUG_HELP)  # --debug after the subcommand too
        return self

    def format_help(self) -> str:
        return super(CommandParser, self.load()).format_help()

    def format_usage(self) -> str:
        return super(CommandParser, self.load()).format_usage()


class _Subcommands(argparse._SubParsersAction):
    """Loads the chosen subcommand's flags before its parser parses the rest of the line."""

    def __call__(self, parser, namespace, values, option_string=None):
        chosen = self._name_parser_map.get(values[0])
        if isinstance(chosen, CommandParser):
            chosen.load()
        super().__call__(parser, namespace, values, option_string)


def command_module(name: str):
    """The module of a subcommand (by command name or module path), imported now."""
    return importlib.import_module(SUBCOMMANDS[name][0] if name in SUBCOMMANDS else name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unlearn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=CommandParser, action=_Subcommands)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        # erase's help is its one line; the others repeat it as their description
        sub.add_parser(name, help=help_text, module=module_name, formatter_class=HelpFormatter,
                       **({} if name == "erase" else {"description": help_text}))
    return parser


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser with all its flags (this imports every subcommand module)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {name: p.load() for name, p in sub.choices.items()}


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
        return int(command_module(args.command).run(args) or 0)
    except KeyboardInterrupt:
        print("cancelled; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        message, code = describe_failure(e)
        print(f"unlearn {args.command}: error: {message}", file=sys.stderr)
        if type(e).__name__ == "RankFailure":
            # a peer of this data-parallel run died: tearing down the broken process group at
            # interpreter exit can abort ("terminate called without an active exception",
            # SIGABRT) after the message; nothing is left to write, so the process ends here
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
