"""The calibrated threshold: the hold-out split, the subset view methods fit on, the quantile rule
with its exact binomial interval (checked against scipy's binomtest), the test rates."""
import numpy as np
import pytest
from scipy.stats import binomtest

from anomaly_backbones.errors import UserError
from anomaly_backbones.holdout import FeatureSubset, RowView, fit_split, split_holdout
from anomaly_backbones.metrics.threshold import (at_threshold, calibrate, clopper_pearson, pixel_at_threshold,
                                                 threshold_means)


def test_split_is_seeded_disjoint_and_complete():
    fit, held = split_holdout(761, 0.1, 1024)
    assert held.size == 76 and fit.size == 685
    assert np.array_equal(np.sort(np.r_[fit, held]), np.arange(761))
    assert np.array_equal(held, split_holdout(761, 0.1, 1024)[1])
    assert not np.array_equal(held, split_holdout(761, 0.1, 1)[1])
    assert split_holdout(10, 0.0, 1)[1].size == 0
    with pytest.raises(UserError, match="threshold.holdout"):
        split_holdout(10, 1.0, 1)


def test_zero_held_out_images_is_one_clear_line():
    class FS:   # a FeatureSet of 5 images
        dir = "data/features/chip"

        def __len__(self):
            return 5
    with pytest.raises(UserError, match="zero held-out images"):
        fit_split(FS(), {"seed": 1, "threshold": {"holdout": 0.05}})
    fs = FS()
    assert fit_split(fs, {"seed": 1, "threshold": {"holdout": 0.0}}) == (fs, None)
    with pytest.raises(UserError, match="zero held-out"):
        calibrate(np.zeros(0), 0.01)


def test_row_view_reads_like_the_array(tmp_path):
    a = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    np.save(tmp_path / "x.npy", a)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = np.array([1, 4, 6])
    v = RowView(m, idx)
    assert v.shape == (3, 3, 2, 2) and len(v) == 3
    assert np.array_equal(v[1], a[4]) and np.array_equal(v[0:2], a[[1, 4]])
    assert np.array_equal(v[1:3, :, 0:1], a[[4, 6], :, 0:1]) and np.array_equal(np.asarray(v), a[idx])
    assert np.array_equal(v[np.array([0, 2])], a[[1, 6]])


def test_feature_subset_feeds_a_method_the_rows(tmp_path):
    """PaDiM fitted on a FeatureSubset equals PaDiM fitted on a cache of just those rows."""
    import json

    from anomaly_backbones.features import FeatureSet
    from anomaly_backbones.methods.padim import PaDiM

    rng = np.random.default_rng(0)
    feats = {"l1": rng.normal(size=(12, 8, 4, 4)).astype(np.float32)}
    idx = np.array([0, 2, 3, 7, 8, 11])
    for name, rows in (("full", slice(None)), ("part", idx)):
        d = tmp_path / name
        (d / "train").mkdir(parents=True)
        np.save(d / "train" / "l1.npy", feats["l1"][rows])
        n = feats["l1"][rows].shape[0]
        (d / "meta.json").write_text(json.dumps({"layers": ["l1"], "image_size": 16, "n_train": n,
                                                 "shapes": {"l1": [8, 4, 4]}}))
    p = {"d": 6, "chunk_mb": 1, "sigma": 4.0}
    a, b = PaDiM(p, ["l1"], 1024), PaDiM(p, ["l1"], 1024)
    a.fit(FeatureSubset(FeatureSet(tmp_path / "full", "train"), idx))
    b.fit(FeatureSet(tmp_path / "part", "train"))
    assert np.array_equal(a.mean.numpy(), b.mean.numpy()) and np.array_equal(a.inv_cov.numpy(), b.inv_cov.numpy())


@pytest.mark.parametrize("k,n", [(0, 76), (1, 76), (3, 191), (76, 76)])
def test_clopper_pearson_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_calibrate_flags_at_most_the_target_share():
    held = np.arange(1, 201, dtype=np.float32)          # 200 distinct scores
    c = calibrate(held, 0.01)                            # floor(2) = 2 may be flagged: the 3rd largest
    assert c["threshold"] == 198 and c["n_flagged"] == 2 and c["held_fpr"] == 0.01
    c = calibrate(held[:76], 0.01)                       # 76 images resolve no rate below 1/76: the max
    assert c["threshold"] == 76 and c["n_flagged"] == 0 and c["fpr_hi"] == pytest.approx(0.04738, abs=1e-5)
    ties = np.r_[np.ones(150), np.full(50, 5.0)].astype(np.float32)
    assert calibrate(ties, 0.1)["n_flagged"] == 0        # ties at the quantile: never over the target
    with pytest.raises(UserError, match="threshold.fpr"):
        calibrate(held, 0.0)


def test_rates_at_the_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.4, 0.7])
    r = at_threshold(labels, scores, 0.5)                # flagged: 0.6 (good), 0.9, 0.7
    assert r["false_alarm"] == 0.25 and r["miss"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    masks = np.zeros((2, 2, 2), bool)
    masks[1, 0] = True
    maps = np.array([[[0, 1], [0, 0]], [[1, 0], [0, 0]]], np.float32)
    px = pixel_at_threshold(masks, maps, 0.5)            # tp 1, fp 1, fn 1
    assert px["f1"] == 0.5 and px["false_alarm"] == pytest.approx(1 / 6) and px["miss"] == 0.5


def test_no_threshold_adds_no_metrics_key():
    assert threshold_means({"a": {"image_auroc": 0.9}}) == {}
