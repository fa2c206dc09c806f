"""PatchCore: coreset selection (exact vs brute force, fast vs exact), reweighting, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_backbones.errors import UserError
from anomaly_backbones.methods.coreset import (coreset_size, covering_radius, greedy_batched, greedy_reference,
                                               sparse_random_projection)
from anomaly_backbones.methods.patchcore import PatchCore, nearest, reweighted_score

from conftest import CUDA, assert_device_agrees, make_cache


def brute_greedy(x: np.ndarray, m: int, start: int) -> np.ndarray:
    """Textbook k-center greedy in numpy float64: direct differences, first index on ties."""
    d = ((x - x[start]) ** 2).sum(1)
    d[start] = -1.0
    sel = [start]
    for _ in range(1, m):
        j = int(np.argmax(d))
        sel.append(j)
        d = np.minimum(d, ((x - x[j]) ** 2).sum(1))
        d[j] = -1.0
    return np.array(sel)


def blobs(n: int, d: int, seed: int, centers: int = 12) -> np.ndarray:
    """Clustered data of uneven density, like patch features (bulk plus rare patterns)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(scale=4.0, size=(centers, d))
    which = rng.choice(centers, size=n, p=np.arange(1, centers + 1) / (centers * (centers + 1) / 2))
    return c[which] + rng.normal(scale=rng.uniform(0.3, 1.5, size=(n, 1)), size=(n, d))


@pytest.mark.parametrize("n,d,m", [(600, 8, 60), (1500, 3, 300), (400, 16, 400)])
def test_exact_coreset_matches_brute_force(n, d, m, device):
    x = blobs(n, d, seed=n)
    ref = brute_greedy(x, m, start=5)
    xt = torch.from_numpy(x).to(device)  # float64 in, float64 arithmetic: no rounding ties
    assert greedy_reference(xt.cpu(), m, 5).tolist() == ref.tolist()
    for pool in (1, 7, 64, 4096):
        assert greedy_batched(xt, m, 5, pool=pool, precision="float32").tolist() == ref.tolist()


def test_exact_coreset_float32_matches_reference():
    x = torch.from_numpy(blobs(3000, 32, seed=3)).float()
    m = coreset_size(3000, 0.1)
    ref = greedy_reference(x, m, 11)
    got = greedy_batched(x, m, 11, pool=256, precision="float32")
    assert got.tolist() == ref.tolist()
    assert len(set(got.tolist())) == m


def test_fast_coreset_covering_radius_close_to_exact():
    x = torch.from_numpy(blobs(6000, 32, seed=4)).float()
    m = coreset_size(6000, 0.1)
    exact = greedy_batched(x, m, 0, precision="float32")
    fast = greedy_batched(x, m, 0, precision="bfloat16")
    assert len(set(fast.tolist())) == m
    r_exact, r_fast = covering_radius(x, exact), covering_radius(x, fast)
    assert r_fast <= 1.1 * r_exact
    # the greedy is 2-approximate, so any greedy-like pick stays well under twice exact
    overlap = len(set(exact.tolist()) & set(fast.tolist())) / m
    assert overlap > 0.5


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_coreset_in_place_centring_picks_the_same(precision):
    x = torch.from_numpy(blobs(3000, 16, seed=5)).float() + 7.0
    ref = greedy_batched(x, 300, 3, pool=128, precision=precision)
    y = x.clone()
    assert torch.equal(greedy_batched(y, 300, 3, pool=128, precision=precision, copy=False), ref)
    assert torch.equal(y, x - x.mean(0))  # copy=False: the caller's tensor is centred


def test_coreset_size_and_projection():
    assert coreset_size(596624, 0.1) == 59662
    assert coreset_size(5, 0.01) == 1
    assert coreset_size(5, 1.0) == 5
    p = sparse_random_projection(400, 128, seed=1)
    assert p.shape == (400, 128)
    assert torch.equal(p, sparse_random_projection(400, 128, seed=1))
    assert not torch.equal(p, sparse_random_projection(400, 128, seed=2))
    density = (p != 0).float().mean().item()
    assert abs(density - 1 / math.sqrt(400)) < 0.01
    x = torch.randn(50, 400)
    ratio = (x @ p).pow(2).sum(1) / x.pow(2).sum(1)  # squared norms kept in expectation
    assert abs(ratio.mean().item() - 1.0) < 0.1


