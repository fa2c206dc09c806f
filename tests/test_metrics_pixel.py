"""Pixel metrics against references that loop over every distinct threshold, and AUPRO against a
re-implementation of MVTec AD's own evaluation algorithm."""
import tracemalloc
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve

from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import aupro, pixel_metrics, pixel_metrics_bytes, roc_auc

# ---- brute-force references: every distinct score a threshold, counted directly ----

def flood_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """Connected components of one mask by flood fill, 8 neighbours (written out, no scipy)."""
    seen, regions = np.zeros_like(mask, bool), []
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                stack, region = [(i, j)], []
                seen[i, j] = True
                while stack:
                    a, b = stack.pop()
                    region.append((a, b))
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            u, v = a + da, b + db
                            if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                                seen[u, v] = True
                                stack.append((u, v))
                regions.append(region)
    return regions


def brute_curves(masks, maps):
    """Per distinct threshold t, descending: TPR, FPR, precision, recall, PRO of `score >= t`."""
    y, s = masks.ravel(), maps.ravel()
    regions = [np.array([maps[k][p] for p in r]) for k in range(len(masks)) for r in flood_regions(masks[k])]
    rows = []
    for t in sorted(set(s.tolist()), reverse=True):
        tp, fp = int(((s >= t) & y).sum()), int(((s >= t) & ~y).sum())
        pro = np.mean([(r >= t).mean() for r in regions]) if regions else None
        rows.append({"tpr": tp / y.sum(), "fpr": fp / (~y).sum(), "precision": tp / (tp + fp), "recall": tp / y.sum(), "pro": pro})
    return rows


def area_to(xs, ys, limit):
    """Area under the polyline through (xs, ys) from x=0 to x=limit, interpolated on the crossing segment."""
    area = 0.0
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
    return area


def brute_metrics(masks, maps, limit=0.3):
    rows = brute_curves(masks, maps)
    auc = area_to([0] + [r["fpr"] for r in rows], [0] + [r["tpr"] for r in rows], 1.0)
    ap = sum((r["recall"] - prev) * r["precision"] for r, prev in zip(rows, [0] + [r["recall"] for r in rows]))
    f1 = max(2 * r["precision"] * r["recall"] / (r["precision"] + r["recall"]) if r["recall"] else 0.0 for r in rows)
    pro = area_to([0] + [r["fpr"] for r in rows] + [1], [0] + [r["pro"] for r in rows] + [1], limit) / limit
    return {"pixel_auroc": auc, "pixel_ap": ap, "pixel_f1max": f1, "pixel_aupro": pro}


