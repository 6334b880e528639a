"""Red-team attacks and adversarial erasure: plumbing on a tiny UNet (budget, determinism,
refusals before any UNet call, the user's model untouched), and on the toy world at tiny budgets
(an attack revives the concept on the untouched model more than on an erased one, and more than
no attack), the robust term's cost in StepInfo and the metadata, and ``unlearn attack``."""

from __future__ import annotations

import json

import pytest
import torch
from unlearn_testkit.tiny import CONTEXT_DIM, state_hash, tiny_conditioning, tiny_denoiser

from unlearn_core import EraseConfig, erase
from unlearn_core.attacks import AttackConfig, attack, wilson_interval
from unlearn_core.errors import Cancelled, ConfigError
from unlearn_core.toyworld import JUDGES_FILE, TOY_MODEL_FILE
from unlearn_core.toyworld.hashes import asset_path

torch.set_num_threads(1)

LATENT = (4, 8, 8)
needs_toy = pytest.mark.skipif(not (asset_path(TOY_MODEL_FILE).is_file()
                                    and asset_path(JUDGES_FILE).is_file()),
                               reason="toy-world assets missing")


class Counting:
    """A denoiser that counts its evaluations per latent, with and without gradient."""

    def __init__(self, inner):
        self.inner, self.module, self.alphas_cumprod = inner, inner.module, inner.alphas_cumprod
        self.grad = self.nograd = 0

    def __call__(self, x, t, context, **extra):
        if torch.is_grad_enabled():
            self.grad += x.shape[0]
        else:
            self.nograd += x.shape[0]
        return self.inner(x, t, context, **extra)

    def canonical_name(self, n):
        return n

    def native_name(self, n):
        return n


class Brightness:
    name = "brightness"
    scale = 1.0

    def __call__(self, images, prompts):
        return images.mean((1, 2, 3))


def decode(x):
    return torch.sigmoid(x[:, :3])


def embeddings():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 6, CONTEXT_DIM, generator=g), torch.randn(1, 6, CONTEXT_DIM, generator=g)


def tiny_attack(base, erased, **kw):
    cond, uncond = embeddings()
    settings = dict(concept="x", steps=3, batch_size=2, tokens=2, targets=2, seeds="0, 1",
                    guidance=3.0, sampling_steps=3, threshold=0.5) | kw
    return attack(base, erased, cond, uncond, Brightness(), AttackConfig(**settings), decode,
                  LATENT)


# ---- plumbing -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["concept_inversion", "prompt_attack"])
def test_budget_is_spent_exactly_and_every_evaluation_is_counted(kind):
    base, erased = Counting(tiny_denoiser(0)), Counting(tiny_denoiser(1))
    result = tiny_attack(base, erased, kind=kind, steps=4, batch_size=3)
    assert erased.grad == 4 * 3 == result.unet_evals_grad
    # targets: 2 images x 3 steps x CFG 2 (base); attacked and plain images: 2 x 2 x 3 x 2
    assert base.nograd == 2 * 3 * 2 and base.grad == 0
    assert erased.nograd == 2 * 2 * 3 * 2
    assert result.unet_evals == base.nograd + erased.nograd + erased.grad
    assert result.images.shape == (2, 3, 8, 8) and result.n == 2
    assert len(result.losses) == 4


def test_the_same_seed_gives_the_same_attack_and_another_seed_another():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    a, b = tiny_attack(base, erased, seed=3), tiny_attack(base, erased, seed=3)
    c = tiny_attack(base, erased, seed=4)
    assert torch.equal(a.context, b.context) and torch.equal(a.scores, b.scores)
    assert a.losses == b.losses
    assert not torch.equal(a.context, c.context)


def test_only_the_attacked_rows_change_and_stay_inside_the_bound():
    from unlearn_core.attacks.core import row_bound

    cond, uncond = embeddings()
    for kind, rows, start in (("concept_inversion", [1, 2], uncond),
                              ("prompt_attack", [4, 5], cond)):
        r = tiny_attack(tiny_denoiser(0), tiny_denoiser(1), kind=kind, lr=1.0, norm_scale=0.5)
        changed = (r.context[0] != start[0]).any(-1).nonzero().flatten().tolist()
        assert changed == rows, kind
        bound = 0.5 * row_bound(cond, uncond)
        assert float(r.context[0, rows].norm(dim=-1).max()) <= bound * (1 + 1e-5)


