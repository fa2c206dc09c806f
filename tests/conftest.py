"""Shared fixtures: tiny feature caches and generated MVTec-layout trees; the devices the method
tests run on (the CPU, and a GPU where torch sees one) and the CPU-vs-device agreement check."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_backbones.features import FeatureSet, FeatureWriter

ROOT = Path(__file__).resolve().parents[1]
MTD_ROOT = Path(os.environ.get("MTD_ROOT", ROOT.parent / "shared" / "datasets" / "magnetic_tile"))

NEEDS_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NEEDS_GPU)]
CUDA = [pytest.param("cuda", marks=NEEDS_GPU)]   # the CPU-vs-device agreement tests: a GPU only


@pytest.fixture(scope="module")
def one_torch_thread():
    """The suite shares a small CPU: one intra-op thread for a module's tests (restored after).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a method test runs on (`@pytest.mark.parametrize("device", CUDA, indirect=True)`
    for a GPU only), made deterministic as the stages make it (TF32 off)."""
    from anomaly_backbones.device import resolve_device, use_device

    dev = resolve_device(request.param)
    use_device(dev)
    return dev


def labelled_cache(root: Path, n_train: int = 16, n_good: int = 6, n_bad: int = 6, seed: int = 0,
                   image_size: int = 32):
    """A two-layer cache ("a": 6 x 8 x 8, "b": 5 x 4 x 4) whose test images n_good: carry a bright
    patch at a random place; returns (train, test FeatureSets, (N_test,) 0/1 labels)."""
    rng = np.random.default_rng(seed)
    n_test = n_good + n_bad
    a = rng.normal(size=(n_train + n_test, 6, 8, 8)).astype(np.float32)
    b = rng.normal(size=(n_train + n_test, 5, 4, 4)).astype(np.float32)
    labels = np.r_[np.zeros(n_good), np.ones(n_bad)].astype(np.int64)
    for i in range(n_bad):
        y, x = rng.integers(0, 4, 2)
        b[n_train + n_good + i, :, y, x] += 3.0 + i * 0.5
        a[n_train + n_good + i, :, 2 * y:2 * y + 2, 2 * x:2 * x + 2] += 2.0
    train, test = make_cache(root, {"a": a[:n_train], "b": b[:n_train]}, {"a": a[n_train:], "b": b[n_train:]},
                             image_size=image_size)
    return train, test, labels


def assert_device_agrees(make, train, test, labels, device, rtol: float = 1e-3, atol: float = 1e-4,
                         maps: bool = True):
    """make(device) -> a method; fit and predict on the CPU and on `device`: the image ROC-AUCs
    within 1e-3, scores (and maps) close (GPU kernels round differently, never bit for bit)."""
    from anomaly_backbones.metrics import roc_auc

    out = []
    for dev in (torch.device("cpu"), device):
        m = make(dev)
        m.fit(train)
        out.append(m.predict(test))
    (s_cpu, m_cpu), (s_dev, m_dev) = out
    assert abs(roc_auc(labels, s_cpu) - roc_auc(labels, s_dev)) <= 1e-3
    np.testing.assert_allclose(s_dev, s_cpu, rtol=rtol, atol=atol)
    if maps:
        np.testing.assert_allclose(m_dev, m_cpu, rtol=rtol, atol=atol * float(np.abs(m_cpu).max()))
    return out


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
