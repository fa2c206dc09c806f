"""AU-PRO at MVTec AD 2's integration limit 0.05 (and MVTec AD's 0.3): metrics.aupro against a
brute-force PRO curve (every threshold, regions by scipy's 8-connected labelling, trapezoids,
the last segment interpolated at the limit) and against anomalib 2.7's AUPRO(fpr_limit=...) on
the same maps (golden values printed by bench/peer_aupro.py in a scratch environment)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from anomaly_backbones.metrics import aupro, pixel_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from peer_aupro import cases  # noqa: E402  (numpy only: the maps anomalib scored)

CASES = {name: (masks, maps) for name, masks, maps in cases()}
# bench/peer_aupro.py, anomalib 2.7.0 (_AUPRO, torch 2.14.1): {case: (fpr_limit 0.3, fpr_limit 0.05)}
ANOMALIB = {"case0": (0.56881928, 0.24877040), "case1": (0.64027226, 0.27940816), "case2": (0.59055543, 0.29521254)}


def brute_force(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    regions = []
    for i in range(len(masks)):
        labeled, n = ndimage.label(masks[i], np.ones((3, 3), bool))
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    negatives = maps[~masks]
    xs, ys = [0.0], [0.0]
    for v in np.unique(maps)[::-1]:
        xs.append(float((negatives >= v).mean()))
        ys.append(float(np.mean([(maps[i][r] >= v).mean() for i, r in regions])))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x0 >= limit:
            break
        if x1 > limit:
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area / limit


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("limit", [0.3, 0.05])
def test_aupro_limits_match_brute_force_and_anomalib(name, limit):
    masks, maps = CASES[name]
    got = aupro(masks, maps, limit)
    assert got == pytest.approx(brute_force(masks, maps, limit), abs=1e-9)
    assert got == pytest.approx(ANOMALIB[name][0 if limit == 0.3 else 1], abs=1e-6)
    # the fit stage's one-pass pixel metrics integrate to the same limit
    assert pixel_metrics(masks, maps, limit)["pixel_aupro"] == pytest.approx(got, abs=1e-12)
