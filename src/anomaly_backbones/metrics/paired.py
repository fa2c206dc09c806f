"""DeLong's paired test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson, Biometrics
1988), the test R's pROC runs as `roc.test(..., method = "delong", paired = TRUE)`.

Two scorers A and B rate the SAME test images. Each has its placements (metrics.delong): V10 per
positive and V01 per negative. The AUC difference A - B has variance
    Var = (S10_AA + S10_BB - 2 S10_AB) / m + (S01_AA + S01_BB - 2 S01_AB) / n
with S10 / S01 the sample covariance matrices (ddof 1) of the two scorers' placements over the m
positives / n negatives: the covariance term is what an unpaired comparison of two intervals
ignores, and on one test set it is large (the same hard images are hard for both). z = diff /
sqrt(Var), two-sided p = 2 (1 - Phi(|z|)); the 95 % interval is diff -/+ 1.96 sqrt(Var).

Pooled over categories (the study's metric is the MEAN image ROC-AUC over categories, each with its
own test set): the difference of means is the mean of the per-category differences, and since the
categories' test images are independent, Var(mean diff) = sum_c Var_c / K^2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from .delong import delong_placements
from .roc import flat_inputs

ALPHA = 0.05


@dataclass
class PairedResult:
    """auc_a, auc_b: each scorer's ROC-AUC; diff = auc_a - auc_b; var: Var(diff) (None where a class
    has fewer than 2 samples); lo, hi: diff's `level` interval; p: two-sided p-value (1.0 for a zero
    difference with zero variance: identical rankings); n_pos, n_neg: test images."""
    auc_a: float
    auc_b: float
    diff: float
    var: float | None
    lo: float | None
    hi: float | None
    p: float | None
    n_pos: int
    n_neg: int

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < ALPHA

    def as_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def _from_var(auc_a: float, auc_b: float, var: float | None, n_pos: int, n_neg: int,
              level: float = 0.95) -> PairedResult:
    diff = auc_a - auc_b
    if var is None:
        return PairedResult(auc_a, auc_b, diff, None, None, None, None, n_pos, n_neg)
    var = max(float(var), 0.0)
    half = NormalDist().inv_cdf(0.5 + level / 2) * float(np.sqrt(var))
    if var == 0.0:   # both rank every pair the same way (or one of them is constant ties-only)
        p = 1.0 if diff == 0 else 0.0
    else:
        p = 2.0 * (1.0 - NormalDist().cdf(abs(diff) / float(np.sqrt(var))))
    return PairedResult(auc_a, auc_b, diff, var, diff - half, diff + half, p, n_pos, n_neg)


def delong_paired(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray,
                  level: float = 0.95) -> PairedResult:
    """The paired test of scores_a vs scores_b on the same images (labels 1 = defective).
    Raises ValueError for unequal lengths or one class only."""
    y, a = flat_inputs(labels, scores_a, "ROC-AUC")
    _, b = flat_inputs(labels, scores_b, "ROC-AUC")
    if a.size != b.size:
        raise ValueError(f"paired DeLong needs the same test images: {a.size} vs {b.size} scores")
    m = int(np.count_nonzero(y))
    n = y.size - m
    if m == 0 or n == 0:
        raise ValueError("paired DeLong needs defective and defect-free test images")
    v10a, v01a = delong_placements(y, a)
    v10b, v01b = delong_placements(y, b)
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    if m < 2 or n < 2:
        return _from_var(auc_a, auc_b, None, m, n, level)
    s10 = np.cov(np.stack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.stack([v01a, v01b]), ddof=1)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return _from_var(auc_a, auc_b, float(var), m, n, level)


def pooled(results: list[PairedResult], level: float = 0.95) -> PairedResult:
    """The test of the mean ROC-AUC over independent categories (see the module docstring)."""
    if not results:
        raise ValueError("no categories to pool")
    k = len(results)
    var = None if any(r.var is None for r in results) else sum(r.var for r in results) / k ** 2
    return _from_var(float(np.mean([r.auc_a for r in results])), float(np.mean([r.auc_b for r in results])),
                     var, sum(r.n_pos for r in results), sum(r.n_neg for r in results), level)


def verdict(r: PairedResult, name_a: str = "A", name_b: str = "B") -> str:
    """One plain sentence: which is better, or that the two are not distinguishable."""
    if r.p is None:
        return f"{name_a} vs {name_b}: no paired test (a class has fewer than 2 test images)"
    ci = f"difference {r.diff:+.4f}, 95 % CI [{r.lo:+.4f}, {r.hi:+.4f}], p = {r.p:.3g}"
    if not r.significant:
        return f"{name_a} and {name_b} are NOT distinguishable on this test set ({ci})"
    better, worse = (name_a, name_b) if r.diff > 0 else (name_b, name_a)
    return f"{better} is significantly better than {worse} ({ci})"