def test_the_models_are_never_written_and_no_gradient_is_left_behind():
    base, erased = tiny_denoiser(0), tiny_denoiser(1)
    before = (state_hash(base.module), state_hash(erased.module))
    tiny_attack(base, erased, steps=3)
    for module, saved in zip((base.module, erased.module), before):
        for k, v in module.state_dict().items():
            assert torch.equal(v, saved[k]), k
        assert all(p.grad is None for p in module.parameters())


def test_an_erasure_is_attacked_on_the_base_weights_which_stay_untouched():
    base = tiny_denoiser(0)
    cond = tiny_conditioning()
    result = erase(base, cond, EraseConfig(concepts=("x",), steps=2, resolution=8,
                                           result="student", lr=1e-3))
    before = state_hash(base.module)
    r = tiny_attack(base, result, steps=2)
    assert r.unet_evals_grad == 4
    for k, v in base.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cancel_stops_at_the_step_it_comes_in():
    calls = []
    with pytest.raises(Cancelled):
        cond, uncond = embeddings()
        attack(tiny_denoiser(0), tiny_denoiser(1), cond, uncond, Brightness(),
               AttackConfig(concept="x", steps=50, batch_size=1, tokens=1, targets=1, seeds="0",
                            sampling_steps=2), decode, LATENT,
               on_progress=lambda done, total: calls.append(done) or done == 3)
    assert calls[-1] == 3


def test_own_images_replace_the_generated_targets():
    base = Counting(tiny_denoiser(0))
    cond, uncond = embeddings()
    own = torch.randn(3, *LATENT, generator=torch.Generator().manual_seed(9))
    r = attack(base, tiny_denoiser(1), cond, uncond, Brightness(),
               AttackConfig(concept="x", steps=2, batch_size=2, tokens=1, seeds="0",
                            sampling_steps=2), decode, targets=own)
    assert base.nograd == 0  # no target generated by the base model
    assert r.images.shape == (1, 3, 8, 8)


def test_probe_kind_reports_the_probe_on_the_same_scale():
    r = tiny_attack(tiny_denoiser(0), tiny_denoiser(1), kind="probe", psis="0.5, 1.0",
                    seeds="0-2")
    assert r.kind == "probe" and r.n == 6 and r.ccs is not None and r.unet_evals_grad == 0
    assert r.images.shape == (6, 3, 8, 8)
    assert "partial-diffusion probe" in r.summary() and "CCS-style score" in r.summary()


@pytest.mark.parametrize("settings, field", [
    (dict(concept="  "), "concept"),
    (dict(kind="jailbreak"), "kind"),
    (dict(steps=0), "steps"),
    (dict(seeds="0, x"), "seeds"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(psis="2"), "psis"),
    (dict(norm_scale=0.0), "norm_scale"),
])
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(ConfigError) as e:
        AttackConfig(**({"concept": "x"} | settings))
    assert e.value.field == field and "Fix:" in str(e.value)


def test_bad_inputs_are_refused_before_any_unet_call():
    base, erased = Counting(tiny_denoiser(0)), Counting(tiny_denoiser(1))
    cond, uncond = embeddings()
    cfg = AttackConfig(concept="x", tokens=6)  # 6 rows, one of them the start token
    cases = [
        ((cond, uncond, cfg), "tokens"),
        ((cond[:, :4], uncond, AttackConfig(concept="x")), "concept"),
        ((cond * float("nan"), uncond, AttackConfig(concept="x")), "concept"),
        ((cond.expand(2, -1, -1), uncond, AttackConfig(concept="x")), "concept"),
    ]
    for (c, u, config), field in cases:
        with pytest.raises(ConfigError) as e:
            attack(base, erased, c, u, Brightness(), config, decode, LATENT)
        assert e.value.field == field
    with pytest.raises(ConfigError) as e:
        attack(base, erased, cond, uncond, Brightness(), AttackConfig(concept="x"), decode,
               targets=torch.full((2, *LATENT), float("nan")))
    assert e.value.field == "images"
    with pytest.raises(ConfigError) as e:
        attack(base, erased, cond, uncond, Brightness(), AttackConfig(concept="x"), decode)
    assert e.value.field == "latent_shape"
    assert base.grad + base.nograd + erased.grad + erased.nograd == 0