def test_reweighting_by_hand(device):
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0]], device=device)
    patches = torch.tensor([[0.1, 0.0], [3.0, 0.0]], device=device)
    d2, nn_idx = nearest(patches, bank)
    dist = d2.sqrt()
    np.testing.assert_allclose(dist.cpu().numpy(), [0.1, 2.0], rtol=1e-5)
    assert nn_idx.tolist() == [0, 1]
    # s* = 2 at (3, 0); m* = (1, 0); its 3 nearest bank vectors: itself, (0, 0), (0, 2)
    # distances from the test patch to them: 2, 3, sqrt(13)
    w = 1 - math.exp(2) / (math.exp(2) + math.exp(3) + math.exp(math.sqrt(13)))
    got = reweighted_score(dist, nn_idx, patches, bank, neighbors=3)
    assert float(got) == pytest.approx(w * 2.0, rel=1e-5)
    assert float(reweighted_score(dist, nn_idx, patches, bank, neighbors=1)) == pytest.approx(2.0)
    # more neighbours than bank vectors: all 4 are used
    w4 = 1 - math.exp(2) / (math.exp(2) + math.exp(3) + math.exp(math.sqrt(13)) + math.exp(math.hypot(7, 10)))
    got = reweighted_score(dist, nn_idx, patches, bank, neighbors=9)
    assert float(got) == pytest.approx(w4 * 2.0, rel=1e-5)


def test_nearest_is_chunked_exactly(device):
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(300, 6, generator=g), torch.randn(500, 6, generator=g)
    ref = torch.cdist(q.double(), b.double()).pow(2)
    for block in (2048, 70000, 1 << 24):
        d2, idx = nearest(q.to(device), b.to(device), block_elems=block)
        assert d2.device == idx.device == q.to(device).device
        d2, idx = d2.cpu(), idx.cpu()
        np.testing.assert_allclose(d2.numpy(), ref.min(1).values.numpy(), rtol=1e-4, atol=1e-4)
        assert idx.tolist() == ref.argmin(1).tolist()


def test_layers_auto():
    def layers(spec, top):
        return PatchCore({"layers": spec}, top).layers
    assert layers("auto", ["blocks.1", "blocks.2", "blocks.4"]) == ["blocks.2", "blocks.4"]
    assert layers("auto", ["a", "b"]) == ["a", "b"]
    assert layers(["b"], ["a", "b", "c"]) == ["b"]
    assert PatchCore.cached_layers({"layers": "auto"}, ["a", "b", "c"]) == ["b", "c"]
    with pytest.raises(UserError):
        layers([], ["a"])
    with pytest.raises(UserError):
        PatchCore({"coreset": "approx"}, ["a"])
    with pytest.raises(UserError):
        PatchCore({"coreset_ratio": 0}, ["a"])
    with pytest.raises(UserError):
        PatchCore({"ratio": 0.1}, ["a"])


SHAPES = {"l1": (8, 8, 8), "l2": (24, 8, 8), "l3": (48, 4, 4)}


