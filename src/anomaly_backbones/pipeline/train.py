"""The train@<method> stage's body (stages/04_train.py): train the backbone on each
category's prepared images, score its test set.

For the methods of `train_methods` (reads = "images": deep_svdd, panda, msc, doc). Each category
starts from the backbone as `backbone`, `init` and `seed` give it (the loader extract uses).
Writes outputs/<method>/<category>.npz (image scores) and outputs/<method>/results.json in the
shape fit@<method> writes (image-level: pixel metrics null), and the per-epoch training loss
(and, with `<method>.test_curve`, the test ROC-AUC) through DVCLive into metrics/train/<method>,
which `dvc plots show` draws. The backbone trains on `device` (anomaly_backbones.device);
results.json records it and its name.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..backbones import load_backbone
from ..data.prepare import load_prepared, read_samples
from ..device import device_name, resolve_device, use_device
from ..errors import UserError
from ..files import read_json, replacing, write_json
from ..methods import get_method
from ..methods.training.base import ImageSet
from ..metrics import PIXEL_KEYS, image_metrics, roc_curve
from ..resources import load_1m, peak_rss_mb, usable_cpus
from .config import resolve

PREPARED, OUT, CURVES = Path("data/prepared"), Path("outputs"), Path("metrics/train")


def train_category(cls, p: dict, r: dict, name: str, live, dev) -> dict:
    """Train and score one category; writes outputs/<method>/<name>.npz; returns its results entry."""
    method = cls.name
    labels = np.array([int(s["label"]) for s in read_samples(PREPARED / name) if s["split"] == "test"])
    train = ImageSet(load_prepared(PREPARED / name, "train_images"))
    test = ImageSet(load_prepared(PREPARED / name, "test_images"), labels)
    bb = load_backbone(p["backbone"], p["init"], p["seed"])   # every category starts from the same weights
    m = cls(r[method], r["layers"], p["seed"], backbone=bb, device=dev)
    m.label = f"{method} {bb.name} {name}"

    def log(epoch: int, values: dict) -> None:
        live.step = epoch + 1
        for key, value in values.items():
            live.log_metric(f"{name}/{key}", value)

    m.on_epoch = log
    t0 = time.perf_counter()
    m.fit(train, test if m.test_curve else None)
    t1 = time.perf_counter()
    m.forward_s = 0.0
    scores, _ = m.predict(test)
    t2 = time.perf_counter()
    fpr, tpr = roc_curve(labels, scores)
    res = {**image_metrics(labels, scores), **dict.fromkeys(PIXEL_KEYS),
           "fit_s": t1 - t0, "predict_ms_per_image": 1000.0 * (t2 - t1 - m.forward_s) / len(test),
           "backbone_ms_per_image": 1000.0 * m.forward_s / len(test),
           "epochs": m.resolved_epochs(len(train)), "train_loss": [round(x, 8) for x in m.losses],
           "roc": {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}}
    if m.curve:
        res["test_image_auroc_curve"] = [round(x, 6) for x in m.curve]
    if hasattr(m, "collapsed"):
        res["collapsed"] = bool(m.collapsed)
    with replacing(OUT / method / f"{name}.npz", "wb") as f:
        np.savez(f, scores=scores.astype(np.float32))
    return res


def train_all(method: str, p: dict) -> dict:
    """The train@<method> stage: every prepared category; returns results.json's content, also
    written to outputs/<method>/results.json."""
    cls = get_method(method)
    if cls.reads != "images":
        raise UserError(f"{method} reads the feature cache: it runs as fit@{method} (list it in `methods`)")
    r = resolve(p)
    dev = resolve_device(p["device"])   # cuda without a GPU: one line before any work
    cls(r[method], r["layers"], p["seed"]).preflight()    # a missing file named by a param: stop now
    use_device(dev)
    from dvclive import Live

    (OUT / method).mkdir(parents=True, exist_ok=True)
    live = Live(dir=str(CURVES / method), save_dvc_exp=False, dvcyaml=None, report=None)
    (Path(live.plots_dir) / "metrics").mkdir(parents=True, exist_ok=True)   # exists even with 0 epochs
    results = {"method": method, "categories": {}, "load_1m": load_1m(), "cpus": usable_cpus(),
               "device": str(dev), "device_name": device_name(dev)}
    categories = [c["category"] for c in read_json(PREPARED / "categories.json")]
    for name in tqdm(categories, desc=f"train@{method} {p['backbone']}", unit="category", dynamic_ncols=True):
        c = results["categories"][name] = train_category(cls, p, r, name, live, dev)
        tqdm.write(f"{method} {name}: image ROC-AUC {c['image_auroc']:.4f}, {c['epochs']} epochs, "
                   f"train {c['fit_s']:.1f} s")
        if c.get("collapsed"):
            tqdm.write(f"warning: {method} {name}: hypersphere collapse: the trained network maps every "
                       f"training image to one point (within 1e-3 |c|), so its scores carry no information "
                       f"(methods/training/deep_svdd.py; `{method}.biases: frozen` keeps biases fixed)")
    live.end()
    results["peak_mb"] = peak_rss_mb()
    write_json(OUT / method / "results.json", results)
    return results

