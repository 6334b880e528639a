"""Concepts erased inside captions (contexts), each concept's own trajectories, and the toy
world's caption grammar around a concept."""

import pytest
import torch
from unlearn_testkit.tiny import tiny_conditioning, tiny_denoiser

from unlearn_core import ConfigError, EraseConfig, erase
from unlearn_core.conditioning import DEFAULT_CONTEXTS, encode_conditioning, template_pairs
from unlearn_core.toyworld.phrasings import (
    EVAL_PHRASINGS,
    HELD_OUT_PHRASINGS,
    TRAINED_PHRASINGS,
    caption_length,
    context_pairs,
    neighbours,
    tidy,
)
from unlearn_core.toyworld.settings import AXES, VOCABULARY

FAST = dict(resolution=8, sampling_steps=4, lr=1e-3)


class Recorder:
    """A denoiser that records which conditioning each pass saw (grad passes apart)."""

    def __init__(self, inner):
        self.inner = inner
        self.module, self.alphas_cumprod = inner.module, inner.alphas_cumprod
        self.grad_conds: list[torch.Tensor] = []
        self.nograd_conds: list[torch.Tensor] = []
        self.nograd_batches: list[int] = []

    def __call__(self, x, t, cond):
        if torch.is_grad_enabled():
            self.grad_conds.append(cond[0].clone())
        else:
            self.nograd_conds.append(cond[0].clone())
            self.nograd_batches.append(cond.shape[0])
        return self.inner(x, t, cond)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _with_contexts(n_pairs: int = 3, n_concepts: int = 1):
    cond = tiny_conditioning(n_concepts=n_concepts)
    g = torch.Generator().manual_seed(7)
    cond.contexts = [[(torch.randn(1, *cond.empty.shape[1:], generator=g),
                       torch.randn(1, *cond.empty.shape[1:], generator=g)) for _ in range(n_pairs)]
                     for _ in range(n_concepts)]
    return cond


def _index(emb, table):
    return next(i for i, e in enumerate(table) if torch.equal(emb, e[0]))


@pytest.mark.parametrize("objective,target_rows", [("sdd", 3), ("esd", 6)])
def test_contexts_train_each_prompt_towards_its_own_anchor(objective, target_rows):
    cond = _with_contexts(3)
    # batch 3: an sdd target pass holds 3 rows (the anchor), an esd one 6 (the anchor's 3 first,
    # then the prompt's, from the frozen base); guided sampling passes 2 (empty + prompt)
    cfg = EraseConfig(concepts=("c",), steps=24, batch_size=3, trajectory_reuse=2,
                      trajectory_from="concept", objective=objective, **FAST)
    rec = Recorder(tiny_denoiser())
    res = erase(rec, cond, cfg)
    assert res.metadata["context_prompts"] == 3
    prompts = [cond.concepts[0]] + [p for p, _ in cond.contexts[0]]
    anchors = [cond.empty] + [a for _, a in cond.contexts[0]]
    trained = [_index(c, prompts) for c in rec.grad_conds]
    assert len(set(trained)) >= 3  # the bare concept and its contexts are all trained
    # every step's target is a prediction for that prompt's own anchor
    targets = [c for c, n in zip(rec.nograd_conds, rec.nograd_batches) if n == target_rows]
    assert [_index(c, anchors) for c in targets] == trained


def test_each_concept_samples_its_own_trajectory_and_joint_keeps_sdds():
    cond = tiny_conditioning(n_concepts=2)
    cfg = EraseConfig(concepts=("a", "b"), steps=4, batch_size=2, trajectory_reuse=2,
                      guidance=0.0, **FAST)  # guidance 0: sampling passes see the empty prompt
    rec = Recorder(tiny_denoiser())
    erase(rec, cond, cfg.replace(trajectory_from="concept", guidance=1.0))
    sampled = {(_index(c, [cond.concepts[0], cond.concepts[1], cond.trajectory]))
               for c in rec.nograd_conds
               if any(torch.equal(c, e[0]) for e in [*cond.concepts, cond.trajectory])}
    assert sampled == {0, 1}  # both concepts' own prompts, never the joint one
    rec = Recorder(tiny_denoiser())
    erase(rec, cond, cfg.replace(trajectory_from="joint", guidance=1.0))
    sampled = [c for c in rec.nograd_conds if torch.equal(c, cond.trajectory[0])]
    assert sampled and not any(torch.equal(c, cond.concepts[1][0]) for c in rec.nograd_conds)


