"""ROC-AUC with its confidence interval by DeLong's method (DeLong, DeLong & Clarke-Pearson,
Biometrics 1988), computed with midranks as Sun & Xu's fast DeLong (IEEE SPL 2014).

Each positive's placement V10 = share of negatives below it (ties 1/2) = (its midrank among all
scores - its midrank among the positives) / n_neg; each negative's V01 = share of positives above
it. AUC = mean(V10), Var(AUC) = var(V10) / n_pos + var(V01) / n_neg (sample variances), and the
interval is AUC -/+ z * sqrt(Var) (normal approximation), clipped to [0, 1].
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np
from scipy.stats import rankdata

from .roc import flat_inputs


def delong_placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V10 per positive, V01 per negative), float64, from midranks."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float32).ravel().astype(np.float64)
    pos, neg = s[y], s[~y]
    m, n = pos.size, neg.size
    both = rankdata(np.concatenate([pos, neg]))
    v10 = (both[:m] - rankdata(pos)) / n
    v01 = 1.0 - (both[m:] - rankdata(neg)) / m
    return v10, v01


def delong_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, float | None]:
    """(auc, Var(auc)) by DeLong; (None, None) for one class only, variance None when a class has a
    single sample."""
    y, s = flat_inputs(labels, scores, "ROC-AUC")
    m = int(np.count_nonzero(y))
    n = y.size - m
    if m == 0 or n == 0:
        return None, None
    v10, v01 = delong_placements(y, s)
    auc = float(v10.mean())
    if m < 2 or n < 2:
        return auc, None
    return auc, float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def interval(auc: float, var: float | None, level: float = 0.95) -> tuple[float | None, float | None]:
    """The normal-approximation `level` interval auc -/+ z sqrt(var), clipped to [0, 1]."""
    if var is None:
        return None, None
    half = NormalDist().inv_cdf(0.5 + level / 2) * float(np.sqrt(var))
    return max(0.0, auc - half), min(1.0, auc + half)


def mean_interval(aucs: list[float], variances: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Interval of the mean ROC-AUC over categories (independent test sets): Var(mean) = sum Var_i / K^2."""
    if not aucs or any(v is None for v in variances):
        return None, None
    return interval(float(np.mean(aucs)), float(np.sum(variances)) / len(aucs) ** 2, level)


def roc_auc_delong(labels: np.ndarray, scores: np.ndarray, level: float = 0.95
                   ) -> tuple[float | None, float | None, float | None]:
    """(auc, lo, hi): ROC-AUC and its `level` interval. None where undefined: all three for one
    class only, the bounds when a class has a single sample (no variance)."""
    auc, var = delong_variance(labels, scores)
    if auc is None:
        return None, None, None
    return (auc, *interval(auc, var, level))
