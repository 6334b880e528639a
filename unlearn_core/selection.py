"""Which layers of the denoiser train.

Names follow ESD (Gandikota et al. 2023) and Concept Sliders: ``xattn`` every cross-attention
(``attn2``) projection (to_q, to_k, to_v, to_out; SDD's default), ``xattn-kv`` to_k/to_v only,
``noxattn`` every Linear/Conv2d weight outside cross-attention, the time embedding and the output
conv (ESD-u, for global concepts such as nudity), ``full`` every Linear/Conv2d weight. Selection
is by module-name pattern, so the same names work on diffusers and ComfyUI (LDM) UNets, and on
SDXL later. An unknown name or an empty selection is an error, never a silent no-op.
"""

from __future__ import annotations

import re

from torch import nn

from .errors import ConfigError, ModelError

SELECTIONS = ("xattn", "xattn-kv", "noxattn", "full")
SELECTION_ALIASES = {
    "esd-x": "xattn",
    "esd-x-strict": "xattn-kv",
    "esd-u": "noxattn",
    "esd-all": "full",
}

_XATTN = re.compile(r"(^|\.)attn2\.(to_q|to_k|to_v|to_out\.0)$")
_XATTN_KV = re.compile(r"(^|\.)attn2\.(to_k|to_v)$")
# Outside cross-attention, ESD-u also leaves the time embedding and the output conv alone.
_NOXATTN_SKIP = re.compile(
    r"(^|\.)attn2\.|^time_embed|^time_embedding|^out\.|^conv_out$|^add_embedding|^label_emb"
)

TRAINABLE_TYPES = (nn.Linear, nn.Conv2d)


def canonical_selection(name: str) -> str:
    """Resolve an alias; raise ConfigError naming the allowed values for an unknown name."""
    if not isinstance(name, str):
        raise ConfigError("selection", name, "must be text", "use one of " + ", ".join(SELECTIONS))
    key = name.strip().lower()
    key = SELECTION_ALIASES.get(key, key)
    if key not in SELECTIONS:
        allowed = ", ".join(SELECTIONS + tuple(SELECTION_ALIASES))
        raise ConfigError("selection", name, "unknown parameter selection", f"use one of {allowed}")
    return key


def _wanted(selection: str, name: str) -> bool:
    if selection == "xattn":
        return bool(_XATTN.search(name))
    if selection == "xattn-kv":
        return bool(_XATTN_KV.search(name))
    if selection == "noxattn":
        return not _NOXATTN_SKIP.search(name)
    return True  # full


def select_layers(module: nn.Module, selection: str) -> dict[str, nn.Module]:
    """The Linear/Conv2d layers of ``module`` that ``selection`` trains, by module name, in order.

    Raises ModelError if nothing matches (e.g. a model without cross-attention layers).
    """
    selection = canonical_selection(selection)
    chosen = {
        name: layer
        for name, layer in module.named_modules()
        if isinstance(layer, TRAINABLE_TYPES) and name and _wanted(selection, name)
    }
    if not chosen:
        raise ModelError(
            f"selection {selection!r} matched no layer of this model: it has no "
            f"{'cross-attention (attn2)' if 'xattn' in selection else 'Linear/Conv2d'} layers. "
            "Fix: load a Stable Diffusion 1.x UNet, or choose another selection."
        )
    return chosen
