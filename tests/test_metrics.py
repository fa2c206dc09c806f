import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import roc_auc, roc_curve


@pytest.mark.parametrize("positives", [0.3, 0.8])   # either class may be the one sorted
@pytest.mark.parametrize("n,decimals", [(7, 0), (200, 1), (5000, 2), (100_000, 6)])
def test_roc_auc_matches_sklearn_with_ties(n, decimals, positives):
    rng = np.random.default_rng(n)
    y = rng.random(n) < positives
    y[:2] = [True, False]
    s = np.round(rng.normal(size=n) + y, decimals).astype(np.float32)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("positives", [0.1, 0.9])
def test_roc_auc_sums_over_needle_chunks(monkeypatch, positives):
    """The smaller class is searched by chunks (the real size is 4.2M scores): counts of scores
    below and tied with each needle must add up across chunks, ties straddling a chunk border included."""
    import anomaly_backbones.metrics.roc as m

    rng = np.random.default_rng(7)
    y = rng.random(20_000) < positives
    s = np.round(rng.normal(size=y.size) + y, 1).astype(np.float32)   # ~60 distinct values: many ties
    want = roc_auc(y, s)
    monkeypatch.setattr(m, "NEEDLE_CHUNK", 77)
    assert m.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m.roc_auc(y, s) == want


def test_roc_auc_leaves_its_inputs_alone():
    s = np.array([-0.0, 0.5, -1.5, 2.0], np.float32)
    before = s.copy()
    roc_auc(np.array([0, 1, 0, 1], bool), s)
    assert np.array_equal(s.view(np.int32), before.view(np.int32))


def test_roc_auc_hand_example_and_signed_zero():
    # pairs (pos, neg): 0.0 vs -0.0 tie (1/2), 0.0 vs -1 (1), 1 vs both (2) -> 3.5 / 4
    assert roc_auc([0, 1, 0, 1], [-0.0, 0.0, -1.0, 1.0]) == 0.875
    assert roc_auc([1, 0], [-3.0, -2.0]) == 0.0
    assert roc_auc([1, 1, 0], [-3.0, -1.0, -2.0]) == 0.5           # more positives than negatives


def test_roc_auc_rejects_nonfinite_and_single_class():
    with pytest.raises(UserError, match="NaN or Inf"):
        roc_auc([0, 1], [0.1, np.nan])
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_roc_curve_is_monotone_from_0_to_1():
    rng = np.random.default_rng(0)
    y = rng.random(1000) < 0.5
    fpr, tpr = roc_curve(y, rng.normal(size=1000) + y)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert (np.diff(fpr) >= 0).all() and (np.diff(tpr) >= 0).all()
    s = rng.normal(size=1000) + y
    fpr, tpr = roc_curve(y, s, points=1001)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(y, s), abs=0.01)
