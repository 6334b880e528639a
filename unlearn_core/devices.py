"""The ``--device`` flag: checked before anything loads, with a message that says what to use."""

from __future__ import annotations

import re

from .errors import ConfigError

DEVICE_HELP = "where to run: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda, cuda:N, mps"
_PATTERN = re.compile(r"(auto|cpu|mps|cuda(?::(\d+))?)")


def check_device(value: str, flag: str = "--device") -> str:
    """The spelling only (no torch): auto, cpu, mps, cuda or cuda:N. Returns it lower-cased."""
    text = str(value).strip().lower()
    if not _PATTERN.fullmatch(text):
        raise ConfigError(flag, value, "not a device name", "use auto, cpu, cuda, cuda:N (N = GPU "
                          "number) or mps")
    return text


def resolve_device(value: str, flag: str = "--device") -> str:
    """A device torch can use now: ``auto`` becomes cuda or cpu; a GPU that is not there is refused
    with the reason (no GPU visible, torch built without CUDA, index out of range)."""
    import torch

    text = check_device(value, flag)
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch was built without CUDA" if torch.version.cuda is None
                   else "torch sees no CUDA GPU (check the driver with nvidia-smi and "
                   "CUDA_VISIBLE_DEVICES)")
            raise ConfigError(flag, value, why, "use --device cpu (or auto), or run where a GPU "
                              "and a CUDA build of torch are installed")
        count = torch.cuda.device_count()
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= count:
            raise ConfigError(flag, value, f"there {'is' if count == 1 else 'are'} {count} CUDA "
                              f"GPU{'' if count == 1 else 's'}", f"use cuda:0 to cuda:{count - 1}")
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(flag, value, "Apple's Metal (mps) is not available here",
                          "use --device cpu (or auto)")
    return text