def synthetic(tmp_path, seed=0, n_train=24, n_test=16):
    """Normal features ~ N(0,1) plus a fixed spatial pattern; anomalies shift a 2x2 patch."""
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    train = {k: base[k] + 0.5 * rng.normal(size=(n_train, *s)) for k, s in SHAPES.items()}
    test = {k: base[k] + 0.5 * rng.normal(size=(n_test, *s)) for k, s in SHAPES.items()}
    labels = np.zeros(n_test, int)
    labels[n_test // 2:] = 1
    spots = []
    for i in range(n_test // 2, n_test):
        r, c = rng.integers(1, 6, size=2)
        test["l2"][i, :, r:r + 2, c:c + 2] += 2.0
        test["l3"][i, :, r // 2, c // 2] += 2.0
        spots.append((i, r, c))
    return make_cache(tmp_path, train, test, image_size=32), labels, spots


def test_end_to_end_exact_vs_fast(tmp_path):
    (train, test), labels, spots = synthetic(tmp_path)
    out = {}
    for mode in ("exact", "fast"):
        m = PatchCore({"coreset": mode, "coreset_ratio": 0.1, "projection_dim": 16}, list(SHAPES))
        assert m.layers == ["l2", "l3"]
        m.fit(train)
        assert m.bank.shape == (coreset_size(24 * 64, 0.1), 72)
        scores, maps = m.predict(test)
        assert scores.shape == (16,) and maps.shape == (16, 32, 32) and maps.dtype == np.float32
        _, grid = m.grid_scores(test)
        for i, r, c in spots:  # the shifted patch holds the highest patch score
            rr, cc = np.unravel_index(np.argmax(grid[i]), grid[i].shape)
            assert r - 1 <= rr <= r + 2 and c - 1 <= cc <= c + 2
        out[mode] = roc_auc_score(labels, scores)
    assert out["exact"] >= 0.95
    assert abs(out["fast"] - out["exact"]) <= 0.05


def test_dim_pooling_and_determinism(tmp_path):
    (train, test), _, _ = synthetic(tmp_path, seed=1, n_train=12, n_test=4)
    params = {"coreset_ratio": 0.25, "dim": 32, "projection_dim": 8}
    a = PatchCore(params, list(SHAPES), seed=1024)
    a.fit(train)
    assert a.bank.shape[1] == 32  # 72 channels pooled to 32
    b = PatchCore(params, list(SHAPES), seed=1024)
    b.fit(train)
    assert torch.equal(a.coreset_idx, b.coreset_idx) and torch.equal(a.bank, b.bank)
    sa, ma = a.predict(test)
    sb, mb = b.predict(test)
    assert np.array_equal(sa, sb) and np.array_equal(ma, mb)
    c = PatchCore(params, list(SHAPES), seed=7)
    c.fit(train)
    assert not torch.equal(a.coreset_idx, c.coreset_idx)


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_patchcore_on_the_device_agrees_with_the_cpu(tmp_path, device):
    """The whole bank (coreset_ratio 1): the same distances whatever order the coreset took;
    then the default ratio, fast coreset: a GPU's GEMMs may pick other, equally far centers, so
    only the ROC-AUC and the start patch (drawn on the CPU from the seed) must agree."""
    (train, test), labels, _ = synthetic(tmp_path)
    assert_device_agrees(lambda dev: PatchCore({"coreset_ratio": 1.0, "projection_dim": 16}, list(SHAPES), device=dev),
                         train, test, labels, device)
    out = []
    for dev in ("cpu", device):
        m = PatchCore({"coreset_ratio": 0.1, "projection_dim": 16}, list(SHAPES), device=dev)
        m.fit(train)
        assert m.bank.device == torch.device(dev) and m.coreset_idx.device.type == "cpu"
        out.append((m.coreset_idx[0].item(), roc_auc_score(labels, m.predict(test)[0])))
    assert out[0][0] == out[1][0] and abs(out[0][1] - out[1][1]) <= 1e-3


def test_fast_coreset_is_exact_without_native_bfloat16(tmp_path, monkeypatch, capsys):
    """Where the CPU has no bfloat16 matmul (emulated: ~20x slower than float32), "fast" runs
    exact's float32 updates: the same centres, said in one note; with it, bfloat16."""
    import anomaly_backbones.methods.patchcore as pc

    (train, _), _, _ = synthetic(tmp_path, seed=2, n_train=12, n_test=4)
    params = {"coreset_ratio": 0.1, "projection_dim": 16}
    exact = PatchCore({**params, "coreset": "exact"}, list(SHAPES))
    exact.fit(train)
    monkeypatch.setattr(pc, "native_bf16_cpu", lambda: False)
    fast = PatchCore({**params, "coreset": "fast"}, list(SHAPES))
    assert fast.coreset_precision() == "float32" and exact.coreset_precision() == "float32"
    capsys.readouterr()
    fast.fit(train)
    assert "runs in float32" in capsys.readouterr().out
    assert torch.equal(fast.coreset_idx, exact.coreset_idx)
    shapes = train.shapes(fast.layers)
    assert fast.fit_bytes(shapes, 12) == exact.fit_bytes(shapes, 12)
    monkeypatch.setattr(pc, "native_bf16_cpu", lambda: True)
    assert fast.coreset_precision() == "bfloat16" and fast.fit_bytes(shapes, 10**5) > exact.fit_bytes(shapes, 10**5)
    assert exact.coreset_precision() == "float32"
