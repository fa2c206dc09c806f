"""Stage 6, aggregate: metrics/metrics.json (means over categories), per-category CSV, ROC plots."""
import csv
import math
from pathlib import Path

import numpy as np

from anomaly_backbones.params import load_params
from anomaly_backbones.runner import read_json, run, write_json

METRICS = Path("metrics")


def main():
    p = load_params()
    feats = read_json("data/features/stats.json")
    metrics = {"run": {"backbone": feats["backbone"], "init": feats["init"], "layers": ",".join(feats["layers"]),
                       "dataset": p["data"]["dataset"], "seed": p["seed"]}}
    rows = []
    roc_dir = METRICS / "roc"
    roc_dir.mkdir(parents=True, exist_ok=True)
    for f in roc_dir.glob("*.csv"):
        f.unlink()
    for method in p["methods"]:
        res = read_json(Path("outputs") / method / "results.json")
        cats = res["categories"]
        mean = lambda k: float(np.nanmean([c[k] for c in cats.values()]))  # noqa: E731
        metrics[method] = {
            "image_auroc": round(mean("image_auroc"), 6),
            "pixel_auroc": round(mean("pixel_auroc"), 6),
            "ms_per_image": round(mean("backbone_ms_per_image") + mean("predict_ms_per_image"), 2),
            "fit_s": round(sum(c["fit_s"] for c in cats.values()), 2),
            "peak_mb": round(max(res["peak_mb"], feats["peak_mb"]), 1),
        }
        for name, c in cats.items():
            rows.append({"method": method, "category": name, "backbone": feats["backbone"], "init": feats["init"],
                         **{k: (round(c[k], 6) if not math.isnan(c[k]) else "") for k in
                            ("image_auroc", "pixel_auroc", "fit_s", "predict_ms_per_image", "backbone_ms_per_image")}})
            with open(roc_dir / f"{method}_{name}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["fpr", "tpr"])
                w.writerows(zip(c["roc"]["fpr"], c["roc"]["tpr"]))
    write_json(METRICS / "metrics.json", metrics)
    with open(METRICS / "per_category.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for m in p["methods"]:
        print(f"{m}: " + ", ".join(f"{k} {v}" for k, v in metrics[m].items()))


if __name__ == "__main__":
    run(main)
