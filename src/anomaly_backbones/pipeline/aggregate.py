"""The aggregate stage's body (stages/06_aggregate.py): means over categories, per-category CSV,
ROC plots.

Quality and cost go to two files: metrics/metrics.json (run + every metric: a function of the
params alone, so the same params give it bit for bit; an image-level method's pixel metrics are
null) and metrics/speed.json (ms/image, fit seconds,
peak memory: they depend on the machine and its load). `dvc metrics show/diff` reads both.

Device: metrics.json's run block says which kind of device computed the results ("cpu" or
"cuda": GPU kernels are not the CPU's bits) and in which `extract.precision`, with the GPU's name
(`device_name`) for a GPU run; speed.json's host block names the device that timed the run
("cpu", "cuda:0") and its model (`device_name`), which the report uses to keep GPU timings off
the CPU's axes. A CPU's model is in speed.json only (`cpu_model`): metrics.json of a CPU run stays
a function of the params, so a fresh clone's `make repro` can reproduce the committed file.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ..files import read_json, replacing, write_json
from ..metrics import IMAGE_KEYS, IMAGE_VAR_KEY, OPTIONAL_PIXEL_KEYS, PIXEL_KEYS, mean_interval
from ..metrics.threshold import threshold_means
from ..resources import cpu_model, usable_cpus

METRICS = Path("metrics")


def mean_of(cats: dict, key: str, digits: int | None = 6) -> float | None:
    """Mean over categories of a metric, skipping categories where it is undefined (None or NaN:
    no defective pixels); None where it is undefined everywhere (an image-level method's pixel
    metrics: "not applicable", never 0 or NaN)."""
    vals = [c[key] for c in cats.values() if c.get(key) is not None and not math.isnan(c[key])]
    if not vals:
        return None
    m = float(np.mean(vals))
    return m if digits is None else round(m, digits)


def summarize(cats: dict, optional: tuple[str, ...] = ()) -> dict:
    """A method's metrics block: each metric's mean over categories, and of each `optional` key
    (OPTIONAL_PIXEL_KEYS the run recorded); the image ROC-AUC's interval is the mean's (DeLong
    variances of independent test sets added), not a mean of intervals."""
    out = {k: mean_of(cats, k) for k in (*IMAGE_KEYS, *PIXEL_KEYS, *optional)}
    defined = [c for c in cats.values() if c.get("image_auroc") is not None]
    lo, hi = mean_interval([c["image_auroc"] for c in defined], [c.get(IMAGE_VAR_KEY) for c in defined])
    out["image_auroc_lo"] = None if lo is None else round(lo, 6)
    out["image_auroc_hi"] = None if hi is None else round(hi, 6)
    out.update(threshold_means(cats))   # nothing without a calibrated threshold (threshold.holdout 0)
    return out


def aggregate(p: dict) -> dict:
    """The aggregate stage: metrics/metrics.json, metrics/speed.json, metrics/per_category.csv and
    metrics/roc/*.csv from data/features/stats.json and every outputs/<method>/results.json;
    returns metrics.json's content."""
    methods = p["methods"] + p["train_methods"]   # fit@ and train@ stages write the same results.json
    feats = read_json("data/features/stats.json")
    metrics = {"run": {"backbone": feats["backbone"], "init": feats["init"], "layers": ",".join(feats["layers"]),
                       "dataset": p["data"]["dataset"], "seed": p["seed"], "feature_dtype": feats["dtype"],
                       "engine": feats.get("engine", "eager"),   # what computed the features (extract.engine)
                       "device": feats.get("device", "cpu").split(":")[0],   # cpu | cuda (older caches: cpu)
                       "precision": feats.get("precision", "float32"),
                       **({"device_name": feats.get("device_name", "?")} if feats.get("device", "cpu") != "cpu" else {}),
                       # feature cache on disk, all categories: set by shapes and dtype, so deterministic
                       "cache_mb": round(sum(c["cache_mb"] for c in feats["categories"].values()), 1)}}
    stages = [feats] + [read_json(Path("outputs") / m / "results.json") for m in methods]
    loads = [x for x in (s.get("load_1m") for s in stages) if x is not None]
    # keys behind a param (metrics.aupimo): in every method's block when any results.json has them
    optional = tuple(k for k in OPTIONAL_PIXEL_KEYS
                     if any(k in c for s in stages[1:] for c in s["categories"].values()))
    # the extract and fit/train stages' device (results of older runs: the CPU); one name unless they differ
    devices = list(dict.fromkeys(s.get("device", "cpu") for s in stages))
    names = list(dict.fromkeys(s.get("device_name") or (cpu_model() if s.get("device", "cpu") == "cpu" else "?")
                               for s in stages))
    # what the timings were measured on, and under how much other work (the report flags loaded rows)
    speed = {"host": {"cpus": feats.get("cpus", usable_cpus()), "cpu_model": cpu_model(), "device": "+".join(devices),
                      "device_name": " + ".join(names), "load_1m": round(max(loads), 2) if loads else None}}
    rows = []
    roc_dir = METRICS / "roc"
    roc_dir.mkdir(parents=True, exist_ok=True)
    for f in roc_dir.glob("*.csv"):
        f.unlink()
    for method in methods:
        res = read_json(Path("outputs") / method / "results.json")
        cats = res["categories"]
        metrics[method] = summarize(cats, optional)
        speed[method] = {
            "ms_per_image": round(mean_of(cats, "backbone_ms_per_image", None) + mean_of(cats, "predict_ms_per_image", None), 2),
            "fit_s": round(sum(c["fit_s"] for c in cats.values()), 2),
            "peak_mb": round(max(res["peak_mb"], feats["peak_mb"]), 1),
        }
        for name, c in cats.items():
            rows.append({"method": method, "category": name, "backbone": feats["backbone"], "init": feats["init"],
                         **{k: ("" if c.get(k) is None or math.isnan(c[k]) else round(c[k], 6)) for k in
                            (*IMAGE_KEYS, *PIXEL_KEYS, *optional, "fit_s", "predict_ms_per_image",
                             "backbone_ms_per_image")}})
            with replacing(roc_dir / f"{method}_{name}.csv") as f:   # image-level ROC; the other columns
                w = csv.writer(f)                                      # title and label `dvc plots` (.dvc/plots/roc.json)
                w.writerow(["fpr", "tpr", "method", "category", "backbone", "init"])
                w.writerows((x, y, method, name, feats["backbone"], feats["init"])
                            for x, y in zip(c["roc"]["fpr"], c["roc"]["tpr"]))
    write_json(METRICS / "metrics.json", metrics)
    write_json(METRICS / "speed.json", speed)
    with replacing(METRICS / "per_category.csv") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for m in methods:
        print(f"{m}: " + ", ".join(f"{k} {v}" for k, v in {**metrics[m], **speed[m]}.items()))
    return metrics
