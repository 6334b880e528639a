"""Node inputs made from ``EraseConfig`` fields: the input name is the field name, the tooltip is
the field's help text, combos come from its ``choices``, number ranges from ``min``/``max``.

A field's ``ui`` metadata (in the config, beside its rules) gives the widget step and the slider
bounds the rules leave open (the web UI assumes 0..2048 when none is given, and rounds a FLOAT to
its step unless told not to). Defaults are the config's own, with the core's "fast" recipe on top
(``node_defaults``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..unlearn_core.config import RECIPES, EraseConfig, config_fields
from ..unlearn_core.errors import ConfigError
from ..unlearn_core.selection import SELECTIONS

MULTILINE = {"concepts", "retain_prompts", "contexts", "erased_prompts", "retained_prompts"}


def node_defaults() -> dict[str, Any]:
    """Every config field's default with the core's "fast" loop applied (read at each call, so a
    retuned loop shows up without touching the nodes)."""
    values = {name: f.default for name, f in config_fields().items()}
    values.update(RECIPES["fast"])
    return values


def field_input(name: str, default: Any = None, tooltip: str | None = None,
                config: type = EraseConfig) -> tuple:
    """The ComfyUI input spec of one field of ``config`` (EraseConfig, or the metrics' configs):
    (type, options)."""
    f = {f.name: f for f in dataclasses.fields(config)}[name]
    meta = f.metadata
    hints = meta.get("ui", {})
    if default is None:
        default = node_defaults()[name] if config is EraseConfig else f.default
    opts: dict[str, Any] = {"tooltip": tooltip or meta["help"]}
    if name == "selection":  # free text in the config (aliases); the canonical names here
        return (list(SELECTIONS), {"default": default, **opts})
    if "choices" in meta:
        return (list(meta["choices"]), {"default": default, **opts})
    if isinstance(f.default, tuple):
        multiline = name in MULTILINE
        if isinstance(default, (tuple, list)):  # prompts one per line; numbers "0, 1, 2"
            text = ("\n" if multiline else ", ").join(f"{v:g}" if isinstance(v, float) else str(v)
                                                      for v in default)
        else:
            text = str(default)
        return ("STRING", {"default": text, "multiline": multiline, "dynamicPrompts": False,
                           **opts})
    if isinstance(f.default, bool):
        return ("BOOLEAN", {"default": default, **opts})
    if isinstance(f.default, int):
        return ("INT", {"default": int(default), "min": int(hints.get("min", meta.get("min", 0))),
                        "max": int(hints.get("max", meta.get("max", 1_000_000))),
                        "step": int(hints.get("step", 1)), **opts})
    if isinstance(f.default, float):
        low = hints.get("min", meta.get("min", meta.get("min_exclusive", 0.0)))
        return ("FLOAT", {"default": float(default), "min": float(low),
                          "max": float(hints.get("max", meta.get("max", 1000.0))),
                          "step": float(hints.get("step", 0.01)), "round": False, **opts})
    if isinstance(f.default, str):
        return ("STRING", {"default": default, "multiline": False, "dynamicPrompts": False,
                           **opts})
    raise TypeError(f"no widget for config field {name!r} of type {type(f.default).__name__}")


def lines(text: Any) -> tuple[str, ...]:
    """Non-blank lines of a multiline widget, stripped."""
    if text is None:
        return ()
    return tuple(line.strip() for line in str(text).splitlines() if line.strip())


def concepts_problem(text: Any, input_name: str = "concepts") -> str | None:
    """A message for VALIDATE_INPUTS when the concept text is blank (None when fine or linked)."""
    if text is None:  # linked from another node: checked when the node runs
        return None
    if not lines(text):
        return (f"{input_name} is blank: type the concept to erase (one per line, e.g. "
                "'Van Gogh'), then queue again.")
    return None


def build_config(values: Mapping[str, Any], base: Mapping[str, Any] | None = None) -> EraseConfig:
    """An EraseConfig from node inputs (only config fields are read; multiline text -> tuples).

    Raises ConfigError whose ``field`` is the node input to change.
    """
    merged = dict(node_defaults() if base is None else base)
    known = set(config_fields())
    for name, value in values.items():
        if name in known:
            merged[name] = lines(value) if name in MULTILINE and isinstance(value, str) else value
    if not merged.get("concepts"):
        raise ConfigError("concepts", "", "no concept given",
                          "type the concept to erase (one per line)")
    return EraseConfig(**{k: v for k, v in merged.items() if k in known})
