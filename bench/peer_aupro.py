"""AU-PRO against anomalib's AUPRO on the same maps (the golden values of tests/test_pro_limits.py).

Runs in a scratch environment with anomalib (never the project's):
    PEER=$(mktemp -d)/peer; python3 -m venv $PEER && $PEER/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib
    $PEER/bin/python bench/peer_aupro.py
Prints anomalib's AUPRO at fpr_limit 0.3 and 0.05 for each case of `cases()`; the test recomputes
the project's aupro on the same maps (the generator below is numpy only, shared by both).
"""
from __future__ import annotations

import numpy as np


def seeded_masks(rng, n: int, side: int, defect_free, margin: int, largest: int) -> np.ndarray:
    """(n, side, side) bool: image i is defect-free where defect_free(i), else it has 1 + i % 3
    rectangles of 2 to `largest` pixels a side at corners in [0, side - margin), drawn from rng
    (the golden values depend on this order)."""
    masks = np.zeros((n, side, side), bool)
    for i in range(n):
        if defect_free(i):
            continue
        for _ in range(1 + i % 3):
            y, x = rng.integers(0, side - margin, 2)
            h, w = rng.integers(2, largest + 1, 2)
            masks[i, y:y + h, x:x + w] = True
    return masks


def cases():
    """(name, masks (N, H, W) bool, maps (N, H, W) float32): seeded maps where defects score higher
    on average, several regions per image of different sizes, defect-free images, ties."""
    out = []
    for seed, (n, side) in enumerate([(6, 24), (8, 32), (5, 40)]):
        rng = np.random.default_rng(1000 + seed)
        masks = seeded_masks(rng, n, side, lambda i: i % 3 == 2, 6, 6)
        maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
        if seed == 1:
            maps = np.round(maps * 4) / 4   # ties across classes
        out.append((f"case{seed}", masks, maps.astype(np.float32)))
    return out


def main():
    import torch
    from anomalib.metrics.aupro import _AUPRO   # the torchmetrics metric, without anomalib's batch fields

    for name, masks, maps in cases():
        vals = []
        for limit in (0.3, 0.05):
            m = _AUPRO(fpr_limit=limit)
            m.update(torch.from_numpy(maps), torch.from_numpy(masks).int())
            vals.append(float(m.compute()))
        print(f"{name}: anomalib AUPRO fpr_limit=0.3 {vals[0]:.8f}, fpr_limit=0.05 {vals[1]:.8f}")


if __name__ == "__main__":
    main()
