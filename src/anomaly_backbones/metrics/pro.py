"""AUPRO: the area under the per-region-overlap curve up to a false positive rate, exact.

MVTec AD's definition (Bergmann et al., IJCV 2021, and their evaluation code's compute_pro and
trapezoid): the ground-truth regions are the connected components of each image's mask with
8-connectivity (scipy.ndimage.label with a 3x3 structure of ones, as MVTec's code; anomalib's
cv2.connectedComponents defaults to 8 too). At a threshold v, a region's overlap is the share of
its pixels scoring >= v; PRO(v) is the mean overlap over ALL regions of the test set; FPR(v) is
the share of defect-free pixels (every pixel outside the regions, of every image) scoring >= v.
The curve joins (0, 0), the points (FPR(v), PRO(v)) for every distinct score v in descending
order, and (1, 1); its trapezoid integral up to the limit (interpolated on the segment that
crosses it) divided by the limit is the AUPRO.

Computed without a loop over thresholds. A segment of the curve moves right only where negatives
score, so the area is a sum over negatives: each negative at score v adds 1/n_neg times the mean of
PRO just above v and PRO at v (a trapezoid; the two differ only when positives tie with v).
Swapping the sums, it is a sum over positives: a positive pixel of region r at score s adds
1 / (|r| R n_neg) for each negative inside the limit that scores below s, and half that for each
one that ties. Those are the counts ROC-AUC needs (ranks.py), shifted by the negatives beyond the
limit. The segment that crosses the limit is interpolated from two sums over the positives.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .ranks import SortedNegatives, ranked_chunks, split_classes
from .roc import check_finite

STRUCTURE = np.ones((3, 3), bool)   # 8-connectivity, as MVTec AD's evaluation code


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The region of every defect pixel, in C order over (image, row, column) (the order of
    scores[masks]), as int32 indices into `weights`; weights[r] = 1 / (|r| * number of regions)."""
    flat = masks.reshape(len(masks), -1)
    found, offset = [], 0
    for i in np.flatnonzero(flat.any(axis=1)):
        labeled, n = ndimage.label(masks[i], STRUCTURE)
        found.append(labeled[masks[i]] + (offset - 1))
        offset += n
    region = np.concatenate(found).astype(np.int32, copy=False) if found else np.zeros(0, np.int32)
    sizes = np.bincount(region, minlength=offset)
    return region, 1.0 / (sizes * float(max(offset, 1)))


class ProIntegral:
    """Accumulates the area under the PRO curve up to `limit` over the chunks of ranks.ranked_chunks.

    pos_sorted: positive scores, ascending; weight_sorted(a, b): the weights 1 / (|r| R) of the
    positives pos_sorted[a:b]."""

    def __init__(self, negs: SortedNegatives, limit: float):
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"FPR limit must be in (0, 1], got {limit}")
        self.negs, self.limit = negs, limit
        self.cut = negs.top_cut(limit)           # negatives >= cut: every segment fully inside the limit
        self.inside = negs.count_ge(self.cut)
        self.full = 0.0

    def add(self, first: np.ndarray, values: np.ndarray, below: np.ndarray, tied: np.ndarray,
            weights: np.ndarray) -> None:
        """weights: the weights of the positives first[0]:first[-1], in ascending score order."""
        per_value = np.add.reduceat(weights, first[:-1] - first[0])
        below_inside = np.maximum(below - (self.negs.n - self.inside), 0)
        tied_inside = np.where(values >= self.cut, tied, 0)
        self.full += float((per_value * (below_inside + 0.5 * tied_inside)).sum())

    def area(self, pos_sorted: np.ndarray, weight_sorted) -> float:
        n = self.negs.n
        area = self.full / n
        d = self.negs.largest_below(self.cut)    # the negatives' next score: its segment crosses the limit
        if d is not None:
            x0, x1 = self.inside / n, (self.inside + self.negs.count_eq(d)) / n
            y0 = float(weight_sorted(int(np.searchsorted(pos_sorted, d, "right")), pos_sorted.size).sum())
            y1 = float(weight_sorted(int(np.searchsorted(pos_sorted, d, "left")), pos_sorted.size).sum())
            y_limit = y0 + (y1 - y0) * (self.limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (self.limit - x0)
        return area / self.limit


def sorted_weights(pos: np.ndarray, masks: np.ndarray):
    """Sorts pos (the defect pixels' scores in C order) with their regions. Returns the sorted scores
    and weight_sorted(a, b), the weights of the sorted positives a:b."""
    region, weights = region_weights(masks)
    order = np.argsort(pos)          # ties form one run whatever their order
    pos_sorted = pos[order]
    region_sorted = region[order]
    del order, region
    return pos_sorted, lambda a, b: weights[region_sorted[a:b]]


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Exact AUPRO of anomaly maps (N, H, W) float against defect masks (N, H, W) bool, integrated
    to `fpr_limit` and divided by it. None when there is no defect pixel or no defect-free one."""
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps, dtype=np.float32)
    if masks.shape != maps.shape or masks.ndim != 3:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} must both be (N, H, W)")
    check_finite(maps, "AUPRO")
    if not masks.any() or masks.all():
        return None
    _, negs, (pos_sorted, weight_sorted) = split_classes(masks.reshape(-1), maps.reshape(-1),
                                                         meanwhile=lambda pos: sorted_weights(pos, masks))
    pro = ProIntegral(negs, fpr_limit)
    for first, values, below, tied in ranked_chunks(pos_sorted, negs):
        pro.add(first, values, below, tied, weight_sorted(first[0], first[-1]))
    return pro.area(pos_sorted, weight_sorted)
