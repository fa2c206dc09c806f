"""Stage 4, fit@<method>: fit one method per category on cached features, score the test set.

Writes outputs/<method>/<category>.npz (image scores, float16 anomaly maps where the method has
them) and outputs/<method>/results.json (per category: image ROC-AUC with its DeLong interval, AP,
F1-max; pixel ROC-AUC, AP, F1-max, AUPRO; timings; the ROC curve; the stage's peak memory and the
machine's load when it started; the device the method ran on, `device`, and its name).
"""
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from anomaly_backbones.data.prepare import load_prepared, read_samples
from anomaly_backbones.device import device_name, resolve_device, use_device
from anomaly_backbones.features import FeatureSet
from anomaly_backbones.files import read_json, replacing, write_json
from anomaly_backbones.methods import get_method
from anomaly_backbones.metrics import PIXEL_KEYS, image_metrics, pixel_metrics, pixel_metrics_bytes, roc_curve
from anomaly_backbones.params import load_params, resolve
from anomaly_backbones.resources import BASELINE_BYTES, check_memory, load_1m, peak_rss_mb, usable_cpus
from anomaly_backbones.runner import run

PREPARED, FEATURES, OUT = Path("data/prepared"), Path("data/features"), Path("outputs")


def fit_category(method: str, p: dict, name: str, label: str, dev="cpu") -> dict:
    """Fit and score one category; writes outputs/<method>/<name>.npz; returns its results entry:
    every image metric (and the ROC-AUC's DeLong variance), every pixel metric (None for a method
    without anomaly maps), timings and a compact ROC curve."""
    train, test = FeatureSet(FEATURES / name, "train"), FeatureSet(FEATURES / name, "test")
    r = resolve(p, shapes=train.meta["shapes"])
    m = get_method(method)(r[method], r["layers"], p["seed"], device=dev)
    m.label = label
    masks = load_prepared(PREPARED / name, "test_masks", mmap=False) if m.level == "pixel" else None
    if masks is not None:   # the maps (float32) and masks, then the pixel metrics' sort
        pixels = masks.size
        check_memory(BASELINE_BYTES + 5.0 * pixels + pixel_metrics_bytes(pixels, int(np.count_nonzero(masks))),
                     f"pixel metrics on {name} ({len(test)} test images of {test.image_size} px)",
                     "lower `data.crop` (memory grows with pixels per image).")
    t0 = time.perf_counter()
    m.fit(train)
    t1 = time.perf_counter()
    scores, maps = m.predict(test)
    t2 = time.perf_counter()
    t1 += m.deferred_fit_s   # PaDiM fits chunk by chunk inside predict: that time is fit time
    backbone_ms = train.meta["ms_per_image"]
    if m.level == "image":   # an image-level method's features also need the network past the cached layers
        backbone_ms += train.meta.get("pooled_ms_per_image", 0.0)
    del m   # the fitted model (PaDiM: GBs of inverse covariances for large d) is not needed for the metrics
    labels = np.array([int(s["label"]) for s in read_samples(PREPARED / name) if s["split"] == "test"])
    fpr, tpr = roc_curve(labels, scores)
    res = {**image_metrics(labels, scores), **(pixel_metrics(masks, maps) if maps is not None else
                                               dict.fromkeys(PIXEL_KEYS))}
    res.update(fit_s=t1 - t0, predict_ms_per_image=1000.0 * (t2 - t1) / len(test),
               backbone_ms_per_image=backbone_ms,
               roc={"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()})
    with replacing(OUT / method / f"{name}.npz", "wb") as f:
        arrays = {"scores": scores.astype(np.float32)}
        if maps is not None:
            arrays["maps"] = maps.astype(np.float16)
        np.savez(f, **arrays)
    return res


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def main():
    method = sys.argv[1]
    p = load_params()
    get_method(method)   # an unknown method: one line before any work
    dev = resolve_device(p["device"])   # cuda without a GPU: one line before any work
    use_device(dev)
    (OUT / method).mkdir(parents=True, exist_ok=True)
    results = {"method": method, "categories": {}, "load_1m": load_1m(), "cpus": usable_cpus(),
               "device": str(dev), "device_name": device_name(dev)}
    categories = [c["category"] for c in read_json(PREPARED / "categories.json")]
    for name in tqdm(categories, desc=f"fit@{method} {p['backbone']}", unit="category", dynamic_ncols=True):
        r = results["categories"][name] = fit_category(method, p, name, f"{method} {p['backbone']} {name}", dev)
        tqdm.write(f"{method} {name}: image ROC-AUC {fmt(r['image_auroc'])}, pixel ROC-AUC {fmt(r['pixel_auroc'])}, "
                   f"AUPRO {fmt(r['pixel_aupro'])}, fit {r['fit_s']:.1f} s")
    results["peak_mb"] = peak_rss_mb()
    write_json(OUT / method / "results.json", results)


if __name__ == "__main__":
    run(main)
