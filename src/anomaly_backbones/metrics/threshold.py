"""A decision threshold a line can use: calibrated on defect-free images only, at a target
false-alarm rate, and what it does on the test set.

calibrate(held, fpr): held = scores of defect-free images the fit never saw (train/good held out,
holdout.split_holdout). The threshold t is the (floor(fpr n) + 1)-th largest held-out score and an
image is flagged when its score is ABOVE t, so at most floor(fpr n) held-out images are flagged
(fewer with ties). Its false-alarm rate on new defect-free images is estimated by the held-out
share flagged, k / n, with the exact (Clopper-Pearson) binomial 95 % interval: with n held-out
images no rate below about 1/n is resolved, and the interval says so (k = 0 of 76: [0, 0.047]).

at_threshold(labels, scores, t): the test set's false-alarm rate (defect-free flagged), miss rate
(defective not flagged) and F1 at t. F1-max, by contrast, picks its threshold on the test labels:
an oracle no line has.

Pixel level: the same rule on every pixel of the held-out maps (pixel_calibrate), and the
segmentation F1 (and pixel false-alarm / miss rates) on the test masks (pixel_at_threshold),
accumulated image by image.

Or (`threshold.pixel_rule` = mean3std, pixel_mean3std) MVTec AD 2's rule for its SegF1: the mean
plus three standard deviations of every pixel score of the calibration maps (the dataset's
validation/good images there; Heckler-Kram et al., arXiv 2503.21622, as the project's issue states
it, and RoBiS, arXiv 2505.21152, calls it "the traditional statistical-based binarization strategy
(mean+3std)" of MVTec AD 2's challenge; the dataset's evaluation code was not at hand to read). The
standard deviation is the population one (ddof 0; which one the authors use is not stated there:
over the ~10^7 validation pixels of an object the two differ by a factor of 1 - 5e-8). Mean and
standard deviation are accumulated image by image in float64 (mean_std), never over one
concatenation of every map.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import beta

from ..errors import UserError


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes of n."""
    a = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def _threshold(values: np.ndarray, fpr: float) -> tuple[float, int]:
    n = values.size
    j = int(np.floor(fpr * n))                 # flagged at most
    t = float(np.partition(values, n - 1 - j)[n - 1 - j])
    return t, int(np.count_nonzero(values > t))


def calibrate(held: np.ndarray, fpr: float, what: str = "images") -> dict:
    """{threshold, target_fpr, n_held, n_flagged, held_fpr, fpr_lo, fpr_hi}. UserError for no
    held-out values or a target outside (0, 1)."""
    held = np.asarray(held, dtype=np.float32).ravel()
    if not 0.0 < float(fpr) < 1.0:
        raise UserError(f"`threshold.fpr` = {fpr} must be in (0, 1), e.g. 0.01 (one false alarm in 100 good parts)")
    if held.size == 0:
        raise UserError(f"a threshold calibrated on zero held-out {what}: `threshold.holdout` holds out no "
                        f"training image here; raise it (e.g. -S threshold.holdout=0.1)")
    t, k = _threshold(held, float(fpr))
    lo, hi = clopper_pearson(k, held.size)
    return {"threshold": t, "target_fpr": float(fpr), "n_held": int(held.size), "n_flagged": k,
            "held_fpr": k / held.size, "fpr_lo": lo, "fpr_hi": hi}


def at_threshold(labels: np.ndarray, scores: np.ndarray, t: float) -> dict:
    """{false_alarm, miss, f1, n_good, n_defective} of `score > t` on the test set."""
    y = np.asarray(labels, dtype=bool).ravel()
    flagged = np.asarray(scores, dtype=np.float32).ravel() > t
    return _rates(int(np.count_nonzero(flagged & y)), int(np.count_nonzero(flagged & ~y)),
                  int(np.count_nonzero(y)), int(np.count_nonzero(~y)))


def _rates(tp: int, fp: int, n_pos: int, n_neg: int) -> dict:
    return {"false_alarm": fp / n_neg if n_neg else None, "miss": (n_pos - tp) / n_pos if n_pos else None,
            "f1": 2 * tp / (2 * tp + fp + (n_pos - tp)) if n_pos + fp else None,
            "n_good": n_neg, "n_defective": n_pos}


def pixel_calibrate(held_maps: np.ndarray, fpr: float) -> dict:
    """calibrate over every pixel of the held-out maps (N, H, W)."""
    return calibrate(np.asarray(held_maps, dtype=np.float32).reshape(-1), fpr, "anomaly maps")


