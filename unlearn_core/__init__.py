"""Unlearn: erase concepts from Stable Diffusion 1.x by self-distillation, and measure the result.

The framework-free core. It never imports ComfyUI; the node pack in ``nodes/`` adapts to it.

The names below are imported on first use (``from unlearn_core import erase`` works as usual), so
that ``import unlearn_core`` -- and the ``unlearn`` command's help and argument checks -- do not
pay for torch and diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "Conditioning": "conditioning", "encode_conditioning": "conditioning",
    "EraseConfig": "config", "field_help": "config",
    "Delta": "delta",
    "Denoiser": "denoiser", "DiffusersDenoiser": "denoiser",
    "scaled_linear_alphas_cumprod": "denoiser",
    "Cancelled": "errors", "ConfigError": "errors", "FileFormatError": "errors",
    "ModelError": "errors", "OutputExistsError": "errors", "TrainingError": "errors",
    "UnlearnError": "errors",
    "LOSSES": "losses",
    "EraseResult": "result",
    "SELECTION_ALIASES": "selection", "SELECTIONS": "selection", "select_layers": "selection",
    "StepInfo": "trainer", "erase": "trainer",
}

__all__ = [
    "Cancelled", "Conditioning", "ConfigError", "Delta", "Denoiser", "DiffusersDenoiser",
    "EraseConfig", "EraseResult", "FileFormatError", "LOSSES", "ModelError", "OutputExistsError",
    "SELECTIONS", "SELECTION_ALIASES", "StepInfo", "TrainingError", "UnlearnError",
    "encode_conditioning", "erase", "field_help", "scaled_linear_alphas_cumprod", "select_layers"
]

if TYPE_CHECKING:  # what static tools and editors see
    from .conditioning import Conditioning, encode_conditioning
    from .config import EraseConfig, field_help
    from .delta import Delta
    from .denoiser import Denoiser, DiffusersDenoiser, scaled_linear_alphas_cumprod
    from .errors import (
        Cancelled,
        ConfigError,
        FileFormatError,
        ModelError,
        OutputExistsError,
        TrainingError,
        UnlearnError,
    )
    from .losses import LOSSES
    from .result import EraseResult
    from .selection import SELECTION_ALIASES, SELECTIONS, select_layers
    from .trainer import StepInfo, erase


__getattr__, __dir__ = _lazy.install(__name__, _EXPORTS)
