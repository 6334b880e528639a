"""Settings of the probe and the report: frozen dataclasses whose fields carry their help text.

As with ``EraseConfig``, the help text is the CLI ``--help`` and the ComfyUI tooltip, and the field
names are the node inputs. Lists arrive as text from widgets and flags ("0, 1, 2, 3" or "0-3" for
seeds; one prompt per line) and are parsed and checked in ``__post_init__``, before any model runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from ..config import _check_field, _f
from ..errors import ConfigError

# Sharma et al. 2024 (https://arxiv.org/abs/2409.05668), the psi grid of their CCS/CRS.
DEFAULT_PSIS: tuple[float, ...] = (0.001, 0.01, 0.05, 0.15, 0.25, 0.35, 0.45, 0.55)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2, 3)


def parse_seeds(value: Any, field: str = "seeds") -> tuple[int, ...]:
    """"0, 1, 5" / "0-3" / [0, 1] / 7 -> (0, 1, 5) / (0, 1, 2, 3) / (0, 1) / (7,)."""
    if isinstance(value, bool):
        raise ConfigError(field, value, "seeds must be whole numbers", 'write them like "0, 1, 2, 3"')
    if isinstance(value, int):
        value = (value,)
    if isinstance(value, str):
        out: list[int] = []
        for part in re.split(r"[,\s]+", value.strip()):
            if not part:
                continue
            m = re.fullmatch(r"(\d+)-(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo or hi - lo > 10_000:
                    raise ConfigError(field, value, f"the range {part} is empty or too long",
                                      'write ranges low-high, e.g. "0-7"')
                out.extend(range(lo, hi + 1))
            elif part.isdigit():
                out.append(int(part))
            else:
                raise ConfigError(field, value, f"{part!r} is not a seed or a range",
                                  'write seeds like "0, 1, 2, 3" or "0-3"')
        value = out
    try:
        seeds = tuple(int(s) for s in value)
    except (TypeError, ValueError) as e:
        raise ConfigError(field, value, "seeds must be whole numbers", 'write them like "0, 1, 2"') from e
    if not seeds:
        raise ConfigError(field, value, "no seed given", "give at least one seed")
    if any(s < 0 for s in seeds):
        raise ConfigError(field, value, "seeds must be >= 0", "use non-negative seeds")
    return seeds


def parse_psis(value: Any, field: str = "psis") -> tuple[float, ...]:
    """"0.01, 0.1" or [0.01, 0.1] -> floats in [0, 1]."""
    given = value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str):
        value = [v for v in re.split(r"[,\s]+", value.strip()) if v]
    try:
        value = list(value)
    except TypeError as e:
        raise ConfigError(field, given, "psi values must be numbers",
                          'write them like "0.01, 0.1, 0.5"') from e
    for v in value:
        try:
            if isinstance(v, bool):
                raise ValueError(v)
            float(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(field, given, f"{v!r} is not a number",
                              'write psi values like "0.01, 0.1, 0.5"') from e
    psis = tuple(float(v) for v in value)
    if not psis:
        raise ConfigError(field, given, "no psi given", "give at least one value in [0, 1]")
    bad = [p for p in psis if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
    if bad:
        raise ConfigError(field, given, f"psi must lie in [0, 1]; got {bad}",
                          "psi is the share of the trajectory the base model denoises")
    return psis


def parse_lines(value: Any) -> tuple[str, ...]:
    """One prompt per line (text) or a sequence of prompts -> stripped, non-empty prompts."""
    if isinstance(value, str):
        value = value.splitlines()
    return tuple(str(v).strip() for v in value if str(v).strip())


def _check_numbers(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        if not isinstance(f.default, tuple):
            _check_field(f, getattr(obj, f.name))


@dataclass(frozen=True)
class ProbeConfig:
    """The partial-diffusion probe (Sharma et al. 2024): base model for the first psi of the
    trajectory, erased model for the rest; how present is the concept at the end?"""

    concept: str = _f("", "The erased concept's prompt: it conditions the whole trajectory, and "
                      "the scorer measures its presence in the finished images.")
    psis: tuple[float, ...] = _f(
        DEFAULT_PSIS, "Shares of the trajectory the base model denoises before the erased model "
        "takes over, in [0, 1] (0 = erased model alone, 1 = base model alone). Each is rounded to "
        "a whole number of sampling steps.")
    seeds: tuple[int, ...] = _f(DEFAULT_SEEDS, "Seeds of the starting noise, one image each "
                                '("0, 1, 2, 3" or "0-3").')
    guidance: float = _f(7.5, "Classifier-free guidance scale of the sampler.", min=0.0,
                         ui=dict(step=0.1, max=30.0))
    sampling_steps: int = _f(50, "DDIM steps of the whole trajectory.", min=1, max=1000)
    strength: float = _f(1.0, "Strength of the erasure (when it is given as an erasure, not as a "
                         "finished model).")
    batch_size: int = _f(16, "Images per sampler batch (lower it if memory runs out).", min=1,
                         ui=dict(max=64))

    def __post_init__(self) -> None:
        object.__setattr__(self, "psis", parse_psis(self.psis))
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        _check_numbers(self)
        if not isinstance(self.concept, str) or not self.concept.strip():
            raise ConfigError("concept", self.concept, "no concept prompt given",
                              "type the prompt of the erased concept")
        object.__setattr__(self, "concept", self.concept.strip())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class ReportConfig:
    """The before/after report: erased and retained prompts, generated by the base and the erased
    model from the same seeds, scored, and laid out as a grid, a plot and a summary."""

    erased_prompts: tuple[str, ...] = _f((), "Prompts that should no longer show the concept, one "
                                         "per line (lower score after is better).")
    retained_prompts: tuple[str, ...] = _f((), "Prompts that should be unaffected, one per line "
                                           "(an unchanged score is better).")
    seeds: tuple[int, ...] = _f(DEFAULT_SEEDS, 'Seeds, one image per prompt and seed ("0-3").')
    guidance: float = _f(7.5, "Classifier-free guidance scale of the sampler.", min=0.0,
                         ui=dict(step=0.1, max=30.0))
    sampling_steps: int = _f(50, "DDIM steps per image.", min=1, max=1000)
    strength: float = _f(1.0, "Strength of the erasure (when it is given as an erasure, not as a "
                         "finished model).")
    batch_size: int = _f(16, "Images per sampler batch (lower it if memory runs out).", min=1,
                         ui=dict(max=64))

    def __post_init__(self) -> None:
        object.__setattr__(self, "erased_prompts", parse_lines(self.erased_prompts))
        object.__setattr__(self, "retained_prompts", parse_lines(self.retained_prompts))
        object.__setattr__(self, "seeds", parse_seeds(self.seeds))
        _check_numbers(self)
        if not self.erased_prompts and not self.retained_prompts:
            raise ConfigError("erased_prompts", "", "no prompts given",
                              "give erased prompts, retained prompts, or both (one per line)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
