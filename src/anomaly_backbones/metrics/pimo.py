"""AUPIMO: the area under each anomalous image's Per-IMage Overlap curve (Bertoldo et al., 2024),
with anomalib 2.7's definition and defaults (anomalib.metrics.pimo, `AUPIMO(return_average=True)`).

Images whose mask has no defect pixel are the normal images, the others the anomalous ones.
  - Thresholds: `num_thresholds` (300 000) float32 values evenly spaced from the min to the max
    score of the normal images' pixels, computed as torch.linspace on the CPU does (step rounded to
    float32, then start + step * k for the first half and end - step * (K-1-k) for the second,
    each with one rounding): equal to torch's on every case tried (tests/test_aupimo.py).
  - Shared FPR(t): the mean over normal images of the share of their pixels scoring >= t.
  - TPR_i(t), anomalous image i only: the share of its defect pixels scoring >= t.
  - Integration range: the thresholds whose shared FPR is nearest to each of `fpr_bounds`
    (1e-5, 1e-4) (the first, i.e. lowest, such threshold on a plateau), both ends included; the
    thresholds with a shared FPR of 0 are dropped. AUPIMO_i is the trapezoid integral of TPR_i over
    log(shared FPR) divided by log(upper / lower), clipped to [0, 1].
The mean over anomalous images (`aupimo`) is `pixel_aupimo` in a method's metrics.

Where anomalib raises (no normal or no anomalous image; a constant score over the normal pixels;
thresholds not strictly increasing in float32; a bound outside the shared FPR's range; both bounds
on one threshold; 30 or fewer thresholds in the range: anomalib's `force=False`), the metric is
undefined and these functions return None. anomalib warns (does not raise) when the bounds are
missed by more than 1 % or the range has under 300 thresholds: so do these, silently.

Memory: one normal or anomalous image at a time (its pixels sorted, float32, 4 bytes a pixel),
the thresholds (4 bytes each) and a few int64 / float64 arrays of K (8 bytes each): O(H W + K)
besides the inputs, about 8 MB at the default K (docs/performance.md), against anomalib's (N, K, 2, 2) int64 curves
(9.6 MB an image at the default K). Time: one sort per image and one binary search per threshold.
"""
from __future__ import annotations

import numpy as np

from .roc import check_finite

NUM_THRESHOLDS = 300_000
FPR_BOUNDS = (1e-5, 1e-4)
MIN_POINTS = 30      # anomalib refuses an integration range of this many thresholds or fewer


def linspace_f32(low: np.float32, high: np.float32, num: int) -> np.ndarray:
    """torch.linspace(low, high, num, dtype=float32) on the CPU: the step in float32, then a fused
    multiply-add from `low` (first half) or from `high` (second half). (num,) float32."""
    low, high = np.float32(low), np.float32(high)
    step = np.float64(np.float32((high - low) / np.float32(num - 1)))
    k = np.arange(num, dtype=np.float64)   # step * k is exact in float64 (24 + 19 bits)
    half = num // 2
    out = np.empty(num, np.float32)
    out[:half] = np.float64(low) + step * k[:half]
    out[half:] = np.float64(high) - step * (num - 1 - k[half:])
    return out


def _count_ge(image: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(K,) int64: how many values of `image` (any shape, float32) score >= each threshold."""
    values = np.sort(image, axis=None)
    return values.size - np.searchsorted(values, thresholds, side="left")


def aupimo_per_image(masks: np.ndarray, maps: np.ndarray, num_thresholds: int = NUM_THRESHOLDS,
                     fpr_bounds: tuple[float, float] = FPR_BOUNDS) -> np.ndarray | None:
    """masks (N, H, W) bool (True = defect), maps (N, H, W) float (each image read as float32):
    (N,) float64 AUPIMO of each anomalous image, NaN for the normal ones (as anomalib); None where
    the metric is undefined (the module's docstring)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape != np.shape(maps) or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {np.shape(maps)} must both be (N, H, W)")
    lower, upper = fpr_bounds
    if not 0.0 < lower < upper <= 1.0 or num_thresholds < 2:
        raise ValueError(f"fpr_bounds {fpr_bounds} must satisfy 0 < lower < upper <= 1, num_thresholds >= 2")
    anomalous = masks.reshape(len(masks), -1).any(axis=1)
    normal = np.flatnonzero(~anomalous)
    if normal.size == 0 or not anomalous.any():
        return None
    for i in range(len(maps)):   # image by image: no float32 copy of the whole set
        check_finite(np.asarray(maps[i], np.float32), "AUPIMO")
    low = min(np.float32(np.min(maps[i])) for i in normal)
    high = max(np.float32(np.max(maps[i])) for i in normal)
    if not low < high:
        return None
    thresholds = linspace_f32(low, high, num_thresholds)
    if not (np.diff(thresholds) > 0).all():
        return None
    counts = np.zeros(num_thresholds, np.int64)
    for i in normal:
        counts += _count_ge(np.asarray(maps[i], np.float32), thresholds)
    shared_fpr = counts / float(normal.size * masks[0].size)   # equal sizes: the mean of per-image rates
    del counts
    if not shared_fpr[-1] <= lower or upper > shared_fpr[0]:
        return None   # a bound outside the shared FPR's range
    # first index of the value nearest each bound (np.argmin, like torch.argmin, takes the first)
    first = int(np.argmin(np.abs(shared_fpr - upper)))   # the low-threshold end
    last = int(np.argmin(np.abs(shared_fpr - lower)))
    if first >= last:
        return None
    kept = np.flatnonzero(shared_fpr[first:last + 1] > 0) + first
    if kept.size <= MIN_POINTS:
        return None
    log_fpr = np.log(shared_fpr[kept][::-1])   # ascending
    sub = thresholds[kept]
    norm = float(np.log(upper / lower))
    out = np.full(len(masks), np.nan)
    for i in np.flatnonzero(anomalous):
        defect = np.asarray(maps[i], np.float32)[masks[i]]
        tpr = _count_ge(defect, sub) / float(defect.size)
        out[i] = min(max(float(np.trapezoid(tpr[::-1], log_fpr)) / norm, 0.0), 1.0)
    return out


def aupimo(masks: np.ndarray, maps: np.ndarray, num_thresholds: int = NUM_THRESHOLDS,
           fpr_bounds: tuple[float, float] = FPR_BOUNDS) -> float | None:
    """The mean AUPIMO over the anomalous images (anomalib's `return_average=True`); None where
    undefined (the module's docstring)."""
    scores = aupimo_per_image(masks, maps, num_thresholds, fpr_bounds)
    return None if scores is None else float(np.nanmean(scores))