def test_template_pairs_and_contexts_in_the_config():
    pairs = template_pairs(("a photo of {}", "{}, detailed", "{}"))("Van Gogh")
    assert pairs == [("a photo of Van Gogh", "a photo of"), ("Van Gogh, detailed", "detailed"),
                     ("Van Gogh", "")]
    with pytest.raises(ConfigError, match="exactly one"):
        EraseConfig(concepts=("x",), contexts=("a photo of",))
    with pytest.raises(ConfigError, match="exactly one"):
        EraseConfig(concepts=("x",), contexts=("{} and {}",))
    assert EraseConfig(concepts=("x",), contexts="a photo of {}\n\n").contexts == ("a photo of {}",)


def test_encode_conditioning_builds_contexts_defaults_hook_and_uce_skips_them():
    seen: list[str] = []

    def encode(texts):
        seen.extend(texts)
        return torch.stack([torch.full((4, 8), float(len(t))) for t in texts])

    cfg = EraseConfig(concepts=("cat", "dog"))
    cond = encode_conditioning(encode, cfg)
    assert [len(c) for c in cond.contexts] == [len(DEFAULT_CONTEXTS)] * 2
    assert "a photo of cat" in seen and "a photo of" in seen
    # the front end's own pairs when the config names none; the config's templates win
    hook = lambda c: [(f"big {c}", "big")]  # noqa: E731
    cond = encode_conditioning(encode, cfg, context_pairs=hook)
    assert len(cond.contexts[0]) == 1 and float(cond.contexts[0][0][0][0, 0, 0]) == len("big cat")
    cond = encode_conditioning(encode, cfg.replace(contexts=("{} here", "{} there")),
                               context_pairs=hook)
    assert float(cond.contexts[1][1][1][0, 0, 0]) == len("there")
    cond = encode_conditioning(encode, cfg.replace(method="uce"))
    assert cond.contexts == [[], []]


def test_context_prompts_follow_the_prompt_length_rule():
    cfg = EraseConfig(concepts=("cat",), contexts=("{} " + "word " * 80,))
    with pytest.raises(ConfigError, match="contexts"):
        encode_conditioning(lambda t: torch.zeros(len(t), 4, 8), cfg,
                            count_tokens=lambda text: len(text.split()))


@pytest.mark.parametrize("concept", VOCABULARY)
def test_toy_contexts_name_the_concept_and_anchors_leave_it_out(concept):
    pairs = context_pairs(concept)
    assert len(pairs) >= 16
    for caption, anchor in pairs:
        assert concept in caption.replace(",", " ").split()
        assert concept not in anchor.replace(",", " ").split()
        assert caption_length(caption) <= 6
        assert anchor == tidy(anchor) and not anchor.endswith(",")
    held = neighbours([concept])
    assert held and all(concept not in p.replace(",", " ").split() for p in held)


def test_each_phrasing_is_judged_on_at_least_min_images():
    """"a circle" is one caption: the phrasing's rate is judged on 12 images of it (new seeds),
    not on one; a phrasing with more captions than that keeps one image per caption."""
    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.phrasings import efficacy_by_phrasing

    model, judges = load_toy_model(), load_judges()
    out = efficacy_by_phrasing(model, judges, ["circle"], steps=2,
                               phrasings=("a {s}", "a {c} {s}", "a {c} {s}, {t}"))
    assert out["n"] == {"a {s}": 12, "a {c} {s}": 12, "a {c} {s}, {t}": 12}
    few = efficacy_by_phrasing(model, judges, ["circle"], steps=2, phrasings=("a {s}",),
                               min_images=3, repeats=2)
    assert few["n"] == {"a {s}": 3}
    assert all(0.0 <= v <= 1.0 for v in out["phrasing"].values())


