"""One call per level for the fit stage: every image metric of a category's test set, and every
pixel metric over all its test pixels (one sort of the negatives shared by all four).

Keys match metrics/metrics.json. A metric that is undefined (one class only: no defect image,
or no defect pixel) is None, never NaN; scores with NaN or Inf raise UserError.
"""
from __future__ import annotations

import numpy as np

from .delong import delong_variance, interval
from .precision import PrecisionSums, precision_sums
from .pro import ProIntegral, sorted_weights
from .ranks import VALUE_CHUNK, ranked_chunks, split_classes, threads
from .roc import auc_from_counts, check_finite, flat_inputs, roc_auc

IMAGE_KEYS = ("image_auroc", "image_auroc_lo", "image_auroc_hi", "image_ap", "image_f1max")
# per category, besides IMAGE_KEYS: the DeLong variance, from which the mean's interval is taken
IMAGE_VAR_KEY = "image_auroc_var"
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro")
# pixel metrics behind a param (metrics.aupimo): results and metrics.json have the key only when it is on
OPTIONAL_PIXEL_KEYS = ("pixel_aupimo",)


def image_metrics(labels: np.ndarray, scores: np.ndarray, level: float = 0.95) -> dict:
    """labels (N,) 0/1 or bool (1 = defective), scores (N,) float: ROC-AUC (exact, as roc_auc) with
    its DeLong `level` interval and variance, average precision, F1-max."""
    y, s = flat_inputs(labels, scores, "the image metrics")
    out = dict.fromkeys((*IMAGE_KEYS, IMAGE_VAR_KEY))
    sums = precision_sums(y, s, "the image metrics")
    if sums is None:
        return out
    auc, var = delong_variance(y, s)
    lo, hi = interval(auc, var, level)
    out.update(image_auroc=roc_auc(y, s), image_auroc_lo=lo, image_auroc_hi=hi, image_auroc_var=var,
               image_ap=sums.ap, image_f1max=sums.f1)
    return out


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict:
    """masks (N, H, W) bool (True = defect), maps (N, H, W) float32 (other float dtypes are copied
    to float32): ROC-AUC, average precision, F1-max and AUPRO up to `fpr_limit`, over all pixels."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float32)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    check_finite(maps, "the pixel metrics")
    out = dict.fromkeys(PIXEL_KEYS)
    if not masks.any() or masks.all():
        return out
    # the positives' sort and regions are computed while other threads sort the negatives
    pos, negs, (pos_sorted, weight_sorted) = split_classes(masks.reshape(-1), maps.reshape(-1),
                                                           meanwhile=lambda pos: sorted_weights(pos, masks))
    n_pos, n_neg = pos.size, negs.n
    del pos
    sums, pro = PrecisionSums(n_pos, n_neg), ProIntegral(negs, fpr_limit)
    below_all = tied_all = 0
    for first, values, below, tied in ranked_chunks(pos_sorted, negs):
        count = np.diff(first)
        below_all += int((count * below).sum())
        tied_all += int((count * tied).sum())
        sums.add(first, below)
        pro.add(first, values, below, tied, weight_sorted(first[0], first[-1]))
    out.update(pixel_auroc=auc_from_counts(below_all, tied_all, n_pos, n_neg), pixel_ap=sums.ap,
               pixel_f1max=sums.f1, pixel_aupro=pro.area(pos_sorted, weight_sorted))
    return out


def pixel_metrics_bytes(n_pixels: int, n_defect: int | None = None) -> float:
    """Memory pixel_metrics needs besides its inputs (float32 maps: a float16 input adds its float32
    copy, 4 bytes a pixel), for n_pixels of which n_defect are defect pixels (default: all, a bound).
    Per pixel: the mask's complement and the copy of its score (sorted in place); per defect pixel:
    its region, sort order, sorted score and region; per distinct defect score, chunked: the counts."""
    n_defect = n_pixels if n_defect is None else n_defect
    return 5.0 * n_pixels + 28.0 * n_defect + (120.0 + 16.0 * threads()) * min(n_defect, VALUE_CHUNK)