def test_wilson_interval():
    assert wilson_interval(0, 16)[0] == 0.0 and 0.15 < wilson_interval(0, 16)[1] < 0.25
    lo, hi = wilson_interval(8, 16)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9
    assert wilson_interval(16, 16)[1] == 1.0


# ---- adversarial erasure ------------------------------------------------------------------

def test_robust_erasure_counts_its_cost_and_records_its_budget():
    from unlearn_core.robust import ROBUST_IMAGES

    base = tiny_denoiser(0)
    infos = []
    cfg = EraseConfig(concepts=("x",), steps=4, resolution=8, batch_size=2, robust="adversarial",
                      robust_every=2, robust_inner_steps=3, robust_tokens=2)
    result = erase(base, tiny_conditioning(), cfg, callback=infos.append)
    # images: ROBUST_IMAGES x 10 steps x CFG 2; inner: 2 runs x 3 steps x batch 2; outer
    # (objective esd): 4 steps x (2 with gradient + 2 x 2 for the base model's target)
    images = ROBUST_IMAGES * 10 * 2
    adv = images + 2 * 3 * 2 + 4 * (2 + 2 * 2)
    assert infos[-1].adversarial_evals == adv == result.metadata["unet_evals_adversarial"]
    plain = erase(base, tiny_conditioning(), cfg.replace(robust="none"))
    total = result.metadata["unet_evals_grad"] + result.metadata["unet_evals_nograd"]
    assert total == plain.metadata["unet_evals_grad"] + plain.metadata["unet_evals_nograd"] + adv
    assert infos[-1].unet_evals == total
    meta = result.metadata["robust"]
    assert meta["inner_runs"] == 2 and meta["inner_steps"] == 3 and meta["every"] == 2
    # objective sdd: the outer target is one pass (the student's empty prompt) per image
    sdd = erase(base, tiny_conditioning(), cfg.replace(objective="sdd"))
    assert sdd.metadata["unet_evals_adversarial"] == images + 2 * 3 * 2 + 4 * (2 + 2)


def _robust_setup():
    """A tiny UNet, its conditioning, a robust config (an inner run every step) and a detached
    delta set over its layers: what an AdversarialTerm is built from in the tests below."""
    from unlearn_core.delta import DeltaSet
    from unlearn_core.selection import select_layers

    base = tiny_denoiser(0)
    cond = tiny_conditioning()
    cfg = EraseConfig(concepts=("x",), steps=4, resolution=8, batch_size=4, robust="adversarial",
                      robust_every=1, robust_inner_steps=1, robust_tokens=2)
    deltas = DeltaSet(select_layers(base.module, cfg.selection), "full", 4, 4.0,
                      torch.Generator().manual_seed(0), torch.device("cpu"))
    return base, cond, cfg, deltas


def test_robust_term_targets_the_objective_and_trains_every_adversary():
    """Under esd the adversarial prediction is pulled to the frozen base model's negative
    guidance away from the concept prompt (deltas off), under sdd to the student's empty-prompt
    prediction; the outer batch holds every kind of adversary learned so far, in turn."""
    from unlearn_core.objectives import esd_target
    from unlearn_core.robust import KINDS, AdversarialTerm

    base, cond, cfg, deltas = _robust_setup()
    with torch.no_grad():
        for p in deltas.parameters():
            p.normal_(0, 0.1)
    deltas.attach()
    try:
        term = AdversarialTerm(base, deltas, cond, cfg, (4, 8, 8), torch.device("cpu"),
                               torch.float32)
        x = torch.randn(2, 4, 8, 8)
        t = torch.tensor([10, 500])
        empty = cond.empty.expand(2, -1, -1)
        expected = esd_target(base, deltas, x, t, cond.concepts[0].expand(2, -1, -1), empty,
                              cfg.esd_eta)
        assert torch.allclose(term._target(x, t, 0), expected)
        with torch.no_grad():
            student_empty = base(x, t, empty)
        assert not torch.allclose(expected, student_empty)
        term.config = cfg.replace(objective="sdd")
        assert torch.allclose(term._target(x, t, 0), student_empty)
        term.config = cfg
        term.term(0, 0)  # first inner run: the prompt attack only
        assert list(term.adversaries[0]) == [KINDS[0]]
        assert torch.equal(term._adversarial_batch(0, 2)[1], term.adversaries[0][KINDS[0]][0])
        term.term(1, 0)  # second: the inversion; the batch alternates between the two
        batch = term._adversarial_batch(0, 4)
        for i in range(4):
            assert torch.equal(batch[i], term.adversaries[0][KINDS[i % 2]][0])
    finally:
        deltas.detach_hooks()


