"""Feature-cache precision: does float16 storage move ROC-AUC? (prints a Markdown table)

Reads the workspace's float32 cache (data/features, written by `dvc repro` with
extract.dtype=float32), writes a float16 copy of it (what extract.dtype=float16 stores: the
same activations rounded on write), and fits and scores each method on both with the params
in params.yaml. Run after a `dvc repro` on the data of interest, e.g.

    dvc exp run -S data.dataset=mtd -S data.root=/abs/magnetic_tile -S 'layers=[blocks.1,blocks.2,blocks.4]' -S padim.d=100
    python bench/precision.py --methods padim,patchcore

The issue's bar: float16 is acceptable where it moves image and pixel ROC-AUC by <= 0.001.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from anomaly_backbones.data.prepare import load_prepared, read_samples
from anomaly_backbones.features import FeatureSet, FeatureWriter
from anomaly_backbones.methods import get_method
from anomaly_backbones.metrics import roc_auc
from anomaly_backbones.pipeline.config import load_params, resolve
from anomaly_backbones.files import read_json

FEATURES, PREPARED = Path("data/features"), Path("data/prepared")


def to_float16(src: Path, dst: Path) -> None:
    """Copy one category's cache through FeatureWriter with dtype float16, split by split."""
    meta = read_json(src / "meta.json")
    w = FeatureWriter(dst, {k: v for k, v in meta.items() if not k.startswith("n_") and k != "dtype"}, "float16")
    for split in ("train", "test"):
        fs = FeatureSet(src, split)
        w.open(split, len(fs), {layer: fs.shape(layer) for layer in fs.layers})
        for _, batch in fs.batches(batch_size=64):
            w.write(split, batch)
    w.close()


def cache_mb(d: Path) -> float:
    return sum(f.stat().st_size for f in d.rglob("*.npy")) / 2**20


def score(method: str, params: dict, cat_dir: Path, name: str) -> tuple[float, float, float]:
    train = FeatureSet(cat_dir, "train")
    r = resolve(params, shapes=train.meta["shapes"])
    m = get_method(method)(r[method], r["layers"], params["seed"])
    t = time.perf_counter()
    m.fit(train)
    scores, maps = m.predict(FeatureSet(cat_dir, "test"))
    labels = np.array([int(r["label"]) for r in read_samples(PREPARED / name) if r["split"] == "test"])
    masks = load_prepared(PREPARED / name, "test_masks", mmap=False)
    return roc_auc(labels, scores), roc_auc(masks, maps), time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="padim")
    a = ap.parse_args()
    p = load_params()
    stats = read_json(FEATURES / "stats.json")
    if stats.get("dtype", "float32") != "float32":
        raise SystemExit("the workspace cache is not float32: run `dvc repro` with extract.dtype=float32 first")
    print(f"backbone {stats['backbone']} ({stats['init']}), layers {','.join(stats['layers'])}, "
          f"dataset {p['data']['dataset']}\n")
    print("| method | category | cache MB f32 -> f16 | image ROC-AUC f32 / f16 (diff) | "
          "pixel ROC-AUC f32 / f16 (diff) | fit+predict s f32 / f16 |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(stats["categories"]):
            half = Path(tmp) / name
            to_float16(FEATURES / name, half)
            for method in a.methods.split(","):
                i32, p32, t32 = score(method, p, FEATURES / name, name)
                i16, p16, t16 = score(method, p, half, name)
                worst = max(worst, abs(i16 - i32), abs(p16 - p32))
                print(f"| {method} | {name} | {cache_mb(FEATURES / name):.0f} -> {cache_mb(half):.0f} | "
                      f"{i32:.4f} / {i16:.4f} ({i16 - i32:+.5f}) | {p32:.4f} / {p16:.4f} ({p16 - p32:+.5f}) | "
                      f"{t32:.1f} / {t16:.1f} |", flush=True)
            for f in half.rglob("*.npy"):
                f.unlink()
    print(f"\nlargest |diff|: {worst:.5f} ({'within' if worst <= 0.001 else 'ABOVE'} the 0.001 bar)")


if __name__ == "__main__":
    main()
