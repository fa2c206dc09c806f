"""Average precision and F1-max with every distinct score a threshold (scikit-learn's and anomalib's
definitions), from the counts of ranks.py.

At the threshold v (score >= v is flagged): TP(v) = positives >= v, FP(v) = negatives >= v,
precision P(v) = TP / (TP + FP), recall R(v) = TP / n_pos.
- AP = sum over thresholds, descending, of (R_n - R_{n-1}) P_n (sklearn's average_precision_score,
  no interpolation). Recall only moves at a positive's score, by (positives == v) / n_pos, so
  AP = (1 / n_pos) * sum over distinct positive scores v of (positives == v) * P(v).
- F1-max = max over thresholds of 2PR / (P + R) = 2 TP / (TP + FP + n_pos) (anomalib's F1Max over
  torchmetrics' precision-recall curve, less its 1e-10 guard). Between two positive scores TP is
  constant while FP only grows as the threshold drops, so the maximum is at a positive's score.
"""
from __future__ import annotations

import numpy as np

from .ranks import ranked_chunks, split_classes
from .roc import flat_inputs


class PrecisionSums:
    """Accumulates AP and F1-max over the chunks of ranks.ranked_chunks."""

    def __init__(self, n_pos: int, n_neg: int):
        self.n_pos, self.n_neg = n_pos, n_neg
        self.ap_sum, self.f1 = 0.0, 0.0

    def add(self, first: np.ndarray, below: np.ndarray) -> None:
        count = np.diff(first)
        tp = self.n_pos - first[:-1]
        fp = self.n_neg - below
        self.ap_sum += float((count * (tp / (tp + fp))).sum())
        self.f1 = max(self.f1, float((2.0 * tp / (tp + fp + self.n_pos)).max()))

    @property
    def ap(self) -> float:
        return self.ap_sum / self.n_pos


def precision_sums(labels, scores, metric: str) -> PrecisionSums | None:
    """AP and F1-max of flat labels and scores in one pass; None for one class only."""
    y, s = flat_inputs(labels, scores, metric)
    pos, negs, _ = split_classes(y, s)
    if pos.size == 0 or negs.n == 0:
        return None
    pos.sort()
    sums = PrecisionSums(pos.size, negs.n)
    for first, _, below, _ in ranked_chunks(pos, negs):
        sums.add(first, below)
    return sums


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """sklearn's average_precision_score of binary labels and float32 scores; None for one class only."""
    sums = precision_sums(labels, scores, "average precision")
    return None if sums is None else sums.ap


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Largest F1 over all thresholds; None for one class only."""
    sums = precision_sums(labels, scores, "F1-max")
    return None if sums is None else sums.f1