def test_toy_contexts_of_a_default_value_anchor_each_caption_on_one_other_value_of_the_kind():
    """For a default value, each caption anchors on one other value of its kind (chosen by the
    caption, spread over the values) instead of on itself without the concept, which still
    shows it; no anchor names an erased concept."""
    plain = context_pairs("circle", erased=("circle", "square"))
    pairs = context_pairs("circle", erased=("circle", "square"), defaults=("circle",))
    assert [c for c, _ in pairs] == [c for c, _ in plain]  # one anchor per caption, same order
    assert ("a red circle", "a red") in plain and ("a red circle", "a red") not in pairs
    chosen = []
    for caption, anchor in pairs:
        assert "circle" in caption.split() or "circle," in caption.split()
        words = set(anchor.replace(",", " ").split())
        assert not words & {"circle", "square"}
        (shape,) = words & {"triangle", "cross"}
        # the anchor is the caption with the shape swapped: nothing else changes
        assert anchor == caption.replace("circle", shape)
        chosen.append(shape)
    assert chosen.count("triangle") >= len(chosen) // 4 and chosen.count("cross") >= len(chosen) // 4
    assert pairs == context_pairs("circle", erased=("circle", "square"), defaults=("circle",))
    # with every other value of the kind erased there is nothing else to aim at: the plain anchor
    everything = ("circle", "square", "triangle", "cross")
    assert context_pairs("circle", erased=everything, defaults=("circle",)) == context_pairs(
        "circle", erased=everything)


def test_toy_contexts_of_swapped_values_anchor_on_another_value_of_their_kind():
    """Values of a wholly erased kind given as ``swapped``: each caption's anchor names one other
    value of the kind in place of the erased one, erased too, spread over the values; without
    ``swapped`` the texture is left out as before."""
    textures = ("solid", "striped", "dotted")
    for concept in textures:
        plain = context_pairs(concept, erased=textures)
        pairs = context_pairs(concept, erased=textures, swapped=textures)
        assert [c for c, _ in pairs] == [c for c, _ in plain]
        chosen = []
        for (caption, anchor), (_, left_out) in zip(pairs, plain):
            (other,) = set(anchor.replace(",", " ").split()) & set(textures)
            assert other != concept and anchor == caption.replace(concept, other)
            assert not set(left_out.replace(",", " ").split()) & set(textures)
            chosen.append(other)
        assert min(chosen.count(v) for v in set(textures) - {concept}) >= len(chosen) // 4
    # another concept's captions name the swapped texture too: it is swapped there as well
    red = dict(context_pairs("red", erased=("red",) + textures, swapped=textures))
    assert red["a red circle, striped"] in {"a circle, solid", "a circle, dotted"}


def test_toy_self_drawn_values_are_solid_among_every_texture_only():
    """With every texture erased, solid's target (pushed away from solid, from anchors that lean
    to it) draws solid: solid is swapped, and the set takes the longer steps. Striped's and
    dotted's targets draw solid, not themselves, and no colour's target draws its own colour;
    a kind with a value kept is never looked at."""
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import self_drawn_values, toy_config
    from unlearn_core.toyworld.phrasings import context_pairs
    from unlearn_core.toyworld.settings import SET_WITH_DEFAULT_STEPS

    model = load_toy_model()
    ten = ("square", "triangle", "cross", "red", "green", "blue", "yellow", "solid", "striped",
           "dotted")
    assert self_drawn_values(model, ten) == ("solid",)
    assert toy_config(ten, model).steps == SET_WITH_DEFAULT_STEPS
    # in every pair of the run solid is replaced by another texture; striped is left out
    pairs = dict(context_pairs("red", erased=ten, swapped=("solid",)))
    assert pairs["a red circle, solid"] in {"a circle, striped", "a circle, dotted"}
    assert pairs["a red circle, striped"] == "a circle"
    seven = ("triangle", "cross", "red", "green", "blue", "yellow", "striped")
    assert self_drawn_values(model, seven) == ()  # the colours, wholly erased, are not drawn
    assert self_drawn_values(model, ("solid", "striped")) == ()  # dotted kept: not wholly
    assert ("self_drawn_values", ("solid", "striped"), 1.0, 24, 50_000) not in model.known


def test_toy_contexts_of_another_concept_swap_a_default_value_of_the_run_too():
    """Circle (a default value) erased beside red: red's captions that name the circle used to
    anchor on the caption without both ("a red circle" -> "a"), which still draws a circle and
    pulled the circle's own erasure back. Now every pair of the run treats a default value the
    same way, so a caption shared by two concepts gets one anchor."""
    run = ("circle", "red")
    red = dict(context_pairs("red", erased=run, defaults=("circle",)))
    circle = dict(context_pairs("circle", erased=run, defaults=("circle",)))
    shared = [c for c in red if "circle" in c.replace(",", " ").split()]
    assert shared and all(red[c] == circle[c] for c in shared)
    for caption in shared:
        words = set(red[caption].replace(",", " ").split())
        assert not words & set(run) and len(words & {"square", "triangle", "cross"}) == 1
    # captions without the default value are anchored as before: the erased words left out
    assert red["a red square"] == "a square"
    assert dict(context_pairs("red", erased=run))["a red circle"] == "a"


