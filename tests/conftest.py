"""Shared fixtures: tiny feature caches and generated MVTec-layout trees."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from anomaly_backbones.features import FeatureWriter

ROOT = Path(__file__).resolve().parents[1]
MTD_ROOT = Path(os.environ.get("MTD_ROOT", ROOT.parent / "shared" / "datasets" / "magnetic_tile"))


def write_cache(path: Path, layers: dict[str, tuple[np.ndarray, np.ndarray]], image_size: int = 32,
                backbone: str = "test") -> Path:
    """layers: {name: (train (N,C,H,W), test (M,C,H,W))} -> a FeatureSet folder."""
    w = FeatureWriter(path, {"backbone": backbone, "init": "random", "layers": list(layers),
                             "image_size": image_size, "ms_per_image": 1.0})
    for i, split in enumerate(("train", "test")):
        arrays = {k: v[i] for k, v in layers.items()}
        w.open(split, len(next(iter(arrays.values()))), {k: v.shape[1:] for k, v in arrays.items()})
        w.write(split, arrays)
    w.close()
    return path


@pytest.fixture
def synthetic_tree(tmp_path):
    """A small generated MVTec-layout tree (2 categories)."""
    from anomaly_backbones.data.synthetic import generate

    root = tmp_path / "synthetic"
    generate(root, seed=1024, categories=("disc", "weave"), n_train=6, n_good_test=3, n_defect_test=2, size=96)
    return root
