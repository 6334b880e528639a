"""Errors raised by Unlearn.

Every message says what is wrong, the value received, what is allowed and how to fix it. The
``field`` names the config field, which is also the ComfyUI node input and the CLI flag, so the
host can point at the widget to change.
"""

from __future__ import annotations


class UnlearnError(Exception):
    """Base class of every error Unlearn raises on purpose."""


class ConfigError(UnlearnError, ValueError):
    """A config value or user input is not allowed."""

    def __init__(self, field: str, value: object, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} = {value!r}: {problem}. Fix: {fix}")


class ModelError(UnlearnError, ValueError):
    """The model handed in is not one Unlearn can erase from (e.g. not SD-1.x shaped)."""


class FileFormatError(UnlearnError, ValueError):
    """A file is missing, not safetensors, or its keys/shapes do not match the model."""


class OutputExistsError(UnlearnError, FileExistsError):
    """Refusing to overwrite an existing file."""


class TrainingError(UnlearnError, RuntimeError):
    """Training stopped (non-finite loss); nothing was written."""


class Cancelled(UnlearnError):
    """The caller's callback asked to stop; nothing was written."""