def test_default_values_are_what_the_model_draws_without_being_asked():
    """The toy model draws a circle for a caption without a shape in about 0.6 of samples, a
    cross hardly ever: only the circle is a default value."""
    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.erasure import default_values

    model, judges = load_toy_model(), load_judges()
    assert default_values(model, ["circle", "cross"], judges) == ("circle",)


def test_toy_erasure_of_a_default_value_anchors_on_the_other_values_and_holds_them():
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import erase_toy, toy_config

    model = load_toy_model()
    result = erase_toy(model, toy_config(["circle"], seed=0, steps=2, sampling_steps=2))
    config = result.metadata["config"]
    assert tuple(config["retain_prompts"]) == neighbours(["circle"])
    assert config["retain_weight"] == 1.0
    assert result.metadata["context_prompts"] == len(context_pairs("circle", defaults=("circle",)))
    mine = erase_toy(model, toy_config(["circle"], seed=0, steps=2, sampling_steps=2,
                                       retain_prompts=("a blue square",), retain_weight=0.5))
    assert mine.metadata["config"]["retain_prompts"] == ["a blue square"]  # the user's own stay


def test_toy_neighbours_leave_out_every_erased_concept():
    erased = ["triangle", "dotted", "blue"]
    held = neighbours(erased)
    assert held
    for p in held:
        assert not set(p.replace(",", " ").split()) & set(erased)


def test_toy_neighbours_of_a_default_value_in_a_set_hold_no_concept_of_the_set():
    """Yellow, a default value, erased with every other colour: its neighbours would name the other
    colours, and held to the base model they held those concepts too (a nine-concept set erased
    next to nothing, BENCHMARKS.md §5p). With the set left out there is no neighbour at all."""
    nine = ["square", "triangle", "cross", "red", "green", "blue", "yellow", "solid", "striped"]
    assert any(set(p.replace(",", " ").split()) & set(nine) for p in neighbours(["yellow"]))
    assert neighbours(["yellow"], erased=nine) == ()
    three = ["yellow", "square", "striped"]
    held = neighbours(["yellow"], erased=three)
    assert held and not any(set(p.replace(",", " ").split()) & set(three) for p in held)
    assert set(held) < set(neighbours(["yellow"]))


def test_toy_erasure_in_a_set_holds_no_caption_of_an_erased_concept():
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import default_values, erase_toy, toy_config

    model = load_toy_model()
    nine = ["square", "triangle", "cross", "red", "green", "blue", "yellow", "solid", "striped"]
    assert default_values(model, nine) == ("yellow",)  # the flagged default with no colour left
    config = erase_toy(model, toy_config(nine, seed=0, steps=1, sampling_steps=2)
                       ).metadata["config"]
    assert config["retain_prompts"] == [] and config["retain_weight"] == 0.0
    pair = ["circle", "red"]  # circle is a default value; its neighbours must not name red
    config = erase_toy(model, toy_config(pair, seed=0, steps=1, sampling_steps=2)
                       ).metadata["config"]
    assert config["retain_prompts"] and config["retain_weight"] == 1.0 / 2
    assert not any({"circle", "red"} & set(p.replace(",", " ").split())
                   for p in config["retain_prompts"])
    # the retain term runs every step, the circle's trajectories are one in two: held at half
    # the weight, the circle is held as hard per trajectory of its own as when erased alone;
    # the user's own weight stays
    mine = erase_toy(model, toy_config(pair, seed=0, steps=1, sampling_steps=2, retain_weight=2.0,
                                       retain_prompts=("a blue square",))).metadata["config"]
    assert mine["retain_weight"] == 2.0 and mine["retain_prompts"] == ["a blue square"]