def test_robust_inner_attack_refines_each_kinds_last_adversary(monkeypatch):
    """The first inner run of a kind starts from the prompt's own rows (the concept prompt for
    the prompt attack, the empty prompt for the inversion); every later run of that kind starts
    from the rows the previous one learned, and replaces them."""
    from unlearn_core import robust

    starts = []
    real = robust.learn_context

    def spy(denoiser, start, *args, **kwargs):
        starts.append(start.clone())
        return real(denoiser, start, *args, **kwargs)

    monkeypatch.setattr(robust, "learn_context", spy)
    monkeypatch.setattr(robust, "ROBUST_IMAGES", 2)
    base, cond, cfg, deltas = _robust_setup()
    deltas.attach()
    try:
        term = robust.AdversarialTerm(base, deltas, cond, cfg, (4, 8, 8), torch.device("cpu"),
                                      torch.float32)
        learned = []
        for step in range(4):  # the kinds take turns: prompt attack, inversion, twice
            term.term(step * cfg.robust_every, 0)
            kind = robust.KINDS[step % 2]
            learned.append(term.adversaries[0][kind].clone())
        assert torch.equal(starts[0], cond.concepts[0]) and torch.equal(starts[1], cond.empty)
        assert torch.equal(starts[2], learned[0]) and torch.equal(starts[3], learned[1])
        assert not torch.equal(learned[2], learned[0])  # refined, not kept
        assert term.inner_runs == 4
    finally:
        deltas.detach_hooks()


def test_robust_weight_zero_changes_nothing_under_either_objective():
    base = tiny_denoiser(0)
    cfg = EraseConfig(concepts=("x",), steps=3, resolution=8, result="student", lr=1e-3)
    a = erase(base, tiny_conditioning(), cfg)
    b = erase(base, tiny_conditioning(), cfg.replace(robust="adversarial", robust_weight=0.0,
                                                      robust_every=1, robust_inner_steps=1))
    for name, d in a.deltas.items():
        assert torch.equal(d.diff, b.deltas[name].diff), name
    sdd = cfg.replace(objective="sdd")
    a = erase(base, tiny_conditioning(), sdd)
    b = erase(base, tiny_conditioning(), sdd.replace(robust="adversarial", robust_weight=0.0,
                                                      robust_every=1, robust_inner_steps=1))
    for name, d in a.deltas.items():
        assert torch.equal(d.diff, b.deltas[name].diff), name


# ---- the toy world ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy():
    from unlearn_core.toyworld.world import load_toy_world

    return load_toy_world()


@needs_toy
def test_attack_revives_the_concept_on_the_untouched_model_more_than_on_an_erased_one(toy):
    from unlearn_core.result import weights_hash
    from unlearn_core.toyworld.attacks import toy_attack, toy_config

    erased = toy.erase("cross", method="uce")
    before = weights_hash(toy.model.unet)
    small = dict(steps=40, batch_size=4, seeds=tuple(range(8)), targets=8, sampling_steps=8)
    on_base = toy_attack(toy, None, toy_config("cross", "prompt_attack", **small))
    on_erased = toy_attack(toy, erased, toy_config("cross", "prompt_attack", **small))
    assert on_base.asr >= 0.75 and on_base.asr > on_erased.asr
    assert float(on_erased.scores.mean()) < float(on_base.scores.mean())
    # and the attack brings back more than the plain prompt shows on the erased model
    assert float(on_erased.scores.mean()) > float(on_erased.plain_scores.mean())
    assert weights_hash(toy.model.unet) == before


