"""CFLOW: invertibility, log-det against a numerical Jacobian, training, localisation, determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly_backbones.errors import UserError
from anomaly_backbones.methods.cflow import CFlow, ConditionalFlow, positional_encoding_2d

from conftest import CUDA, assert_device_agrees, make_cache


def scrambled_flow(dim: int, cond: int, blocks: int, seed: int = 0) -> ConditionalFlow:
    """A float64 flow with large random weights, so it is far from the identity."""
    g = torch.Generator().manual_seed(seed)
    flow = ConditionalFlow(dim, cond, blocks, 1.9, g).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 2.0)
    return flow


@pytest.mark.parametrize("dim", [5, 6])
def test_flow_is_invertible(dim, device):
    flow = scrambled_flow(dim, 8, 4).to(device)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(64, dim, generator=g, dtype=torch.float64) * 3).to(device)
    c = torch.randn(64, 8, generator=g, dtype=torch.float64).to(device)
    z, _ = flow(x, c)
    assert (z - x).abs().max() > 0.1  # not the identity
    np.testing.assert_allclose(flow.inverse(z, c).detach().cpu().numpy(), x.cpu().numpy(), atol=1e-9)


def test_logdet_matches_numerical_jacobian():
    flow = scrambled_flow(5, 4, 3, seed=2)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, generator=g, dtype=torch.float64)
    c = torch.randn(1, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        _, logdet = flow(x[None], c)
        eps = 1e-6
        jac = torch.stack([(flow((x + eps * e)[None], c)[0][0] - flow((x - eps * e)[None], c)[0][0]) / (2 * eps)
                           for e in torch.eye(5, dtype=torch.float64)], 1)
    sign, ref = torch.linalg.slogdet(jac)
    assert sign > 0
    assert float(logdet[0]) == pytest.approx(float(ref), abs=1e-6)


def test_positional_encoding():
    pe = positional_encoding_2d(8, 3, 5)  # half = 4: channels 0-3 encode x, 4-7 encode y
    assert pe.shape == (8, 3, 5)
    xs, ys = torch.arange(5.0), torch.arange(3.0)
    torch.testing.assert_close(pe[0, 1], torch.sin(xs))
    torch.testing.assert_close(pe[1, 2], torch.cos(xs))
    torch.testing.assert_close(pe[2, 0], torch.sin(xs / 100.0))
    torch.testing.assert_close(pe[4, :, 3], torch.sin(ys))
    torch.testing.assert_close(pe[7, :, 0], torch.cos(ys / 100.0))
    with pytest.raises(UserError):
        positional_encoding_2d(6, 2, 2)


SHAPES = {"l1": (4, 8, 8), "l2": (8, 4, 4)}
SMALL = {"epochs": 6, "fiber_batch_size": 128, "coupling_blocks": 4, "condition_vector": 16,
         "lr": 2e-3, "batch_size": 8}


def synthetic(tmp_path, seed=0, n_train=24, n_test=12):
    """Position-dependent normal features with correlated channels; anomalies shift a patch."""
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    mix = {k: rng.normal(size=(s[0], s[0])) / math.sqrt(s[0]) for k, s in SHAPES.items()}

    def draw(n):
        return {k: base[k] + 0.5 * np.einsum("dc,nchw->ndhw", mix[k], rng.normal(size=(n, *s)))
                for k, s in SHAPES.items()}

    train, test = draw(n_train), draw(n_test)
    labels = np.zeros(n_test, int)
    labels[n_test // 2:] = 1
    for i in range(n_test // 2, n_test):
        test["l1"][i, :, 2:4, 4:6] += 3.0
        test["l2"][i, :, 1, 2] += 3.0
    return make_cache(tmp_path, train, test, image_size=32), labels


def test_training_lowers_nll(tmp_path):
    (train, _), _ = synthetic(tmp_path)
    short = CFlow({**SMALL, "epochs": 1}, list(SHAPES))
    short.fit(train)
    long = CFlow(SMALL, list(SHAPES))
    long.fit(train)
    assert long.losses[-1] < long.losses[0]
    ll_short = short.log_likelihoods(train)
    ll_long = long.log_likelihoods(train)
    for name in SHAPES:
        assert ll_long[name].mean() > ll_short[name].mean()


def test_anomalous_patch_scores_higher_and_determinism(tmp_path):
    (train, test), labels = synthetic(tmp_path, seed=1)
    m = CFlow(SMALL, list(SHAPES), seed=1024)
    m.fit(train)
    scores, maps = m.predict(test)
    assert scores.shape == (12,) and maps.shape == (12, 32, 32) and maps.dtype == np.float32
    assert roc_auc_score(labels, scores) >= 0.95
    for i in range(6, 12):  # the shifted patch covers pixels [8, 16) x [16, 24)
        r, c = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        assert 6 <= r < 18 and 14 <= c < 26
    again = CFlow(SMALL, list(SHAPES), seed=1024)
    again.fit(train)
    s2, m2 = again.predict(test)
    assert np.array_equal(scores, s2) and np.array_equal(maps, m2)
    other = CFlow(SMALL, list(SHAPES), seed=5)
    other.fit(train)
    s3, _ = other.predict(test)
    assert not np.array_equal(scores, s3)


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_cflow_on_the_device_agrees_with_the_cpu(tmp_path, device):
    """The same initial flows and random fibres (drawn on the CPU); Adam steps on the GPU round
    differently, so after training scores agree to 1e-2, not bit for bit."""
    (train, test), labels = synthetic(tmp_path, seed=1)
    assert_device_agrees(lambda dev: CFlow({**SMALL, "epochs": 2}, list(SHAPES), seed=1024, device=dev),
                         train, test, labels, device, rtol=1e-2, atol=1e-3)


def test_bad_params():
    with pytest.raises(UserError):
        CFlow({"condition_vector": 130}, ["a"])
    with pytest.raises(UserError):
        CFlow({"epoch": 3}, ["a"])
    with pytest.raises(UserError):
        CFlow({"lr": 0}, ["a"])


def test_a_diverging_training_is_one_line_naming_the_layer_and_param(tmp_path, monkeypatch):
    """#29: a non-finite training loss (a diverging flow) ends fit with a UserError naming the
    backbone, the layer and the param that helps, not a NaN model or a traceback."""
    rng = np.random.default_rng(0)
    train, _ = make_cache(tmp_path / "c", {"a": rng.normal(size=(4, 8, 4, 4))}, {"a": rng.normal(size=(2, 8, 4, 4))})
    m = CFlow({"epochs": 1, "coupling_blocks": 2, "condition_vector": 8, "fibers_per_epoch": 32}, ["a"], 0)
    monkeypatch.setattr(torch.nn.functional, "logsigmoid", lambda x: x * float("nan"))
    with pytest.raises(UserError, match=r"diverged .* on test layer a .*`cflow.lr`"):
        m.fit(train)


def test_features_at_random_init_scale_are_standardized_not_scored_0_5(tmp_path):
    """#29: features 1,000 times larger (a random-init network's scale) made every image score the
    same (ROC-AUC 0.5, no error): exp(log p - max) underflowed everywhere but at one position.
    `standardize: auto` standardizes such a layer by its training channels, so the scaled set
    scores as well as the original; at pretrained scale nothing changes, bit for bit."""
    (train, test), labels = synthetic(tmp_path, seed=1)
    big = {split: {k: fs.array(k)[:] * 1e3 for k in SHAPES} for split, fs in (("train", train), ("test", test))}
    big_train, big_test = make_cache(tmp_path / "big", big["train"], big["test"], image_size=32)
    raw = CFlow({**SMALL, "standardize": False}, list(SHAPES), seed=1024)
    raw.fit(big_train)
    assert len(np.unique(raw.predict(big_test)[0])) == 1          # the failure, as anomalib's rule gives it
    auto = CFlow(SMALL, list(SHAPES), seed=1024)
    auto.fit(big_train)
    assert auto.standardized == list(SHAPES)
    assert roc_auc_score(labels, auto.predict(big_test)[0]) >= 0.95
    plain, off = CFlow(SMALL, list(SHAPES), seed=1024), CFlow({**SMALL, "standardize": False}, list(SHAPES), seed=1024)
    plain.fit(train)
    off.fit(train)
    assert plain.standardized == [] and np.array_equal(plain.predict(test)[0], off.predict(test)[0])
