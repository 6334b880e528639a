"""What the simple Erase Concept node does for each kind of concept.

Each use maps to a parameter selection and the few settings that go with it; everything else is
the config's defaults with the core's "fast" recipe (``widgets.node_defaults``). ("preset" is
this node's word for a kind of concept, and its widget's name in saved workflows; the core's named
loop settings are "recipes", ``config.RECIPES``.)

- identity, artistic style, object, logo: a concept named in the prompt. Cross-attention only
  (``xattn``: every attn2 projection, SDD's default and ESD-x) -- the change stays tied to the
  words, so other prompts barely move.
- nudity: a global concept, also drawn for prompts that never name it. Everything but
  cross-attention (``noxattn``, ESD-u; Gandikota et al. 2023 use it for nudity). A full delta of
  those ~810M weights needs ~16 GB in float32 (delta, gradient, AdamW's two moments, EMA shadow),
  so the preset trains a LoRA to fit a consumer GPU: the core's "fast-lora" recipe (rank 8,
  lr 1e-4, as the config's help advises for LoRA).
"""

from __future__ import annotations

from typing import Any

from ..unlearn_core.config import RECIPES

# What the "fast-lora" recipe changes over "fast" (the LoRA), so the two never disagree.
_LORA = {k: v for k, v in RECIPES["fast-lora"].items() if RECIPES["fast"].get(k) != v}

USE_CASES: dict[str, dict[str, Any]] = {
    "identity": dict(selection="xattn"),
    "artistic style": dict(selection="xattn"),
    "nudity": dict(selection="noxattn", **_LORA),
    "object": dict(selection="xattn"),
    "logo": dict(selection="xattn"),
}

USE_CASE_HELP = (
    "What kind of concept this is; picks which layers train. identity / artistic style / object "
    "/ logo: cross-attention only (the change stays tied to the words). nudity: everything but "
    "cross-attention, as a LoRA (for concepts that appear without being named)."
)

