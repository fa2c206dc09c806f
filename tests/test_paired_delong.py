"""DeLong's paired test against a brute-force implementation written here from the paper's
definitions (the Mann-Whitney kernel over every positive x negative pair, no ranks), and its
behaviour on constructed cases."""
from statistics import NormalDist

import numpy as np
import pytest

from anomaly_backbones.metrics.paired import delong_paired, pooled, verdict


def psi(x, y):
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def brute_force(labels, a, b):
    """DeLong et al. 1988, eq. (4)-(6), with loops: structural components from the kernel."""
    pos = [i for i, t in enumerate(labels) if t]
    neg = [i for i, t in enumerate(labels) if not t]
    m, n = len(pos), len(neg)
    comps = {}
    for name, s in (("a", a), ("b", b)):
        v10 = [sum(psi(s[i], s[j]) for j in neg) / n for i in pos]
        v01 = [sum(psi(s[i], s[j]) for i in pos) / m for j in neg]
        comps[name] = (v10, v01, sum(v10) / m)

    def cov(u, v, mu, mv):
        return sum((x - mu) * (y - mv) for x, y in zip(u, v)) / (len(u) - 1)

    (a10, a01, ta), (b10, b01, tb) = comps["a"], comps["b"]
    s10 = [[cov(a10, a10, ta, ta), cov(a10, b10, ta, tb)], [0, cov(b10, b10, tb, tb)]]
    s01 = [[cov(a01, a01, ta, ta), cov(a01, b01, ta, tb)], [0, cov(b01, b01, tb, tb)]]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    z = (ta - tb) / var ** 0.5
    return ta, tb, var, 2 * (1 - NormalDist().cdf(abs(z)))


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_matches_brute_force(seed, ties):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(23), np.zeros(31)].astype(bool)
    base = rng.normal(size=y.size) + 1.2 * y
    a = base + 0.5 * rng.normal(size=y.size)            # correlated scorers: same images hard for both
    b = base + 0.9 * rng.normal(size=y.size)
    if ties:   # coarse scores: many ties within and across classes
        a, b = np.round(a), np.round(b * 2) / 2
    ta, tb, var, p = brute_force(y.tolist(), a.astype(np.float32).tolist(), b.astype(np.float32).tolist())
    r = delong_paired(y, a, b)
    assert r.auc_a == pytest.approx(ta, abs=1e-12) and r.auc_b == pytest.approx(tb, abs=1e-12)
    assert r.var == pytest.approx(var, rel=1e-9)
    assert r.p == pytest.approx(p, rel=1e-7)
    half = 1.959963984540054 * var ** 0.5
    assert (r.lo, r.hi) == pytest.approx((ta - tb - half, ta - tb + half), rel=1e-9)


def test_pairing_narrows_the_interval():
    """Two strongly correlated scorers: the paired variance is far below the sum of the unpaired
    ones (which an overlap of two separate intervals implicitly uses)."""
    from anomaly_backbones.metrics.delong import delong_variance

    rng = np.random.default_rng(3)
    y = rng.random(200) < 0.4
    base = rng.normal(size=200) + y
    a, b = base + 0.05 * rng.normal(size=200), base + 0.05 * rng.normal(size=200)
    r = delong_paired(y, a, b)
    unpaired = delong_variance(y, a)[1] + delong_variance(y, b)[1]
    assert r.var < 0.1 * unpaired


def test_identical_and_clearly_different():
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(40), np.zeros(40)].astype(bool)
    s = rng.normal(size=80) + 0.5 * y
    same = delong_paired(y, s, s.copy())
    assert same.diff == 0 and same.p == 1.0 and not same.significant
    assert "NOT distinguishable" in verdict(same, "lite0", "lite1")
    good = s + 5 * y                                  # separates the classes perfectly
    r = delong_paired(y, good, s)
    assert r.diff > 0.2 and r.p < 1e-4 and r.significant and r.lo > 0
    assert verdict(r, "good", "weak").startswith("good is significantly better")


def test_pooled_is_the_mean_difference_with_summed_variances():
    rng = np.random.default_rng(5)
    parts = []
    for _ in range(3):
        y = rng.random(60) < 0.5
        base = rng.normal(size=60) + y
        parts.append(delong_paired(y, base + 0.3 * rng.normal(size=60), base + 0.3 * rng.normal(size=60)))
    p = pooled(parts)
    assert p.diff == pytest.approx(np.mean([x.diff for x in parts]))
    assert p.var == pytest.approx(sum(x.var for x in parts) / 9)
    z = p.diff / p.var ** 0.5
    assert p.p == pytest.approx(2 * (1 - NormalDist().cdf(abs(z))))


def test_bad_inputs():
    y = np.array([1, 0, 1, 0], bool)
    with pytest.raises(ValueError, match="4 labels but 5 scores"):
        delong_paired(y, np.arange(4.0), np.arange(5.0))
    with pytest.raises(ValueError, match="defective and defect-free"):
        delong_paired(np.ones(4, bool), np.arange(4.0), np.arange(4.0))
