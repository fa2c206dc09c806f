"""PaDiM's heaviest settings in the study, fit and scored in its one pass (no model held):
WideResNet-50-2 layer1-3 (1792 channels), d=550, 56x56 grid, 1,000 training images (`--preset
wrn`, the default); densenet161 denseblock1-3 (3264 channels), d=1000, and regnet_y_32gf
block1-3 (2320 channels), d=700, both on the 56x56 grid at MVTec AD's largest category (391
training images, hazelnut; 167 test images, pill: `--preset densenet161 | regnet_y_32gf`). Prints
the time of the pass, the measured peak RSS, PaDiM's own estimate of it (what the memory guard
checks) and the size of the deployable model (every inverse, what the latency stage exports).

The feature cache is filled from a seeded generator with the real shapes (layer1 256x56x56,
layer2 512x28x28, layer3 1024x14x14): PaDiM's memory depends on shapes, not values, and
this skips ~5 minutes of forward passes. For real features run the pipeline with
`-S backbone=wide_resnet50_2 -S init=random` and read peak_mb in metrics/speed.json.

    python bench/padim_memory.py [--preset wrn|densenet161|regnet_y_32gf] [--n N] [--n-test N] [--d D]
        [--cache /tmp/wrn_cache] [--dtype float16|float32]
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
PRESETS = {   # name: (backbone, layer shapes, n train, n test, d)
    "wrn": ("wide_resnet50_2", SHAPES, 1000, 100, 550),
    "densenet161": ("densenet161", {"features.denseblock1": (384, 56, 56), "features.denseblock2": (768, 28, 28),
                                    "features.denseblock3": (2112, 14, 14)}, 391, 167, 1000),
    "regnet_y_32gf": ("regnet_y_32gf", {"trunk_output.block1": (232, 56, 56), "trunk_output.block2": (696, 28, 28),
                                        "trunk_output.block3": (1392, 14, 14)}, 391, 167, 700),
}


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
    ap.add_argument("--preset", default="wrn", choices=list(PRESETS))
    ap.add_argument("--n", type=int)
    ap.add_argument("--n-test", type=int)
    ap.add_argument("--d", type=int)
    ap.add_argument("--cache")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--fill-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    backbone, shapes, n, n_test, d = PRESETS[a.preset]
    a.n, a.n_test, a.d = a.n or n, a.n_test or n_test, a.d or d
    cache = Path(a.cache or f"/tmp/{a.preset}_cache")
    if a.fill_only:
        shutil.rmtree(cache, ignore_errors=True)
        return fill(cache, a.n, a.n_test, a.dtype, shapes, backbone)
    if not (cache / "meta.json").exists():  # filled by a child process, as the extract stage would be
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--fill-only", *sys.argv[1:]], check=True)
        print(f"cache filled in {time.perf_counter() - t:.0f} s")
    before = peak_rss_mb() / 1024
    m = PaDiM({"d": a.d}, list(shapes), seed=1024)
    t = time.perf_counter()
    m.fit(FeatureSet(cache, "train"))
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    scores, _ = m.predict(FeatureSet(cache, "test"))
    pred_s = time.perf_counter() - t
    peak = peak_rss_mb() / 1024
    est = max(m.fit_bytes(a.n), m.predict_bytes(a.n_test, 224)) / 2**30
    print(f"| setting | fit s | fit+predict pass s ({a.n_test} images) | peak RSS GiB | estimate GiB | "
          f"estimate / peak | model (every inverse) GiB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {backbone} {','.join(shapes)}, d={a.d}, {m.grid[0]}x{m.grid[1]}, n={a.n}, {a.dtype} cache | "
          f"{fit_s:.1f} | {pred_s:.1f} | {peak:.2f} (before fit {before:.2f}) | {est:.2f} | {est / peak:.2f} | "
          f"{m.model_bytes() / 2**30:.2f} |")


if __name__ == "__main__":
    main()