def mean_std(maps) -> tuple[float, float, int]:
    """(mean, population standard deviation, count) of every value of `maps`, any iterable of arrays
    (an (N, H, W) array: image by image). Each image's mean and sum of squared deviations in float64,
    merged by Chan, Golub and LeVeque's pairwise update: no cancellation of a sum of squares, no
    concatenation. (nan, nan, 0) for no values."""
    n, mean, m2 = 0, 0.0, 0.0
    for a in maps:
        a = np.asarray(a, dtype=np.float64).ravel()
        k = a.size
        if k == 0:
            continue
        mu = float(a.mean())
        d, total = mu - mean, n + k
        mean += d * k / total
        m2 += float(np.square(a - mu).sum()) + d * d * n * k / total
        n = total
    return (mean, float(np.sqrt(m2 / n)), n) if n else (float("nan"), float("nan"), 0)


def pixel_mean3std(held_maps) -> dict:
    """{rule, threshold, mean, std, n_held, n_flagged, held_fpr, fpr_lo, fpr_hi} of MVTec AD 2's rule
    on the calibration maps (N, H, W): threshold = the float32 nearest mean + 3 std (the maps are
    float32, so `map > threshold` compares exactly); n_flagged = calibration pixels above it."""
    mean, std, n = mean_std(held_maps)
    if n == 0:
        raise UserError("a pixel threshold calibrated on zero calibration pixels: the calibration set "
                        "(`threshold.source`) has no image")
    t = float(np.float32(mean + 3.0 * std))
    k = sum(int(np.count_nonzero(np.asarray(a, dtype=np.float32) > t)) for a in held_maps)
    lo, hi = clopper_pearson(k, n)
    return {"rule": "mean3std", "threshold": t, "mean": mean, "std": std, "n_held": n, "n_flagged": k,
            "held_fpr": k / n, "fpr_lo": lo, "fpr_hi": hi}


def pixel_at_threshold(masks: np.ndarray, maps: np.ndarray, t: float) -> dict:
    """Segmentation at `map > t` against the test masks, summed image by image: pixel false-alarm
    and miss rates, and the segmentation F1 (the Dice of all pixels together)."""
    tp = fp = n_pos = n_neg = 0
    for m, a in zip(masks, maps):
        m = np.asarray(m, dtype=bool)
        flagged = np.asarray(a, dtype=np.float32) > t
        tp += int(np.count_nonzero(flagged & m))
        fp += int(np.count_nonzero(flagged & ~m))
        n_pos += int(np.count_nonzero(m))
        n_neg += int(m.size - np.count_nonzero(m))
    return _rates(tp, fp, n_pos, n_neg)


def threshold_entry(fpr: float, held_scores, labels, scores, held_maps=None, masks=None, maps=None,
                    pixel_rule: str = "quantile") -> dict:
    """results.json's `threshold` block of one category: the image threshold's calibration and its
    test rates beside the oracle F1-max's; the pixel threshold's where the method has maps, by
    `pixel_rule` (quantile: pixel_calibrate at `fpr`; mean3std: pixel_mean3std), with the
    segmentation F1 over all test pixels (`pixel.test.f1`: MVTec AD 2's SegF1 with mean3std)."""
    image = calibrate(held_scores, fpr)
    out = {"image": {**image, "test": at_threshold(labels, scores, image["threshold"])}}
    if held_maps is not None and maps is not None:
        pixel = pixel_mean3std(held_maps) if pixel_rule == "mean3std" else pixel_calibrate(held_maps, fpr)
        out["pixel"] = {**pixel, "test": pixel_at_threshold(masks, maps, pixel["threshold"])}
    return out


# metrics.json keys (means over categories) of a run with a calibrated threshold; absent otherwise,
# so a run without one (threshold.holdout 0) writes exactly the bytes it did before
MEAN_KEYS = {"threshold_image_false_alarm": ("image", "false_alarm"), "threshold_image_miss": ("image", "miss"),
             "threshold_image_f1": ("image", "f1"), "threshold_pixel_false_alarm": ("pixel", "false_alarm"),
             "threshold_pixel_miss": ("pixel", "miss"), "threshold_pixel_f1": ("pixel", "f1")}


def threshold_means(cats: dict, digits: int = 6) -> dict:
    """{key: mean over categories of the test rates at the calibrated threshold}; {} where no
    category has a threshold block."""
    blocks = [c["threshold"] for c in cats.values() if c.get("threshold")]
    if not blocks:
        return {}
    out = {}
    for key, (level, what) in MEAN_KEYS.items():
        vals = [b[level]["test"][what] for b in blocks if level in b and b[level]["test"][what] is not None]
        out[key] = round(float(np.mean(vals)), digits) if vals else None
    out["threshold_held_fpr_hi"] = round(max(b["image"]["fpr_hi"] for b in blocks), digits)
    return out
