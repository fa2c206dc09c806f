"""The fit@<method> stage's body (stages/04_fit.py): fit one method per category on cached
features, score the test set.

    res = fit_all(method, p)                   # every category; outputs/<method>/results.json
    out = fit_predict(method, p, train, test, dev)   # one category's fit and predict (bench/gpu.py too)

Writes outputs/<method>/<category>.npz (image scores, float16 anomaly maps where the method has
them) and outputs/<method>/results.json (per category: image ROC-AUC with its DeLong interval, AP,
F1-max; pixel ROC-AUC, AP, F1-max, AUPRO, and AUPIMO with `metrics.aupimo`; timings; the ROC
curve; the stage's peak memory and the machine's load when it started; the device the method ran
on, `device`, and its name).
With `threshold.holdout` > 0 the fit uses the training images less a seeded held-out share
(holdout.fit_split), and each category's entry gets a `threshold` block: the decision threshold
calibrated on the held-out scores (and maps) at `threshold.fpr`, with its test rates
(metrics.threshold). holdout 0 (the default) changes nothing. With `threshold.source` =
validation the fit uses all training images and calibrates on the category's validation split
(MVTec AD 2's validation/good), the block's `source` says so; `threshold.pixel_rule` picks the
pixel rule (mean3std: MVTec AD 2's, whose segmentation F1 is the block's pixel.test.f1, SegF1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import real_iad
from ..data.datasets import get_dataset
from ..data.prepare import load_prepared, read_samples
from ..device import check_memory, device_name, resolve_device, synchronize, use_device
from ..features import FeatureSet
from ..files import read_json, replacing, write_json
from ..holdout import fit_split
from ..methods import get_method
from ..metrics import PIXEL_KEYS, aupimo, aupro, image_metrics, pixel_metrics, pixel_metrics_bytes, roc_auc, roc_curve
from ..metrics.threshold import threshold_entry
from ..resources import BASELINE_BYTES, load_1m, peak_rss_mb, usable_cpus
from .config import resolve

PREPARED, FEATURES, OUT = Path("data/prepared"), Path("data/features"), Path("outputs")


@dataclass
class Scored:
    """One method's fit and predict on one category: (N,) scores, (N, S, S) float32 maps or None,
    seconds of fit and of predict (device work waited for), the resolved params group; with a
    held-out set, its scores and maps (else None), predicted after the timed predict."""
    scores: np.ndarray
    maps: np.ndarray | None
    fit_s: float
    predict_s: float
    params: dict
    held_scores: np.ndarray | None = None
    held_maps: np.ndarray | None = None


def fit_predict(method: str, p: dict, train: FeatureSet, test: FeatureSet, dev="cpu", label: str | None = None,
                before=None, held: FeatureSet | None = None) -> Scored:
    """Resolve the method's params against the cache's shapes, build it on `dev`, fit on `train`,
    predict `test` (and `held`, when given: the calibration images of holdout.fit_split, held-out
    training images or the validation split).
    `before()`, when given, runs just before fit (a guard, a peak-memory reset)."""
    r = resolve(p, shapes=train.meta["shapes"])
    m = get_method(method)(r[method], r["layers"], p["seed"], device=dev)
    if label is not None:
        m.label = label
    if before is not None:
        before()
    t0 = time.perf_counter()
    m.fit(train)
    synchronize(m.device)
    t1 = time.perf_counter()
    scores, maps = m.predict(test)
    synchronize(m.device)
    t2 = time.perf_counter()
    t1 += m.deferred_fit_s   # PaDiM fits chunk by chunk inside predict: that time is fit time
    # after the timings (PaDiM's one pass makes its Gaussians again for the held-out set: untimed)
    held_scores, held_maps = m.predict(held) if held is not None else (None, None)
    # the fitted model (PaDiM: GBs of inverse covariances for large d) is not needed for the metrics
    del m
    return Scored(scores, maps, t1 - t0, t2 - t1, r[method], held_scores, held_maps)


def view_scores(files: list[str], labels: np.ndarray, scores: np.ndarray) -> dict:
    """Image ROC-AUC per view (`views`: {C1: .., C5: ..}, None where a view has one class) and per
    object (`object_auroc` over `objects` objects: an object's score is the max over its views,
    defective if any view is; data/real_iad.py)."""
    views = np.array([real_iad.view_of(f) for f in files])
    per_view = {v: roc_auc(labels[views == v], scores[views == v]) if len(set(labels[views == v])) == 2 else None
                for v in sorted(set(views))}
    _, y, s = real_iad.object_scores(files, labels, scores)
    return {"views": per_view, "objects": len(y),
            "object_auroc": roc_auc(np.array(y), np.array(s)) if len(set(y)) == 2 else None}


def fit_category(method: str, p: dict, name: str, label: str, dev="cpu", prepared: Path = PREPARED,
                 features: Path = FEATURES, out: Path = OUT) -> dict:
    """Fit and score one category; writes out/<method>/<name>.npz; returns its results entry:
    every image metric (and the ROC-AUC's DeLong variance), every pixel metric (None for a method
    without anomaly maps), timings and a compact ROC curve."""
    train, test = FeatureSet(features / name, "train"), FeatureSet(features / name, "test")
    level = get_method(method).level
    masks = load_prepared(prepared / name, "test_masks", mmap=False) if level == "pixel" else None

    def guard():
        if masks is not None:   # the maps (float32) and masks, then the pixel metrics' sort
            pixels = masks.size
            check_memory(BASELINE_BYTES + 5.0 * pixels + pixel_metrics_bytes(pixels, int(np.count_nonzero(masks))),
                         f"pixel metrics on {name} ({len(test)} test images of {test.image_size} px)",
                         "lower `data.crop` (memory grows with pixels per image).")

    fit_set, held = fit_split(train, p)   # threshold.holdout 0 (source holdout): (train, None)
    s = fit_predict(method, p, fit_set, test, dev, label, before=guard, held=held)
    backbone_ms = train.meta["ms_per_image"]
    if level == "image":   # an image-level method's features also need the network past the cached layers
        backbone_ms += train.meta.get("pooled_ms_per_image", 0.0)
    samples = [x for x in read_samples(prepared / name) if x["split"] == "test"]
    labels = np.array([int(x["label"]) for x in samples])
    fpr, tpr = roc_curve(labels, s.scores)
    limit, dataset = p["metrics"]["pro_fpr_limit"], get_dataset(p["data"]["dataset"])
    res = {**image_metrics(labels, s.scores), **(pixel_metrics(masks, s.maps, limit) if s.maps is not None else
                                                 dict.fromkeys(PIXEL_KEYS))}
    for other in (x for x in dataset.pro_fpr_limits if x != limit):   # MVTec AD 2 reports 0.3 and 0.05
        res[f"pixel_aupro@{other:g}"] = aupro(masks, s.maps, other) if s.maps is not None else None
    if p["metrics"]["aupimo"]:   # off by default: results.json without the key
        res["pixel_aupimo"] = aupimo(masks, s.maps) if s.maps is not None else None
    if dataset.views:   # Real-IAD: per view and per object
        res.update(view_scores([x["file"] for x in samples], labels, s.scores))
    res.update(fit_s=s.fit_s, predict_ms_per_image=1000.0 * s.predict_s / len(test),
               backbone_ms_per_image=backbone_ms,
               roc={"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()})
    if held is not None:
        t = p["threshold"]
        res["threshold"] = threshold_entry(t["fpr"], s.held_scores, labels, s.scores, s.held_maps, masks, s.maps,
                                           t.get("pixel_rule", "quantile"))
        if t.get("source") == "validation":
            res["threshold"]["source"] = "validation"
    with replacing(out / method / f"{name}.npz", "wb") as f:
        arrays = {"scores": s.scores.astype(np.float32)}
        if s.maps is not None:
            arrays["maps"] = s.maps.astype(np.float16)
        np.savez(f, **arrays)
    return res


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def fit_all(method: str, p: dict, prepared: Path = PREPARED, features: Path = FEATURES, out: Path = OUT) -> dict:
    """The fit@<method> stage: every prepared category; returns results.json's content, also
    written to out/<method>/results.json."""
    get_method(method)   # an unknown method: one line before any work
    dev = resolve_device(p["device"])   # cuda without a GPU: one line before any work
    use_device(dev)
    (out / method).mkdir(parents=True, exist_ok=True)
    results = {"method": method, "categories": {}, "load_1m": load_1m(), "cpus": usable_cpus(),
               "device": str(dev), "device_name": device_name(dev)}
    categories = [c["category"] for c in read_json(prepared / "categories.json")]
    for name in tqdm(categories, desc=f"fit@{method} {p['backbone']}", unit="category", dynamic_ncols=True):
        r = results["categories"][name] = fit_category(method, p, name, f"{method} {p['backbone']} {name}", dev,
                                                       prepared, features, out)
        tqdm.write(f"{method} {name}: image ROC-AUC {fmt(r['image_auroc'])}, pixel ROC-AUC {fmt(r['pixel_auroc'])}, "
                   f"AUPRO {fmt(r['pixel_aupro'])}, fit {r['fit_s']:.1f} s")
    results["peak_mb"] = peak_rss_mb()
    write_json(out / method / "results.json", results)
    return results
