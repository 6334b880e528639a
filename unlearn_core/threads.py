"""How many CPU threads torch gets, by the size of the model it runs.

A small model's operations are too small to split between cores: on the 1.7M-parameter toy model
one thread is as fast as two on an idle 2-core machine, and about six times faster per training
step when another process keeps one core busy (two threads then wait on each other at every
operation). Large models (SD-1's 860M-parameter UNet) gain from every core.
"""

from __future__ import annotations

import os

from .errors import ConfigError

# Below this many parameters one thread is used unless asked otherwise. The toy world's models
# (1.7M toy model, judges, tiny CLIP) are far below it; SD-1's UNet is far above.
SMALL_MODEL_PARAMETERS = 20_000_000

THREADS_HELP = ("torch CPU threads; 0 = automatic: 1 for a small model such as the toy world's "
                "(more threads do not speed it up and slow it down sharply when other programs "
                "use the cores), torch's default (one per core, or $OMP_NUM_THREADS) for SD-1")


def parameter_count(*modules) -> int:
    """Parameters of the torch modules given (each counted once)."""
    seen = {id(p): p.numel() for m in modules for p in m.parameters()}
    return sum(seen.values())


def check_threads(value: int, flag: str = "--threads") -> int:
    """Refuse a negative count (cheap, before anything loads)."""
    if value < 0:
        raise ConfigError(flag, value, "must be 0 or more", "give 0 (automatic) or a thread count")
    return value


def set_threads(requested: int, parameters: int, flag: str = "--threads") -> int:
    """Set torch's CPU threads for a model of ``parameters`` parameters; returns the count set.

    ``requested`` > 0 is used as given; 0 picks 1 for a small model and otherwise leaves torch's
    default. An explicit ``OMP_NUM_THREADS`` in the environment is respected when 0 is given.
    """
    import torch

    check_threads(requested, flag)
    if requested:
        torch.set_num_threads(requested)
    elif parameters < SMALL_MODEL_PARAMETERS and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    return torch.get_num_threads()
