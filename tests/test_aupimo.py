"""AUPIMO (metrics.pimo) against anomalib 2.7's AUPIMO on the same maps (golden values printed by
bench/peer_aupimo.py in anomalib's environment: /tmp/field_peer/venv/bin/python bench/peer_aupimo.py),
against a brute-force PIMO written here (one threshold at a time), and on the edge cases."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics.pimo import aupimo, aupimo_per_image, linspace_f32

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peer_aupimo import cases  # noqa: E402  (numpy only: the maps anomalib scored)

CASES = {c[0]: c[1:] for c in cases()}
# bench/peer_aupimo.py, anomalib 2.7.0 (_AUPIMO, torch 2.14.1): per anomalous image, the mean, and the
# first 16 hex digits of the sha256 of anomalib's float32 thresholds (torch.linspace)
ANOMALIB = {
    "case0": ({0: 0.5589571936, 2: 0.3721202283, 4: 0.5089940284, 6: 0.7340729081, 8: 0.7742739079},
              0.5896836532, "c31ce5f01009e85e"),
    "case1": ({0: 0.1199876165, 2: 0.5849765872, 4: 0.6834901950, 6: 0.7876143433, 8: 0.2556644209,
               10: 0.4730545016}, 0.4841312774, "32ccc641e5d5a22e"),
    "case2": ({0: 1.0000000000, 2: 0.9412460449, 4: 0.6619693200, 6: 0.9885685436}, 0.8979459771,
              "05159ca14a271cb1"),
}


def brute_force(masks, maps, num_thresholds, bounds):
    """PIMO one threshold at a time, from its definition: per-image rates by comparison, the shared
    FPR the mean over normal images, the range's ends the first thresholds nearest each bound."""
    normal = [i for i in range(len(masks)) if not masks[i].any()]
    anomalous = [i for i in range(len(masks)) if masks[i].any()]
    lo = min(maps[i].min() for i in normal)
    hi = max(maps[i].max() for i in normal)
    thresholds = linspace_f32(lo, hi, num_thresholds)   # matched to torch's by the sha256 test below
    fpr = np.array([np.mean([(maps[i] >= t).mean() for i in normal]) for t in thresholds])
    tpr = {i: np.array([(maps[i][masks[i]] >= t).mean() for t in thresholds]) for i in anomalous}
    a = min(range(num_thresholds), key=lambda k: (abs(fpr[k] - bounds[1]), k))
    b = min(range(num_thresholds), key=lambda k: (abs(fpr[k] - bounds[0]), k))
    ks = [k for k in range(b, a - 1, -1) if fpr[k] > 0]   # ascending FPR
    out = {}
    for i in anomalous:
        area = sum(0.5 * (tpr[i][k0] + tpr[i][k1]) * (np.log(fpr[k1]) - np.log(fpr[k0]))
                   for k0, k1 in zip(ks[:-1], ks[1:]))
        out[i] = min(max(area / np.log(bounds[1] / bounds[0]), 0.0), 1.0)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_aupimo_matches_anomalib(name):
    masks, maps, k, bounds = CASES[name]
    per_image, mean, digest = ANOMALIB[name]
    normal = ~masks.reshape(len(masks), -1).any(axis=1)
    thresholds = linspace_f32(maps[normal].min(), maps[normal].max(), k)
    assert hashlib.sha256(thresholds.astype("<f4").tobytes()).hexdigest()[:16] == digest   # torch.linspace, bit for bit
    got = aupimo_per_image(masks, maps, k, bounds)
    assert np.isnan(got[normal]).all() and sorted(np.flatnonzero(~normal)) == sorted(per_image)
    for i, want in per_image.items():   # anomalib's, printed to 10 decimals (unrounded: within 1e-15)
        assert got[i] == pytest.approx(want, abs=1e-9)
    assert aupimo(masks, maps, k, bounds) == pytest.approx(mean, abs=1e-9)


@pytest.mark.parametrize("ties", [False, True])
def test_aupimo_matches_brute_force(ties):
    rng = np.random.default_rng(1024)
    masks = np.zeros((6, 48, 48), bool)
    masks[0, 5:15, 8:20] = masks[2, 30:34, 30:40] = masks[4, 1:3, 1:3] = masks[4, 40:47, 20:25] = True
    maps = (rng.normal(size=masks.shape) + 2.5 * masks).astype(np.float32)
    k = 1500
    if ties:   # scores on a 1/64 grid and a threshold on every grid step: many pixels on each threshold
        maps = np.round(maps * 64) / 64
        normal = maps[[1, 3, 5]]
        k = int(round((normal.max() - normal.min()) * 64)) + 1
    bounds = (1e-3, 3e-2)
    want = brute_force(masks, maps, k, bounds)
    got = aupimo_per_image(masks, maps, k, bounds)
    assert np.isnan(got[[1, 3, 5]]).all()
    for i, w in want.items():
        assert got[i] == pytest.approx(w, abs=1e-12)
    assert 0.0 < min(want.values()) and max(want.values()) < 1.0   # the cases exercise the range
    assert aupimo(masks, maps, k, bounds) == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    if ties:   # the thresholds are on the grid, most of them some pixels' score
        thresholds = linspace_f32(normal.min(), normal.max(), k)
        assert (thresholds * 64 == np.round(thresholds * 64)).all() and np.isin(thresholds, maps).sum() > k // 2


