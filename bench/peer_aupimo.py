"""AUPIMO against anomalib's AUPIMO on the same maps (the golden values of tests/test_aupimo.py).

Runs in a scratch environment with anomalib (never the project's), as bench/peer_aupro.py:
    /tmp/field_peer/venv/bin/python bench/peer_aupimo.py      # or any venv with `pip install anomalib`
Prints, for each case of `cases()`, anomalib 2.7's per-image AUPIMO of the anomalous images and their
mean (_AUPIMO(num_thresholds, fpr_bounds), return_average=False / True), and the sha256 of
anomalib's thresholds (torch.linspace, float32 bytes), which the test compares with the project's
linspace_f32 on the same range. The test recomputes metrics.pimo on the same maps (the generator
below is numpy only, shared by both).

On a pipeline run's saved maps (float16 in outputs/<method>/<category>.npz), the mean AUPIMO per
category at the defaults, from anomalib and then from the project (docs/performance.md):
    /tmp/field_peer/venv/bin/python bench/peer_aupimo.py --run RUN_DIR
    PYTHONPATH=src .venv/bin/python bench/peer_aupimo.py --run RUN_DIR --project
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from peer_aupro import seeded_masks   # the same mask generator (bench/ is on the path as the script's folder)

DEFAULTS = (300_000, (1e-5, 1e-4))   # anomalib's AUPIMO defaults


def cases():
    """(name, masks (N, H, W) bool, maps (N, H, W) float32, num_thresholds, fpr_bounds): seeded maps
    where defects score higher on average; enough normal pixels (>= 1e5) for the default bounds;
    defect-free images; one case with ties (maps rounded to 1/32), one with small K and wide bounds."""
    out = []
    for seed, (n, side, k, bounds) in enumerate([(10, 160, *DEFAULTS), (12, 144, *DEFAULTS),
                                                  (8, 64, 5_000, (1e-3, 1e-2))]):
        rng = np.random.default_rng(2000 + seed)
        masks = seeded_masks(rng, n, side, lambda i: i % 2 == 1, 12, 11)   # odd images defect-free
        maps = rng.normal(size=masks.shape) + (3.0 + 2.0 * rng.random((n, 1, 1))) * masks
        if seed == 1:
            maps = np.round(maps * 32) / 32   # ties: many pixels on one score
        out.append((f"case{seed}", masks, maps.astype(np.float32), k, bounds))
    return out


def saved_maps(run: Path, method: str):
    """(category, masks (N, H, W) bool, maps (N, H, W) float32) of a pipeline run's fit@<method>:
    the float16 maps of outputs/<method>/<category>.npz and data/prepared/<category>/test_masks.npy."""
    for f in sorted((run / "outputs" / method).glob("*.npz")):
        maps = np.load(f)["maps"].astype(np.float32)
        masks = np.load(run / "data" / "prepared" / f.stem / "test_masks.npy").astype(bool)
        yield f.stem, masks, maps


def anomalib_aupimo(masks, maps, k, bounds):
    import torch
    from anomalib.metrics.pimo.pimo import _AUPIMO   # the torchmetrics metric, without anomalib's batch fields

    m = _AUPIMO(num_thresholds=k, fpr_bounds=bounds, return_average=False)
    m.update(torch.from_numpy(maps), torch.from_numpy(masks).int())
    return m.compute()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="a pipeline run's directory: its saved maps instead of the seeded cases")
    ap.add_argument("--method", default="padim")
    ap.add_argument("--project", action="store_true", help="the project's metrics.pimo instead of anomalib's")
    args = ap.parse_args()
    if args.run is not None:   # mean AUPIMO per category, default K and bounds
        if args.project:
            from anomaly_backbones.metrics import aupimo
            score = lambda masks, maps: aupimo(masks, maps)  # noqa: E731
        else:
            score = lambda masks, maps: float(np.nanmean(  # noqa: E731
                anomalib_aupimo(masks, maps, *DEFAULTS)[1].aupimos.numpy()))
        for name, masks, maps in saved_maps(args.run, args.method):
            who = "project" if args.project else "anomalib"
            print(f"{args.method} {name}: {who} mean AUPIMO {score(masks, maps):.12f}")
        return
    import anomalib
    import torch
    print(f"anomalib {anomalib.__version__}, torch {torch.__version__}")
    for name, masks, maps, k, bounds in cases():
        pimo, result = anomalib_aupimo(masks, maps, k, bounds)
        digest = hashlib.sha256(pimo.thresholds.numpy().astype("<f4").tobytes()).hexdigest()[:16]
        per_image = result.aupimos.numpy()
        mean = float(per_image[~np.isnan(per_image)].mean())
        print(f"{name}: K={k} bounds={bounds} points={result.num_thresholds} mean {mean:.10f} "
              f"thresholds sha256 {digest}")
        print("  per image: {" + ", ".join(f"{i}: {v:.10f}" for i, v in enumerate(per_image) if not np.isnan(v)) + "}")


if __name__ == "__main__":
    main()
