"""Exact ROC-AUC for tens of millions of pixels, and compact ROC curves.

Each class's scores are sorted in place with numpy's sort (vectorized on AVX-512/AVX2 CPUs, far
faster than an argsort), and each score of the smaller class finds, by binary search in the larger
class, how many of the other class lie below it and how many tie with it: the Mann-Whitney count
with ties at half weight, equal to sklearn's roc_auc_score to floating-point rounding, without its
argsort of float64 over every pixel. Timings: docs/performance.md, "Metrics".
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..features import all_finite

NEEDLE_CHUNK = 2**22  # smaller-class scores searched at once: their int64 positions stay at 32 MB


def check_finite(scores: np.ndarray, metric: str) -> None:
    """UserError when scores hold NaN or Inf: every metric of them is undefined."""
    if not all_finite(scores):
        raise UserError(f"anomaly scores contain NaN or Inf: {metric} is undefined. Check the features "
                        "(init/weights) and the method's params.")


def flat_inputs(labels, scores, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(bool labels, float32 scores), both flat and of one length; scores checked finite."""
    y = np.asarray(labels, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float32).ravel()
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    check_finite(s, metric)
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC-AUC (ties count 1/2) of float32 scores against binary labels."""
    y, s = flat_inputs(labels, scores, "ROC-AUC")
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    big_is_neg = n_neg >= n_pos
    pos, neg = s[y], s[~y]                     # copies, sorted in place (-0.0 and +0.0 compare equal)
    small, big = (pos, neg) if big_is_neg else (neg, pos)
    small.sort()                               # sorted needles: the binary searches stay in cache
    big.sort()
    below = tied = 0.0
    for c in range(0, small.size, NEEDLE_CHUNK):
        needles = small[c:c + NEEDLE_CHUNK]
        lo = np.searchsorted(big, needles, "left")
        below += lo.sum(dtype=np.float64)
        # ties only where a needle equals the element at its insertion point (rare for continuous scores)
        eq = big[np.minimum(lo, big.size - 1)] == needles
        if eq.any():
            tied += (np.searchsorted(big, needles[eq], "right") - lo[eq]).sum(dtype=np.float64)
    # positives above negatives: each positive's negatives below it, or (small = negatives) the
    # positives that are neither below nor tied with each negative
    wins = below if big_is_neg else n_pos * n_neg - below - tied
    return float((wins + 0.5 * tied) / (n_pos * n_neg))


def auc_from_counts(below: int, tied: int, n_pos: int, n_neg: int) -> float:
    """ROC-AUC from the Mann-Whitney counts over all (positive, negative) pairs: pairs with the
    negative below, pairs tied. The same arithmetic as roc_auc: the same float for the same counts."""
    return float((np.float64(below) + 0.5 * np.float64(tied)) / (n_pos * n_neg))


def roc_auc_bytes(n: int) -> float:
    """Memory roc_auc needs for n scores besides its inputs: the complement of the labels, both
    classes' scores (sorted in place), and one chunk of needles' positions and comparisons."""
    return 5.0 * n + 21.0 * NEEDLE_CHUNK


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """FPR/TPR at `points` score thresholds (quantiles): a curve small enough for plots."""
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores, dtype=np.float64).ravel()
    thr = np.unique(np.quantile(s, np.linspace(0, 1, points)))[::-1]
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tpr = 1.0 - np.searchsorted(pos, thr, side="left") / max(len(pos), 1)
    fpr = 1.0 - np.searchsorted(neg, thr, side="left") / max(len(neg), 1)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], tpr, [1.0]))