def random_case(seed, n=4, h=7, w=6, decimals=1, defect=0.25):
    """Blobby random masks (diagonal contacts included) and scores rounded to force ties."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < defect
    masks[0] = False                                   # a defect-free image
    masks[1, 0, 0] = True                              # at least one defect pixel
    maps = np.round(rng.normal(size=(n, h, w)) + 1.2 * masks, decimals).astype(np.float32)
    return masks, maps


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("decimals", [0, 1, 3])
def test_pixel_metrics_equal_the_brute_force_over_every_threshold(seed, decimals):
    masks, maps = random_case(seed, decimals=decimals)
    got, want = pixel_metrics(masks, maps), brute_metrics(masks, maps)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("limit", [0.01, 0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_aupro_limits_including_inside_a_tie(limit, seed):
    """Coarse scores: the limit often falls inside a run of tied negatives, or on a point exactly."""
    masks, maps = random_case(100 + seed, n=5, h=8, w=8, decimals=0)
    assert aupro(masks, maps, limit) == pytest.approx(brute_metrics(masks, maps, limit)["pixel_aupro"], abs=1e-12)


def test_aupro_top_scores_all_tied_and_negative_zero():
    """The highest score is shared by more than 30 % of the negatives (no full segment inside
    the limit), and -0.0 / +0.0 are one score."""
    rng = np.random.default_rng(3)
    masks = rng.random((3, 6, 6)) < 0.3
    maps = np.where(rng.random((3, 6, 6)) < 0.5, 2.0, rng.choice([-0.0, 0.0, -1.0, 1.0], (3, 6, 6))).astype(np.float32)
    want = brute_metrics(masks, maps)
    got = pixel_metrics(masks, maps)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_regions_are_8_connected():
    """Two defect pixels touching at a corner are ONE region: with a perfect score on one and the
    lowest on the other, 8-connectivity gives overlap 1/2 for the single region, 4-connectivity
    would give regions of overlap 1 and 0 plus a third full one: the AUPRO differs."""
    masks = np.zeros((1, 5, 5), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True
    masks[0, 4, 4] = True
    maps = np.zeros((1, 5, 5), np.float32)
    maps[0, 1, 1], maps[0, 2, 2], maps[0, 4, 4] = 1.0, -1.0, 1.0
    assert len(flood_regions(masks[0])) == 2
    # regions {(1,1),(2,2)} and {(4,4)}: above every negative PRO = (1/2 + 1) / 2; the -1 pixel is
    # below every negative, so PRO stays 3/4 up to FPR 1
    assert aupro(masks, maps) == pytest.approx(0.75, abs=1e-12)


# ---- MVTec AD's evaluation algorithm (their compute_pro + trapezoid), re-implemented ----

def mvtec_au_pro(masks, maps, limit=0.3):
    """MVTec AD's evaluation code, step by step in our words: per image, components with a 3x3
    structure; every ok (non-defect) pixel adds 1 to the false positives, every defect pixel
    1/|its region| to the overlap sum; all pixels sorted by descending score, cumulative sums,
    FPR cast to float32 and divided by the ok pixels, PRO divided by the number of regions; only
    the last point of each run of equal scores is kept; clipped to 1; (0, 0) prepended and (1, 1)
    appended; then their trapezoid: if the limit is not an x, the area up to the last x below it
    plus the segment to the limit with y interpolated between its neighbours; divided by the limit."""
    fp_change = np.zeros(maps.shape, np.uint32)
    pro_change = np.zeros(maps.shape, np.float64)
    n_ok = n_regions = 0
    for k, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, np.ones((3, 3), int))
        n_regions += n
        fp_change[k][labeled == 0] = 1
        n_ok += int((labeled == 0).sum())
        for r in range(1, n + 1):
            pro_change[k][labeled == r] = 1.0 / (labeled == r).sum()
    order = np.argsort(maps.ravel())[::-1]
    scores = maps.ravel()[order]
    fprs = np.cumsum(fp_change.ravel()[order]).astype(np.float32) / np.float32(n_ok)
    pros = np.cumsum(pro_change.ravel()[order]) / n_regions
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.clip(fprs[keep], None, 1.0)
    pros = np.clip(pros[keep], None, 1.0)
    x = np.concatenate(([0.0], fprs, [1.0]))
    y = np.concatenate(([0.0], pros, [1.0]))
    correction = 0.0
    if limit not in x:
        i = bisect(x, limit)
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_lim + y[i - 1]) * (limit - x[i - 1])
    inside = x <= limit
    x, y = x[inside], y[inside]
    return (np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / limit


@pytest.mark.parametrize("seed", range(6))
def test_aupro_equals_mvtec_evaluation_algorithm(seed):
    """Larger maps, MVTec-like masks (a few rectangles and blobs per defect image), continuous and
    float16-rounded (tied) scores. Their FPR is float32, hence 1e-6."""
    rng = np.random.default_rng(1024 + seed)
    n, h, w = 12, 40, 48
    masks = np.zeros((n, h, w), bool)
    for k in range(3, n):
        for _ in range(rng.integers(1, 4)):
            i, j = rng.integers(0, h - 8), rng.integers(0, w - 8)
            masks[k, i:i + rng.integers(1, 8), j:j + rng.integers(1, 8)] = True
        masks[k] |= ndimage.binary_dilation(rng.random((h, w)) < 0.004, iterations=2)
    maps = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), (0, 2, 2)) + 0.8 * masks
    for m in (maps.astype(np.float32), maps.astype(np.float16).astype(np.float32)):
        assert aupro(masks, m) == pytest.approx(mvtec_au_pro(masks, m), abs=1e-6)


# ---- the shared path: same numbers as the single metrics, any number of parts and chunks ----

def test_pixel_metrics_agree_with_roc_auc_sklearn_and_aupro():
    masks, maps = random_case(11, n=6, h=20, w=20, decimals=2, defect=0.1)
    got = pixel_metrics(masks, maps)
    assert got["pixel_auroc"] == roc_auc(masks, maps)           # the same float, not just close
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    assert got["pixel_f1max"] == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-300)), abs=1e-12)
    assert got["pixel_aupro"] == aupro(masks, maps)


@pytest.mark.parametrize("parts,chunk", [(1, 5), (3, 7), (5, 2**20)])
def test_parts_and_chunks_do_not_change_the_result(monkeypatch, parts, chunk):
    """The negatives sorted in several parts (threads) and the distinct positive scores counted
    in chunks must add up to the one-part, one-chunk result (ties across part borders included)."""
    from anomaly_backbones.metrics import ranks
    masks, maps = random_case(5, n=6, h=30, w=30, decimals=1, defect=0.2)
    want = pixel_metrics(masks, maps)
    monkeypatch.setattr(ranks, "PARALLEL_FROM", 1)
    monkeypatch.setattr(ranks, "threads", lambda: parts)
    monkeypatch.setattr(ranks, "VALUE_CHUNK", chunk)
    got = pixel_metrics(masks, maps)
    assert got["pixel_auroc"] == want["pixel_auroc"]
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_one_class_is_none_and_nonfinite_is_a_user_error():
    maps = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    none = dict.fromkeys(["pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"])
    assert pixel_metrics(np.zeros((2, 4, 4), bool), maps) == none
    assert pixel_metrics(np.ones((2, 4, 4), bool), maps) == none
    assert aupro(np.zeros((2, 4, 4), bool), maps) is None
    maps[1, 2, 3] = np.inf
    with pytest.raises(UserError, match="NaN or Inf"):
        pixel_metrics(np.eye(4, dtype=bool)[None].repeat(2, 0), maps)
    with pytest.raises(ValueError, match="must both be"):
        pixel_metrics(np.zeros((2, 4, 4), bool), maps[:, :3])


@pytest.mark.parametrize("parallel", [False, True])
def test_memory_estimate_bounds_the_measured_peak(monkeypatch, parallel):
    from anomaly_backbones.metrics import ranks
    if parallel:    # the negatives in two parts sorted by two threads while this one sorts the positives
        monkeypatch.setattr(ranks, "PARALLEL_FROM", 1)
        monkeypatch.setattr(ranks, "threads", lambda: 2)
    rng = np.random.default_rng(2)
    masks = ndimage.binary_dilation(rng.random((40, 64, 64)) < 0.01, iterations=2)
    maps = rng.random(masks.shape, dtype=np.float32)
    tracemalloc.start()
    pixel_metrics(masks, maps)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    estimate = pixel_metrics_bytes(masks.size, int(masks.sum()))
    assert peak <= estimate < 4 * peak + 2**20
