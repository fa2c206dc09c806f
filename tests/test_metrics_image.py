"""Image metrics: AP and F1-max against scikit-learn, DeLong's interval against the O(n^2) definition."""
from statistics import NormalDist

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
)

from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import (
    IMAGE_KEYS,
    IMAGE_VAR_KEY,
    average_precision,
    f1_max,
    image_metrics,
    mean_interval,
    roc_auc,
    roc_auc_delong,
)
from anomaly_backbones.metrics.delong import delong_variance


def scores_with_ties(n, decimals, positives, seed):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < positives
    y[:2] = [True, False]
    return y, np.round(rng.normal(size=n) + y, decimals).astype(np.float32)


CASES = [(n, d, p) for n, d in [(5, 0), (60, 1), (400, 1), (3000, 3)] for p in (0.2, 0.7)]


@pytest.mark.parametrize("n,decimals,positives", CASES)
def test_ap_and_f1max_match_sklearn(n, decimals, positives):
    y, s = scores_with_ties(n, decimals, positives, seed=n)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    assert f1_max(y, s) == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-300)), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_f1max_is_the_best_over_every_distinct_threshold(seed):
    y, s = scores_with_ties(80, 0, 0.4, seed)
    best = 0.0
    for t in np.unique(s):
        tp, fp, fn = np.sum(y & (s >= t)), np.sum(~y & (s >= t)), np.sum(y & (s < t))
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    assert f1_max(y, s) == pytest.approx(best, abs=1e-12)


def brute_delong(y, s):
    """DeLong's placements by direct comparison of every (positive, negative) pair."""
    pos, neg = s[y].astype(np.float64), s[~y].astype(np.float64)
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    var = v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size
    return auc, var


@pytest.mark.parametrize("n,decimals,positives", CASES)
def test_delong_matches_the_pairwise_definition(n, decimals, positives):
    y, s = scores_with_ties(n, decimals, positives, seed=7 * n)
    auc, var = brute_delong(y, s)
    half = NormalDist().inv_cdf(0.975) * np.sqrt(var)
    got = roc_auc_delong(y, s)
    assert got[0] == pytest.approx(auc, abs=1e-12)
    assert got[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got[1] == pytest.approx(max(0.0, auc - half), abs=1e-12)
    assert got[2] == pytest.approx(min(1.0, auc + half), abs=1e-12)


def test_delong_hand_example_and_clipping():
    # positives 1, 2; negatives 0, 1.5: placements V10 = (1/2, 1), V01 = (1, 1/2); AUC 3/4;
    # var = 0.125 / 2 + 0.125 / 2 = 0.125; half-width 1.95996 * 0.35355 = 0.69295
    auc, lo, hi = roc_auc_delong([1, 1, 0, 0], [1.0, 2.0, 0.0, 1.5])
    assert auc == 0.75
    assert lo == pytest.approx(0.75 - NormalDist().inv_cdf(0.975) * np.sqrt(0.125), abs=1e-12)
    assert hi == 1.0                                                     # clipped
    assert roc_auc_delong([1, 1, 0, 0], [3.0, 2.0, 0.0, 1.0]) == (1.0, 1.0, 1.0)   # separable: no variance
    assert roc_auc_delong([1, 0, 0], [1.0, 0.0, 2.0]) == (0.5, None, None)        # one positive: no variance
    assert roc_auc_delong([0, 0], [1.0, 2.0]) == (None, None, None)
    # a wider level gives a wider interval
    y, s = scores_with_ties(200, 2, 0.3, 1)
    a95, a99 = roc_auc_delong(y, s), roc_auc_delong(y, s, level=0.99)
    assert a99[1] < a95[1] < a95[0] < a95[2] < a99[2]


def test_image_metrics_keys_values_and_undefined_cases():
    y, s = scores_with_ties(300, 2, 0.3, 3)
    got = image_metrics(y.astype(int), s)
    assert list(got) == [*IMAGE_KEYS, IMAGE_VAR_KEY]
    auc, var = delong_variance(y, s)
    assert got[IMAGE_VAR_KEY] == var and auc == pytest.approx(got["image_auroc"], abs=1e-12)
    assert got["image_auroc"] == roc_auc(y, s)
    assert (got["image_auroc_lo"], got["image_auroc_hi"]) == roc_auc_delong(y, s)[1:]
    assert got["image_ap"] == average_precision(y, s) and got["image_f1max"] == f1_max(y, s)
    assert image_metrics(np.zeros(4, int), s[:4]) == dict.fromkeys([*IMAGE_KEYS, IMAGE_VAR_KEY])
    assert image_metrics(np.ones(4, int), s[:4]) == dict.fromkeys([*IMAGE_KEYS, IMAGE_VAR_KEY])


def test_the_mean_interval_adds_the_categories_variances():
    """Categories are independent test sets: Var(mean of K AUCs) = sum of variances / K^2."""
    y1, s1 = scores_with_ties(200, 2, 0.3, 5)
    y2, s2 = scores_with_ties(150, 3, 0.4, 6)
    (a1, v1), (a2, v2) = delong_variance(y1, s1), delong_variance(y2, s2)
    lo, hi = mean_interval([a1, a2], [v1, v2])
    half = NormalDist().inv_cdf(0.975) * np.sqrt((v1 + v2) / 4)
    assert lo == pytest.approx((a1 + a2) / 2 - half, abs=1e-12) and hi == pytest.approx((a1 + a2) / 2 + half, abs=1e-12)
    assert mean_interval([a1], [v1]) == roc_auc_delong(y1, s1)[1:]          # one category: its own interval
    assert mean_interval([a1, a2], [v1, None]) == (None, None)
    assert average_precision([1, 1], [0.1, 0.2]) is None and f1_max([0, 0], [0.1, 0.2]) is None
    with pytest.raises(UserError, match="NaN or Inf"):
        image_metrics([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        image_metrics([0, 1, 1], [0.1, 0.2])
