"""SPADE: a hand-computed example, a brute-force comparison of the chunked kNN, an end-to-end run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_backbones.errors import UserError
from anomaly_backbones.methods import spade
from anomaly_backbones.methods.spade import SPADE

from conftest import CUDA, assert_device_agrees, labelled_cache, make_cache


def hand_cache(tmp_path):
    # layer a: 1 channel 2x2; layer b: 1 channel 1x1 (the deepest, used for the image score)
    a_train = np.array([[[0, 0], [0, 0]], [[1, 2], [3, 4]], [[9, 9], [9, 9]]], float)[:, None]
    b_train = np.array([0, 3, 10], float).reshape(3, 1, 1, 1)
    a_test = np.array([[[0, 4], [1, 8]]], float)[:, None]
    b_test = np.array([2], float).reshape(1, 1, 1, 1)
    return make_cache(tmp_path, {"a": a_train, "b": b_train}, {"a": a_test, "b": b_test}, image_size=32)


def test_hand_example_kappa1(tmp_path, device):
    train, test = hand_cache(tmp_path)
    m = SPADE({"k": 2, "kappa": 1}, ["a", "b"], seed=1024, device=device)
    m.fit(train)
    scores, grid = m.grid_scores(test)
    # pooled b: test 2 vs train 0, 3, 10 -> squared 4, 1, 64; K=2 nearest: 1 and 4
    assert scores == pytest.approx([2.5])
    # gallery (a, b) of images 0 and 1: (0,0)x4, (1,3), (2,3), (3,3), (4,3); test (0,2) (4,2) (1,2) (8,2)
    expected = [[math.sqrt(2), 1.0], [1.0, math.sqrt(17)]]
    np.testing.assert_allclose(grid[0], expected, rtol=1e-5)


def test_hand_example_kappa2_and_k_clipped(tmp_path):
    train, test = hand_cache(tmp_path)
    m = SPADE({"k": 2, "kappa": 2}, ["a", "b"])
    m.fit(train)
    _, grid = m.grid_scores(test)
    r2 = math.sqrt(2)
    expected = [[(r2 + 2) / 2, (1 + r2) / 2], [(1 + r2) / 2, (math.sqrt(17) + math.sqrt(26)) / 2]]
    np.testing.assert_allclose(grid[0], expected, rtol=1e-5)
    # K larger than the training set is clipped to 3: mean of 4, 1, 64
    m = SPADE({"k": 50, "kappa": 1}, ["a", "b"])
    m.fit(train)
    scores, maps = m.predict(test)
    assert scores == pytest.approx([23.0])
    assert maps.shape == (1, 32, 32) and maps.dtype == np.float32


def brute_force(train, test, layers, k, kappa):
    """numpy float64 reference: full pairwise distances, no chunking."""
    sizes = {name: train[name].shape[2] * train[name].shape[3] for name in layers}
    deep = [name for name in layers if sizes[name] == min(sizes.values())][-1]
    tv = train[deep].mean((2, 3))
    qv = test[deep].mean((2, 3))
    d2 = ((qv[:, None] - tv[None]) ** 2).sum(-1)
    nn_idx = np.argsort(d2, 1, kind="stable")[:, :k]
    scores = np.take_along_axis(d2, nn_idx, 1).mean(1)
    big = max(train[name].shape[2] for name in layers)

    def concat(arrs):  # integer-factor nearest upsampling == repeat
        ups = [np.repeat(np.repeat(a, big // a.shape[2], 2), big // a.shape[3], 3) for a in arrs]
        c = np.concatenate(ups, 1)
        return c.transpose(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1])

    gal_all = concat([train[name] for name in layers])
    q_all = concat([test[name] for name in layers])
    grids = []
    for i in range(len(qv)):
        gallery = gal_all[nn_idx[i]].reshape(-1, gal_all.shape[-1])
        dist = np.sqrt(((q_all[i][:, None] - gallery[None]) ** 2).sum(-1))
        grids.append(np.sort(dist, 1)[:, :kappa].mean(1).reshape(big, big))
    return scores, np.stack(grids)


@pytest.mark.parametrize("kappa", [1, 3])
def test_chunked_matches_brute_force(tmp_path, kappa, device):
    rng = np.random.default_rng(0)
    layers = ["l1", "l2", "l3"]
    shape = {"l1": (4, 8, 8), "l2": (6, 4, 4), "l3": (8, 2, 2)}
    train = {n: rng.normal(size=(12, *s)) for n, s in shape.items()}
    test = {n: rng.normal(size=(4, *s)) for n, s in shape.items()}
    fs_train, fs_test = make_cache(tmp_path, train, test)
    ref_scores, ref_grid = brute_force(train, test, layers, k=5, kappa=kappa)
    grids = []
    for chunk_mb, group in ((1e-6, 1), (0.015, 2), (1000.0, 5)):  # gallery images built at once
        m = SPADE({"k": 5, "kappa": kappa, "chunk_mb": chunk_mb, "batch_size": 3}, layers, device=device)
        m.fit(fs_train)
        assert min(m._group({n: fs_train.shape(n) for n in layers}, 4), 5) == group
        scores, grid = m.grid_scores(fs_test)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)
        np.testing.assert_allclose(grid, ref_grid, rtol=1e-4, atol=1e-4)
        grids.append(grid)
    # the budget changes how the gallery is built, never the values
    assert all(np.array_equal(grids[0], g) for g in grids[1:])


@pytest.mark.parametrize("kappa", [1, 4, 50])
def test_knn_over_blocks_matches_brute_force(kappa, device):
    """Running top-kappa over uneven blocks; kappa beyond the gallery takes all of it."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(300, 12, generator=g)
    blocks = [torch.randn(n, 12, generator=g) for n in (7, 1, 33, 20)]
    whole = spade.knn_mean_distance(q.to(device), [torch.cat(blocks).to(device)], kappa)
    split = spade.knn_mean_distance(q.to(device), [b.to(device) for b in blocks], kappa)
    assert whole.device == split.device == q.to(device).device
    gallery = torch.cat(blocks).double()
    ref = torch.cdist(q.double(), gallery).sort(1).values[:, :kappa].mean(1)
    np.testing.assert_allclose(whole.cpu().numpy(), ref.numpy(), rtol=1e-4)
    np.testing.assert_allclose(split.cpu().numpy(), ref.numpy(), rtol=1e-4)


