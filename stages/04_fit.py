"""Stage 4, fit@<method>: fit one method per category on cached features, score the test set.

Writes outputs/<method>/<category>.npz (image scores, float16 anomaly maps) and
outputs/<method>/results.json (per-category ROC-AUC, timings, peak memory, ROC curves).
"""
import sys
import time
from pathlib import Path

import numpy as np

from anomaly_backbones.backbones import resolve_layers
from anomaly_backbones.data.prepare import load_prepared, read_samples
from anomaly_backbones.features import FeatureSet
from anomaly_backbones.methods import get_method
from anomaly_backbones.metrics import roc_auc, roc_auc_bytes, roc_curve
from anomaly_backbones.params import load_params
from anomaly_backbones.runner import (BASELINE_BYTES, check_memory, peak_rss_mb, read_json, replacing, run,
                                      write_json)

PREPARED, FEATURES = Path("data/prepared"), Path("data/features")


def main():
    method = sys.argv[1]
    p = load_params()
    Method = get_method(method)
    layers = resolve_layers(p["backbone"], p["layers"])
    out = Path("outputs") / method
    out.mkdir(parents=True, exist_ok=True)
    results = {"method": method, "categories": {}}
    for c in read_json(PREPARED / "categories.json"):
        name = c["category"]
        train, test = FeatureSet(FEATURES / name, "train"), FeatureSet(FEATURES / name, "test")
        m = Method(p.get(method, {}), layers, p["seed"])
        pixels = len(test) * test.image_size ** 2  # the maps (float32) and masks, then their ROC-AUC
        check_memory(BASELINE_BYTES + 5.0 * pixels + roc_auc_bytes(pixels),
                     f"pixel ROC-AUC on {name} ({len(test)} test images of {test.image_size} px)",
                     "lower `data.crop` (memory grows with pixels per image).")
        t0 = time.perf_counter()
        m.fit(train)
        t1 = time.perf_counter()
        scores, maps = m.predict(test)
        t2 = time.perf_counter()
        del m   # the fitted model (PaDiM: GBs of inverse covariances for large d) is not needed for ROC-AUC
        labels = np.array([int(r["label"]) for r in read_samples(PREPARED / name) if r["split"] == "test"])
        masks = load_prepared(PREPARED / name, "test_masks", mmap=False)
        fpr, tpr = roc_curve(labels, scores)
        results["categories"][name] = {
            "image_auroc": roc_auc(labels, scores),
            "pixel_auroc": roc_auc(masks, maps) if masks.any() else float("nan"),
            "fit_s": t1 - t0,
            "predict_ms_per_image": 1000.0 * (t2 - t1) / len(test),
            "backbone_ms_per_image": train.meta["ms_per_image"],
            "roc": {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()},
        }
        with replacing(out / f"{name}.npz", "wb") as f:
            np.savez(f, scores=scores.astype(np.float32), maps=maps.astype(np.float16))
        r = results["categories"][name]
        print(f"{method} {name}: image ROC-AUC {r['image_auroc']:.4f}, pixel ROC-AUC {r['pixel_auroc']:.4f}, "
              f"fit {r['fit_s']:.1f} s")
    results["peak_mb"] = peak_rss_mb()
    write_json(out / "results.json", results)


if __name__ == "__main__":
    run(main)
