"""The pure node modules, imported without ComfyUI (``unlearn_testkit.pack``): what the simple
Erase Concept node trains for each kind of concept, at the settings a user gets (no patched
presets), and the widget table the Advanced node is built from."""

from __future__ import annotations

import pytest
from unlearn_testkit.pack import offline_module

from unlearn_core.config import RECIPES, EraseConfig


@pytest.mark.parametrize("kind", ["identity", "artistic style", "object", "logo", "nudity"])
def test_simple_node_config_is_defaults_fast_loop_and_the_kind(kind):
    erase = offline_module("nodes.erase")
    presets = offline_module("nodes.presets")
    got = erase.simple_config("Van Gogh", kind, "l2", 300, 7)
    want = EraseConfig(**{**RECIPES["fast"], **presets.USE_CASES[kind],
                          "concepts": ("Van Gogh",), "loss": "l2", "steps": 300, "seed": 7})
    assert got.to_dict() == want.to_dict()
    if kind == "nudity":  # the global concept: everything but cross-attention, as a LoRA
        assert (got.selection, got.parametrization) == ("noxattn", "lora")
    else:  # a named concept: cross-attention only, a full delta
        assert (got.selection, got.parametrization) == ("xattn", "full")


def test_simple_node_gives_cramer_wold_a_batch_of_two_or_more():
    erase = offline_module("nodes.erase")
    assert erase.simple_config("a dog", "object", "cramer_wold", 10, 0).batch_size >= 2


def test_simple_node_refuses_an_unknown_kind():
    erase = offline_module("nodes.erase")
    errors = offline_module("unlearn_core.errors")
    with pytest.raises(errors.ConfigError, match="preset = 'dragon'"):
        erase.simple_config("a dog", "dragon", "l2", 10, 0)