def test_a_toy_set_holding_a_default_value_takes_the_longer_default_steps():
    from unlearn_core.toyworld import load_toy_model
    from unlearn_core.toyworld.erasure import toy_config
    from unlearn_core.toyworld.settings import SET_WITH_DEFAULT_STEPS, TOY_SETTINGS

    model = load_toy_model()
    base = TOY_SETTINGS["steps"]
    assert SET_WITH_DEFAULT_STEPS > base
    # circle is a default value: beside red its neighbours are held, and the set trains longer
    assert toy_config(["circle", "red"], model, seed=0).steps == SET_WITH_DEFAULT_STEPS
    assert ("default_values", ("circle", "red"), 96, 50_000) in model.known  # asked once
    # steps the caller names win; without the model, the toy settings' steps
    assert toy_config(["circle", "red"], model, steps=7).steps == 7
    assert toy_config(["circle", "red"]).steps == base
    # alone, a default value keeps the single-concept budget; so does a set with no default
    # value, and a run given its own retain prompts (nothing of the toy world's is held then)
    assert toy_config(["circle"], model).steps == base
    assert toy_config(["square", "cross"], model).steps == base
    assert toy_config(["circle", "red"], model, retain_prompts=("a blue square",),
                      retain_weight=1.0).steps == base
    assert toy_config(["circle", "red"], model, method="uce").steps == base


def test_toy_eval_phrasings_hold_out_orders_and_the_longest_captions():
    assert set(TRAINED_PHRASINGS).isdisjoint(HELD_OUT_PHRASINGS)
    assert set(EVAL_PHRASINGS) == set(TRAINED_PHRASINGS) | set(HELD_OUT_PHRASINGS)
    longest = max(caption_length(p.format(s="cross", c="red", t="striped"))
                  for p in HELD_OUT_PHRASINGS)
    assert longest == 6  # the toy tokenizer reads 6 words (8 with its start and end)


