"""Unlearn: erase concepts from Stable Diffusion 1.x by self-distillation, and measure the result.

The framework-free core. It never imports ComfyUI; the node pack in ``nodes/`` adapts to it.
"""

__version__ = "0.1.0"

from .conditioning import Conditioning, encode_conditioning  # noqa: E402
from .config import EraseConfig, field_help  # noqa: E402
from .delta import Delta  # noqa: E402
from .denoiser import Denoiser, DiffusersDenoiser, scaled_linear_alphas_cumprod  # noqa: E402
from .errors import (  # noqa: E402
    Cancelled,
    ConfigError,
    FileFormatError,
    ModelError,
    OutputExistsError,
    TrainingError,
    UnlearnError,
)
from .losses import LOSSES  # noqa: E402
from .result import EraseResult  # noqa: E402
from .selection import SELECTION_ALIASES, SELECTIONS, select_layers  # noqa: E402
from .trainer import StepInfo, erase  # noqa: E402

__all__ = [
    "LOSSES", "SELECTIONS", "SELECTION_ALIASES", "Cancelled", "Conditioning", "ConfigError",
    "Delta", "Denoiser", "DiffusersDenoiser", "EraseConfig", "EraseResult", "FileFormatError",
    "ModelError", "OutputExistsError", "StepInfo", "TrainingError", "UnlearnError",
    "encode_conditioning", "erase", "field_help", "scaled_linear_alphas_cumprod", "select_layers",
]
