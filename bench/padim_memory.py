"""PaDiM's heaviest setting in the study: WideResNet-50-2 layer1-3 (1792 channels), d=550,
56x56 grid, 1,000 training images. Prints fit time, the measured peak RSS and PaDiM's own
estimate of it (what the memory guard checks; the reference implementation asks for ~52 GB).

The feature cache is filled from a seeded generator with the real shapes (layer1 256x56x56,
layer2 512x28x28, layer3 1024x14x14): PaDiM's memory depends on shapes, not values, and
this skips ~5 minutes of forward passes. For real features run the pipeline with
`-S backbone=wide_resnet50_2 -S init=random` and read peak_mb in metrics/speed.json.

    python bench/padim_memory.py [--n 1000] [--d 550] [--cache /tmp/wrn_cache]
"""
import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from anomaly_backbones.features import FeatureSet, FeatureWriter
from anomaly_backbones.methods.padim import PaDiM
from anomaly_backbones.resources import peak_rss_mb

SHAPES = {"layer1": (256, 56, 56), "layer2": (512, 28, 28), "layer3": (1024, 14, 14)}


def fill(cache: Path, n: int, n_test: int, dtype: str, shapes: dict = SHAPES, backbone: str = "wide_resnet50_2"):
    """A feature cache of seeded standard-normal values with the given layer shapes."""
    w = FeatureWriter(cache, {"backbone": backbone, "init": "random", "layers": list(shapes),
                              "image_size": 224, "ms_per_image": 0.0}, dtype)
    rng = np.random.default_rng(1024)
    for split, count in (("train", n), ("test", n_test)):
        w.open(split, count, shapes)
        for s in range(0, count, 50):
            b = min(50, count - s)
            w.write(split, {k: rng.standard_normal((b, *shp), dtype=np.float32) for k, shp in shapes.items()})
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=100)
    ap.add_argument("--d", type=int, default=550)
    ap.add_argument("--cache", default="/tmp/wrn_cache")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--fill-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    cache = Path(a.cache)
    if a.fill_only:
        shutil.rmtree(cache, ignore_errors=True)
        return fill(cache, a.n, a.n_test, a.dtype)
    if not (cache / "meta.json").exists():  # filled by a child process, as the extract stage would be
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--fill-only", *sys.argv[1:]], check=True)
        print(f"cache filled in {time.perf_counter() - t:.0f} s")
    before = peak_rss_mb() / 1024
    m = PaDiM({"d": a.d}, list(SHAPES), seed=1024)
    t = time.perf_counter()
    m.fit(FeatureSet(cache, "train"))
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    scores, _ = m.predict(FeatureSet(cache, "test"))
    pred_s = time.perf_counter() - t
    peak = peak_rss_mb() / 1024
    est = max(m.fit_bytes(a.n), m.predict_bytes(a.n_test, 224)) / 2**30
    print(f"| setting | fit s | predict s ({a.n_test} images) | peak RSS GiB | estimate GiB | estimate / peak |")
    print("|---|---|---|---|---|---|")
    print(f"| WRN-50-2 layer1-3, d={a.d}, 56x56, n={a.n} | {fit_s:.1f} | {pred_s:.1f} | {peak:.2f} "
          f"(before fit {before:.2f}) | {est:.2f} | {est / peak:.2f} |")


if __name__ == "__main__":
    main()
