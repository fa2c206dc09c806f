"""Shared fixtures: tiny feature caches and generated MVTec-layout trees."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from anomaly_backbones.features import FeatureSet, FeatureWriter

ROOT = Path(__file__).resolve().parents[1]
MTD_ROOT = Path(os.environ.get("MTD_ROOT", ROOT.parent / "shared" / "datasets" / "magnetic_tile"))


def make_cache(root: Path, train: dict, test: dict, image_size: int = 32):
    """Write {layer: (N, C, H, W)} train/test arrays as a feature cache; return both FeatureSets."""
    w = FeatureWriter(root, {"backbone": "test", "init": "random", "layers": list(train),
                             "image_size": image_size, "ms_per_image": 1.0})
    for split, arrays in (("train", train), ("test", test)):
        n = next(iter(arrays.values())).shape[0]
        w.open(split, n, {k: v.shape[1:] for k, v in arrays.items()})
        w.write(split, {k: v.astype(np.float32) for k, v in arrays.items()})
    w.close()
    return FeatureSet(root, "train"), FeatureSet(root, "test")


@pytest.fixture
def synthetic_tree(tmp_path):
    """A small generated MVTec-layout tree (2 categories)."""
    from anomaly_backbones.data.synthetic import generate

    root = tmp_path / "synthetic"
    generate(root, seed=1024, categories=("disc", "weave"), n_train=6, n_good_test=3, n_defect_test=2, size=96)
    return root
