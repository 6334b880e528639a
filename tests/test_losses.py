"""Pure maths of the losses: invariants and agreement with float64 references from the formulas."""

import math

import numpy as np
import pytest
import torch

from unlearn_core import LOSSES
from unlearn_core.losses import silverman_gamma

LN2 = math.log(2)
NAMES = ["l2", "jensen_shannon", "cramer_wold", "jensen_shannon_gaussian"]


def pair(dtype, shape=(4, 3, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return a, b


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_at_identity_nonnegative_symmetric(name, dtype):
    fn = LOSSES[name]
    a, b = pair(dtype)
    assert fn(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    ab, ba = fn(a, b).item(), fn(b, a).item()
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-5, abs=1e-7)
    for s in range(5):
        x, y = pair(dtype, seed=s + 10)
        assert fn(x, y).item() >= 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-4])
def test_finite_gradients_at_identity_and_extremes(name, scale):
    a, b = pair(torch.float32)
    for x, y in [(a * scale, a * scale), (a * scale, b * scale), (a * 1e4, -a * 1e4)]:
        x = x.clone().requires_grad_(True)
        loss = LOSSES[name](x, y)
        loss.backward()
        assert torch.isfinite(loss)
        assert torch.isfinite(x.grad).all()


def test_bf16_inputs_are_finite():
    a, b = pair(torch.bfloat16)
    for name in NAMES:
        assert torch.isfinite(LOSSES[name](a, b).float())


def js_reference(a, b, tau=1.0):
    """Straight from the definition, float64 numpy, per (sample, channel) over positions."""
    a = a.double().numpy().reshape(a.shape[0], a.shape[1], -1) / tau
    b = b.double().numpy().reshape(b.shape[0], b.shape[1], -1) / tau
    p = np.exp(a - a.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(b - b.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    m = (p + q) / 2
    kl = lambda u, v: (u * np.log(u / v)).sum(-1)  # noqa: E731
    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0])
def test_js_matches_reference_and_is_bounded(tau):
    a, b = pair(torch.float32)
    got = LOSSES["jensen_shannon"](a, b, temperature=tau).item()
    assert got == pytest.approx(js_reference(a, b, tau), rel=1e-4)
    # Far-apart one-hot-like distributions approach, never pass, ln 2.
    x = torch.zeros(2, 1, 4, 4)
    y = torch.zeros(2, 1, 4, 4)
    x[..., 0, 0] = 200
    y[..., 3, 3] = 200
    far = LOSSES["jensen_shannon"](x, y).item()
    assert LN2 - 1e-4 < far <= LN2 + 1e-6


def test_js_is_blind_to_a_constant_shift_per_channel():
    a, b = pair(torch.float32)
    shift = torch.randn(1, a.shape[1], 1, 1) * 5
    assert LOSSES["jensen_shannon"](a + shift, a).item() == pytest.approx(0.0, abs=1e-6)
    assert LOSSES["jensen_shannon"](a, b, axis="all").item() > 0


def cw_reference(x, y, gamma):
    x = x.double().numpy().reshape(x.shape[0], -1)
    y = y.double().numpy().reshape(y.shape[0], -1)
    n, d = x.shape

    def phi(s):
        return (1 + 4 * s / (2 * d - 3)) ** -0.5

    def k(u, v):
        return sum(phi(((ui - vj) ** 2).sum() / (4 * gamma)) for ui in u for vj in v)

    return (k(x, x) + k(y, y) - 2 * k(x, y)) / (2 * n * n * math.sqrt(math.pi * gamma))


def test_cw_matches_reference():
    a, b = pair(torch.float32, shape=(3, 2, 4, 4))
    for gamma in [0.0, 0.7]:
        g = gamma or silverman_gamma(3)
        got = LOSSES["cramer_wold"](a, b, bandwidth=gamma).item()
        assert got == pytest.approx(cw_reference(a, b, g), rel=1e-4)


@pytest.mark.parametrize("mode", ["closed_form", "sliced"])
def test_cw_is_a_distance_between_sets(mode):
    a, b = pair(torch.float32, shape=(5, 2, 4, 4))
    perm = torch.tensor([3, 0, 4, 1, 2])

    def cw(x, y):
        return LOSSES["cramer_wold"](x, y, mode=mode,
                                     generator=torch.Generator().manual_seed(1)).item()

    assert cw(a, b[perm]) == pytest.approx(cw(a, b), rel=1e-5)
    # L2 pairs samples by position, so reordering one batch changes it.
    assert LOSSES["l2"](a, b[perm]).item() != pytest.approx(LOSSES["l2"](a, b).item(), rel=1e-3)
    # Same set in another order: zero.
    assert cw(a, a[perm]) == pytest.approx(0.0, abs=1e-6)


def test_cw_at_batch_one_is_monotone_in_l2():
    base = torch.randn(1, 2, 4, 4)
    direction = torch.randn(1, 2, 4, 4)
    values = [LOSSES["cramer_wold"](base, base + r * direction).item()
              for r in [0.0, 0.1, 0.5, 1, 2, 5, 20]]
    assert all(b > a for a, b in zip(values, values[1:]))
    # saturates: the bound is 1/sqrt(pi * gamma)
    assert values[-1] < 1 / math.sqrt(math.pi * silverman_gamma(1))


def test_gaussian_js_small_and_large_delta():
    a = torch.zeros(1, 1, 2, 2)
    b = a.clone()
    b[0, 0, 0, 0] = 0.01  # Delta = 0.01
    assert LOSSES["jensen_shannon_gaussian"](a, b).item() == pytest.approx(0.01**2 / 8, rel=0.02)
    b[0, 0, 0, 0] = 40.0
    assert LOSSES["jensen_shannon_gaussian"](a, b).item() == pytest.approx(LN2, abs=1e-3)


def test_gaussian_js_matches_monte_carlo():
    # JS between N(0, 1) and N(delta, 1), estimated by sampling, against the Gauss-Hermite form.
    rng = np.random.default_rng(0)
    delta = 1.3
    x = rng.standard_normal(400_000)

    def logpdf(v, mu):
        return -0.5 * (v - mu) ** 2

    def kl_to_m(samples, mu_self, mu_other):
        lp = logpdf(samples, mu_self)
        lm = np.logaddexp(lp, logpdf(samples, mu_other)) - LN2
        return (lp - lm).mean()

    mc = 0.5 * kl_to_m(x, 0, delta) + 0.5 * kl_to_m(x + delta, delta, 0)
    a = torch.zeros(1, 1, 1, 1)
    got = LOSSES["jensen_shannon_gaussian"](a, a + delta).item()
    assert got == pytest.approx(mc, abs=3e-3)