@needs_toy
def test_toy_attack_refuses_a_concept_the_judges_do_not_know(toy):
    from unlearn_core.toyworld.attacks import toy_attack, toy_config

    with pytest.raises(ConfigError) as e:
        toy_attack(toy, None, toy_config("a photo of a dog", steps=1))
    assert e.value.field == "concept"


# ---- unlearn attack -----------------------------------------------------------------------

@needs_toy
def test_cli_attacks_the_untouched_toy_model_and_writes_its_files(tmp_path, capsys):
    from unlearn_core.cli import main

    code = main(["attack", "--concept", "cross", "--kind", "prompt_attack", "--method", "none",
                 "--steps", "2", "--batch-size", "2", "--targets", "2", "--seeds", "0, 1",
                 "--sampling-steps", "4", "--threads", "1", "--output", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "prompt attack on 'cross': ASR" in out
    data = json.loads((tmp_path / "attack.json").read_text())
    assert data["n"] == 2 and data["unet_evals_grad"] == 4
    assert (tmp_path / "attack_images.png").is_file() and (tmp_path / "attack.md").is_file()


@pytest.mark.parametrize("argv, start", [
    (["--tokens", "0"], "tokens = 0"),
    (["--kind", "probe", "--psis", "1.5"], "psis = "),
    (["--model", "/nonexistent"], "--erasure = None"),
    (["--robust", "adversarial"], "--robust = 'adversarial'"),
    (["--erasure", "/nonexistent.safetensors"], "--erasure = "),
    (["--images", "/nonexistent-folder"], "--images = "),
])
def test_cli_refuses_bad_input_in_one_line_before_loading(argv, start, capsys, monkeypatch):
    from unlearn_core import cli
    from unlearn_core.toyworld import world as toy

    monkeypatch.setattr(toy, "load_toy_world", lambda *a: pytest.fail("loaded a model"))
    code = cli.main(["attack", "--concept", "cross", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"unlearn attack: error: {start}") and "Fix:" in err


def test_cli_attacks_an_erasure_file_on_a_model_folder_with_own_images(tmp_path, capsys):
    from test_metrics_cli import add_tiny_vae, random_tiny_clip_file
    from unlearn_testkit.sd1_fixture import make_sd1_folder

    from unlearn_core.cli import main
    from unlearn_core.delta import Delta
    from unlearn_core.files import save_erasure
    from unlearn_core.metrics.images import save_png
    from unlearn_core.sd1 import SD1Pipeline
    from unlearn_core.selection import select_layers
    from unlearn_core.toyworld.clip import CLIP_NAME

    root = make_sd1_folder(tmp_path / "sd1")
    add_tiny_vae(root)
    unet = SD1Pipeline(root).denoiser.module
    g = torch.Generator().manual_seed(0)
    deltas = {n: Delta(diff=torch.randn(m.weight.shape, generator=g) * 0.1)
              for n, m in select_layers(unet, "xattn-kv").items()}
    erasure = save_erasure(tmp_path / "erasure.safetensors", deltas, {"note": "test"})
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    own = tmp_path / "own"
    for i in range(2):
        save_png(torch.rand(3, 64, 64, generator=g), own / f"{i}.png")
    out = tmp_path / "out"
    code = main(["attack", "--model", str(root), "--erasure", str(erasure), "--concept", "a cat",
                 "--kind", "prompt_attack", "--clip-arch", CLIP_NAME, "--clip-weights",
                 str(random_tiny_clip_file(tmp_path)), "--threshold", "10", "--resolution", "64",
                 "--steps", "2", "--batch-size", "1", "--seeds", "0-1", "--sampling-steps", "2",
                 "--images", str(own), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "attack.json").read_text())
    assert data["n"] == 2 and data["score"] == "CLIP score" and data["unet_evals_grad"] == 2
    # own images: no target generation (2 seeds x 2 steps x CFG 2, attacked and plain)
    assert data["unet_evals"] == 2 + 2 * 2 * 2 * 2
    after = SD1Pipeline(root).denoiser.module.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