def test_anomalous_patch_scores_highest(tmp_path):
    rng = np.random.default_rng(1)
    shape = {"l1": (8, 8, 8), "l2": (16, 4, 4)}
    train = {n: rng.normal(size=(30, *s)) for n, s in shape.items()}
    test = {n: rng.normal(size=(10, *s)) for n, s in shape.items()}
    labels = np.array([0] * 5 + [1] * 5)
    for i in range(5, 10):  # a shifted 2x2 patch (1x1 at l2) in the top-left quarter
        test["l1"][i, :, 2:4, 2:4] += 4.0
        test["l2"][i, :, 1, 1] += 4.0
    fs_train, fs_test = make_cache(tmp_path, train, test, image_size=32)
    m = SPADE({"k": 5, "kappa": 1}, list(shape))
    m.fit(fs_train)
    scores, maps = m.predict(fs_test)
    _, grid = m.grid_scores(fs_test)
    assert maps.shape == (10, 32, 32) and maps.dtype == np.float32
    for i in range(5, 10):
        r, c = np.unravel_index(np.argmax(grid[i]), grid[i].shape)
        assert 2 <= r < 4 and 2 <= c < 4
        r, c = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        assert 6 <= r < 18 and 6 <= c < 18
    # the image score sees only the pooled deepest layer; the shift still moves the mean
    assert roc_auc_score(labels, scores) >= 0.9
    assert roc_auc_score(labels, maps.reshape(10, -1).max(1)) == 1.0


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_spade_on_the_device_agrees_with_the_cpu(tmp_path, device):
    train, test, labels = labelled_cache(tmp_path)
    assert_device_agrees(lambda dev: SPADE({"k": 4, "kappa": 3, "batch_size": 5}, ["a", "b"], device=dev),
                         train, test, labels, device)


def test_bad_params():
    with pytest.raises(UserError):
        SPADE({"k": 0}, ["a"])
    with pytest.raises(UserError):
        SPADE({"kk": 3}, ["a"])