def test_normal_images_are_excluded_from_the_mean_but_set_the_fpr():
    masks, maps, k, bounds = CASES["case2"]
    per_image = aupimo_per_image(masks, maps, k, bounds)
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    assert np.isnan(per_image[~anomalous]).all() and not np.isnan(per_image[anomalous]).any()
    assert aupimo(masks, maps, k, bounds) == pytest.approx(per_image[anomalous].mean(), abs=1e-15)
    # a normal image's hot pixels raise the shared FPR at high thresholds: the anomalous images lose
    hot = maps.copy()
    hot[1, :8, :8] += 3.0
    assert aupimo(masks, hot, k, bounds) < aupimo(masks, maps, k, bounds)
    # an anomalous image's own defect-free pixels do not count: changing them changes nothing
    quiet = maps.copy()
    quiet[0][~masks[0]] -= 5.0
    assert np.array_equal(aupimo_per_image(masks, quiet, k, bounds), per_image, equal_nan=True)


def test_constant_maps():
    masks, maps, k, bounds = CASES["case2"]
    # the normal images' scores constant: no threshold range, undefined (anomalib raises)
    assert aupimo(masks, np.ones_like(maps), k, bounds) is None
    # an anomalous image scoring a constant above every threshold: TPR 1 everywhere; below: 0
    normal_max = maps[~masks.reshape(len(masks), -1).any(axis=1)].max()
    for value, want in ((normal_max + 1.0, 1.0), (normal_max - 10.0, 0.0)):
        m = maps.copy()
        m[0] = value
        assert aupimo_per_image(masks, m, k, bounds)[0] == want


def test_undefined_cases_return_none_and_bad_inputs_raise():
    masks, maps, k, bounds = CASES["case2"]
    assert aupimo(np.zeros_like(masks), maps, k, bounds) is None           # no anomalous image
    assert aupimo(np.ones_like(masks), maps, k, bounds) is None            # no normal image
    assert aupimo(masks, maps, k, (1e-5, 1e-4)) is None                    # 1e-5 below the least shared FPR
    assert aupimo(masks, maps, 40, bounds) is None                         # 30 points or fewer in the range
    with pytest.raises(ValueError, match="fpr_bounds"):
        aupimo(masks, maps, k, (1e-2, 1e-3))
    with pytest.raises(ValueError, match="must both be"):
        aupimo(masks, maps[:, :10], k, bounds)
    bad = maps.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or Inf"):
        aupimo(masks, bad, k, bounds)


def test_float16_maps_are_read_image_by_image_as_float32():
    masks, maps, k, bounds = CASES["case2"]
    half = maps.astype(np.float16)
    assert aupimo(masks, half, k, bounds) == aupimo(masks, half.astype(np.float32), k, bounds)


@pytest.mark.parametrize("on", [False, True])
def test_aggregate_writes_pixel_aupimo_only_when_the_fit_recorded_it(tmp_path, monkeypatch, on):
    """metrics.aupimo off (the default): no results.json has the key, nor do metrics.json and
    per_category.csv (the default run's metrics.json keeps its bytes: docs/performance.md); on:
    every method's block has it (None for a method without maps) and the CSV a column."""
    import csv
    import json

    from anomaly_backbones.files import write_json
    from anomaly_backbones.params.groups import GROUPS
    from anomaly_backbones.pipeline.aggregate import aggregate

    assert GROUPS["metrics"]["aupimo"].default is False
    monkeypatch.chdir(tmp_path)
    write_json("data/features/stats.json", {"backbone": "resnet18", "init": "random:seed=1024", "layers": ["layer1"],
                                            "dtype": "float32", "categories": {"a": {"cache_mb": 1.0}},
                                            "peak_mb": 100.0})
    base = {"image_auroc": 0.75, "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}, "fit_s": 1.0,
            "predict_ms_per_image": 2.0, "backbone_ms_per_image": 3.0}
    padim = {"a": {**base, "pixel_auroc": 0.9, **({"pixel_aupimo": 0.4} if on else {})},
             "b": {**base, "pixel_auroc": 0.8, **({"pixel_aupimo": 0.6} if on else {})}}
    ocsvm = {"a": {**base, "pixel_auroc": None, **({"pixel_aupimo": None} if on else {})}}
    write_json("outputs/padim/results.json", {"method": "padim", "categories": padim, "peak_mb": 200.0})
    write_json("outputs/ocsvm/results.json", {"method": "ocsvm", "categories": ocsvm, "peak_mb": 200.0})
    aggregate({"methods": ["padim", "ocsvm"], "train_methods": [], "seed": 1024, "data": {"dataset": "synthetic"}})
    m = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    with open(tmp_path / "metrics" / "per_category.csv") as f:
        rows = list(csv.DictReader(f))
    assert ("pixel_aupimo" in m["padim"]) is on and ("pixel_aupimo" in m["ocsvm"]) is on
    assert ("pixel_aupimo" in rows[0]) is on
    if on:
        assert m["padim"]["pixel_aupimo"] == 0.5 and m["ocsvm"]["pixel_aupimo"] is None
        assert [r["pixel_aupimo"] for r in rows] == ["0.4", "0.6", ""]
