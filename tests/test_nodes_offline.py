"""The pure node modules, imported without ComfyUI (``unlearn_testkit.pack``): what the simple
Erase Concept node trains for each kind of concept, at the settings a user gets (no patched
presets), the widgets' bounds (from the configs' field metadata), and the Advanced node's widget
order against the committed example workflows."""

from __future__ import annotations

import dataclasses
import json

import pytest
from unlearn_testkit.pack import REPO_ROOT, offline_module

from unlearn_core.attacks.config import AttackConfig
from unlearn_core.config import RECIPES, EraseConfig
from unlearn_core.metrics.config import ProbeConfig, ReportConfig

# What each kind of concept trains, written out here rather than read from nodes/presets.py: the
# named kinds train cross-attention as a full delta; nudity trains everything but
# cross-attention as the fast-lora recipe's LoRA.
_LORA = {k: RECIPES["fast-lora"][k] for k in ("parametrization", "lora_rank", "lora_alpha", "lr")}
KINDS = {
    "identity": dict(selection="xattn"),
    "artistic style": dict(selection="xattn"),
    "object": dict(selection="xattn"),
    "logo": dict(selection="xattn"),
    "nudity": dict(selection="noxattn", **_LORA),
}


def test_the_simple_node_offers_exactly_these_kinds():
    presets = offline_module("nodes.presets")
    assert list(presets.USE_CASES) == ["identity", "artistic style", "nudity", "object", "logo"]
    assert set(presets.USE_CASES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_simple_node_config_is_defaults_fast_loop_and_the_kind(kind):
    erase = offline_module("nodes.erase")
    got = erase.simple_config("Van Gogh", kind, "l2", 300, 7)
    want = EraseConfig(**{**RECIPES["fast"], **KINDS[kind],
                          "concepts": ("Van Gogh",), "loss": "l2", "steps": 300, "seed": 7})
    assert got.to_dict() == want.to_dict()
    if kind == "nudity":  # the global concept: everything but cross-attention, as a LoRA
        assert (got.selection, got.parametrization, got.lora_rank, got.lr) == (
            "noxattn", "lora", 8, 1e-4)
    else:  # a named concept: cross-attention only, a full delta at the config's lr
        assert (got.selection, got.parametrization) == ("xattn", "full")
        assert got.lr == EraseConfig(concepts=("x",)).lr


def test_simple_node_gives_cramer_wold_a_batch_of_two_or_more():
    erase = offline_module("nodes.erase")
    assert erase.simple_config("a dog", "object", "cramer_wold", 10, 0).batch_size >= 2


def test_simple_node_refuses_an_unknown_kind():
    erase = offline_module("nodes.erase")
    errors = offline_module("unlearn_core.errors")
    with pytest.raises(errors.ConfigError, match="preset = 'dragon'"):
        erase.simple_config("a dog", "dragon", "l2", 10, 0)


# ---- widget bounds: the configs' ``ui`` metadata ----------------------------------------------

# each config and the node that shows its fields as widgets
NODE_CONFIGS = {EraseConfig: "UnlearnEraseConceptAdvanced", ProbeConfig: "UnlearnProbe",
                ReportConfig: "UnlearnReport", AttackConfig: "UnlearnAttack"}


@pytest.mark.parametrize("config", NODE_CONFIGS, ids=lambda c: c.__name__)
def test_widget_bounds_are_the_fields_ui_metadata_and_never_offer_a_refused_value(config):
    node = offline_module("nodes.registry").NODE_CLASS_MAPPINGS[NODE_CONFIGS[config]]
    widgets = node.INPUT_TYPES()["required"]
    with_ui = 0
    for f in dataclasses.fields(config):
        meta = f.metadata
        if isinstance(f.default, bool) or not isinstance(f.default, (int, float)):
            assert "ui" not in meta, f.name  # only number widgets have a step and a slider
            continue
        ui = meta.get("ui", {})
        assert set(ui) <= {"step", "min", "max"}, f.name
        if f.name not in widgets:
            continue
        spec = widgets[f.name][1]
        with_ui += bool(ui)
        for key in ui:
            assert spec[key] == ui[key], (f.name, key)
        low = meta.get("min", meta.get("min_exclusive"))
        if low is not None:  # the slider starts where the check starts (or above an exclusive one)
            assert spec["min"] > low if "min_exclusive" in meta else spec["min"] >= low, f.name
        if "max" in meta:
            assert spec["max"] <= meta["max"], f.name
    assert with_ui, "no widget of this config carries hints"


def test_ui_bounds_shape_the_widget_only_not_the_check():
    steps_ui = EraseConfig.__dataclass_fields__["steps"].metadata["ui"]["max"]
    assert EraseConfig(concepts=("a dog",), steps=steps_ui + 1).steps == steps_ui + 1


# ---- the Advanced node's widget order ---------------------------------------------------------

def _advanced_nodes():
    for path in sorted((REPO_ROOT / "example_workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            if node["type"] == "UnlearnEraseConceptAdvanced":
                yield path.name, node["widgets_values"]


def test_widget_order_reads_the_committed_example_workflows():
    """Saved workflows store widget values by position: the committed example workflows, read in
    nodes/fields.py's order, must give every field a value of its own type (and one of its
    choices), the seed's control widget right after the seed, and a valid config."""
    fields = offline_module("nodes.fields").ADVANCED_FIELDS
    config_fields = EraseConfig.__dataclass_fields__
    assert sorted(fields) == sorted(config_fields), "every config field is a widget, once"
    found = list(_advanced_nodes())
    assert found, "no example workflow holds the Advanced node"
    for name, values in found:
        seed_at = fields.index("seed")
        assert values[seed_at + 1] == "fixed", name
        by_name = dict(zip(fields, values[: seed_at + 1] + values[seed_at + 2:], strict=True))
        for field, value in by_name.items():
            default = config_fields[field].default
            want = str if isinstance(default, tuple) else type(default)  # prompts: text
            assert type(value) is want, (name, field, value)
            assert value in config_fields[field].metadata.get("choices", (value,)), (name, field)
        config = EraseConfig(**{k: (tuple(v.splitlines()) if isinstance(config_fields[k].default,
                                                                     tuple) else v)
                                for k, v in by_name.items()})
        assert config.concepts == ("Van Gogh", "Claude Monet", "Pablo Picasso"), name


def test_node_loss_plot_and_report_share_one_curve():
    """One rule for what a loss plot shows (``metrics.plots.loss_curve``): the node's Pillow
    picture and the report's matplotlib panel draw the same moving average on the same scale."""
    import math

    from unlearn_core.metrics.plots import loss_curve

    decaying = [math.exp(-i / 40) for i in range(300)]  # spans e^7.5: log scale
    curve = loss_curve(decaying + [float("nan")])
    assert curve.values == decaying and curve.window == 15 and curve.log_scale
    assert len(curve.mean) == 300 - 15 + 1
    assert curve.mean[0] == pytest.approx(sum(decaying[:15]) / 15)
    flat = loss_curve([0.5 + 0.01 * (i % 3) for i in range(40)])
    assert not flat.log_scale and flat.window == 2
    assert not loss_curve([1.0, -1.0, 30.0]).log_scale  # a negative value: never log
    plot = offline_module("nodes.plot")
    # the node draws the shared curve, not a copy (the offline pack has its own module names)
    assert plot.loss_curve.__module__.endswith("unlearn_core.metrics.plots")
    for history in ([], [1.0], [3.0, 2.0], decaying, [float("nan"), 1.0]):
        image = plot.loss_plot(history, "t")
        assert image.shape == (1, plot.HEIGHT, plot.WIDTH, 3)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