def _concepts_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "concepts.py"
    spec = importlib.util.spec_from_file_location("concepts_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concepts_benchmark_rows_and_bars():
    bench = _concepts_benchmark()
    targets = bench.parse_targets("all", ["triangle,dotted,blue"])
    assert len(targets) == sum(len(v) for v in AXES.values()) + 1
    assert targets[-1] == ("triangle", "dotted", "blue")

    def run(name, method, seed, eff, ret, worst, floor=0.2):
        return {"concepts": name, "method": method, "seed": seed, "efficacy": eff,
                "floor": floor, "retention": ret, "worst_phrasing": worst,
                "length": {3: eff, 6: worst}}

    runs = [run("red", "train", s, 0.0 + 0.01 * s, 0.99, 0.05) for s in range(5)]
    runs += [run("red", "uce", 0, 0.5, 1.0, 0.6)]
    runs += [run("striped", "train", s, 0.1 * s, 0.99, 0.1) for s in range(5)]  # too wide
    table = bench.markdown_table(runs)
    red = next(line for line in table.splitlines() if line.startswith("| red |"))
    striped = next(line for line in table.splitlines() if line.startswith("| striped |"))
    assert red.endswith("| met |") and "0.50 / 1.000" in red and "3: 0.02, 6: 0.05" in red
    assert striped.endswith("| not met |")
    # a set pooled under its mean floor (0.28) while square stays far over its own (0.11)
    pair = [dict(run("square,solid", "train", s, 0.17, 0.99, 0.2, floor=0.28),
                 efficacy_by_concept={"square": 0.34, "solid": 0.0},
                 floor_by_concept={"square": 0.11, "solid": 0.45}) for s in range(5)]
    row = bench.markdown_table(pair).splitlines()[-1]
    assert "| square 0.34 (0.11) |" in row and row.endswith("| not met |")
    lines = bench.concept_table(pair).splitlines()
    assert lines[2] == ("| square,solid | square | 0.11 | 5 | 0.34 ± 0.00 | "
                        "0.34 / 0.34 / 0.34 / 0.34 / 0.34 | not met |")
    assert lines[3].startswith("| square,solid | solid | 0.45 | 5 | 0.00 ± 0.00 |")
    assert lines[3].endswith("| met |")
    for r in pair:
        r["efficacy_by_concept"] = {"square": 0.1, "solid": 0.0}
    assert bench.markdown_table(pair).splitlines()[-1].endswith("| met |")
    # under its floor on average, but one seed of five far over it: the interval fails the bar
    pair[2]["efficacy_by_concept"] = {"square": 0.1, "solid": 0.5}
    assert bench.markdown_table(pair).splitlines()[-1].endswith("| not met |")
    assert bench.concept_table(pair).splitlines()[3].endswith("| 0.00 / 0.00 / 0.50 / 0.00 / "
                                                              "0.00 | not met |")
    assert bench.concept_table(runs) == ""  # no set, no table


def test_concepts_benchmark_overrides_and_variant_rows():
    """--set-config / --vary: JSON values (else strings), every combination, one table row per
    variant, the UCE column found by the concepts alone; unknown settings refused."""
    bench = _concepts_benchmark()
    configs = bench.variants(["loss=cramer_wold", "steps=300"],
                             ["lr=3e-4,1e-3", "ema_decay=0.99,0.95"])
    assert len(configs) == 4
    assert configs[0] == {"loss": "cramer_wold", "steps": 300, "lr": 3e-4, "ema_decay": 0.99}
    assert bench.variant_label(configs[1], ["lr=3e-4,1e-3", "ema_decay=0.99,0.95"]) == \
        "lr=0.0003 ema_decay=0.95"
    assert bench.variants([], []) == [{}]
    with pytest.raises(SystemExit):
        bench.parse_overrides(["no_such_setting=1"])
    with pytest.raises(SystemExit):
        bench.parse_overrides(["lr"])

    def run(variant, seed, eff, method="train"):
        return {"concepts": "red", "variant": variant, "method": method, "seed": seed,
                "efficacy": eff, "floor": 0.2, "retention": 1.0, "worst_phrasing": eff,
                "length": {3: eff}, "unet_evals": 4950}

    runs = [run("lr=0.001", s, 0.0) for s in range(2)] + [run("lr=0.003", s, 0.5) for s in range(2)]
    runs += [run("", 0, 0.4, method="uce")]
    lines = bench.markdown_table(runs).splitlines()
    slow = next(line for line in lines if line.startswith("| red lr=0.001 |"))
    fast = next(line for line in lines if line.startswith("| red lr=0.003 |"))
    assert "| 4950 |" in slow and "0.40 / 1.000" in slow and slow.endswith("| met |")
    assert fast.startswith("| red lr=0.003 | 0.20 | 2 | 0.50 ± 0.00 |")


def test_toy_defaults_erase_a_colour_inside_captions_and_keep_the_rest():
    """The fix this file is about, end to end: with the bare word alone (the old default) "red"
    stayed in 0.75 of the captions naming it (seed 0); erased inside its captions it falls far
    (0.00 at seed 0, 0.17 at seed 1; not every colour and seed reaches its floor yet:
    BENCHMARKS.md section 5)."""
    from unlearn_core.toyworld import load_judges, load_toy_model
    from unlearn_core.toyworld.erasure import erase_toy, toy_config
    from unlearn_core.toyworld.evaluate import evaluate, retention_ratio, uncond_rate

    model, judges = load_toy_model(), load_judges()
    before = evaluate(model, judges, ["red"], repeats=1, with_clip=False)
    result = erase_toy(model, toy_config(["red"], seed=0))
    assert result.metadata["context_prompts"] == len(context_pairs("red"))
    after = evaluate(model, judges, ["red"], result, repeats=1, with_clip=False)
    floor = uncond_rate(model, judges, ["red"])
    assert before.efficacy >= 0.9
    assert after.efficacy <= max(0.3, floor + 0.05), (after.efficacy, floor)
    assert retention_ratio(after, before) >= 0.95


def test_base_target_is_the_frozen_models_anchor_prediction():
    from unlearn_core.delta import DeltaSet
    from unlearn_core.objectives import sdd_target
    from unlearn_core.selection import select_layers

    d = tiny_denoiser()
    cond = tiny_conditioning()
    layers = select_layers(d.module, "xattn")
    deltas = DeltaSet(layers, "full", 2, 2.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500, 100])
    anchor = cond.empty.expand(2, -1, -1)
    with torch.no_grad():
        base = d(x, t, anchor)
    deltas.attach()
    try:
        with torch.no_grad():
            for p in deltas.parameters():
                p.add_(0.5)
        student = sdd_target(d, deltas, [], x, t, anchor, "student")
        frozen = sdd_target(d, deltas, [], x, t, anchor, "base")
    finally:
        deltas.detach_hooks()
    assert torch.allclose(frozen, base) and not torch.allclose(student, base)
    cfg = EraseConfig(concepts=("c",), steps=2, target_from="base", **FAST)
    a, b = erase(tiny_denoiser(), cond, cfg), erase(tiny_denoiser(), cond, cfg)
    assert a.loss_history == b.loss_history and all(map(lambda v: v == v, a.loss_history))
