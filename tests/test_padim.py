import numpy as np
import pytest
import torch

from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet
from anomaly_backbones.methods.padim import PaDiM

from conftest import CUDA, assert_device_agrees, labelled_cache, make_cache


def _cache(tmp_path, n=12, m=5, seed=0, big=4, small=2):
    rng = np.random.default_rng(seed)
    l1 = (rng.normal(size=(n, 6, big, big)).astype(np.float32), rng.normal(size=(m, 6, big, big)).astype(np.float32))
    l2 = (rng.normal(size=(n, 5, small, small)).astype(np.float32),
          rng.normal(size=(m, 5, small, small)).astype(np.float32))
    l2[1][0, :, -1, -1] += 6.0  # an anomaly in test image 0, lower-right corner
    return make_cache(tmp_path / "c", {"a": l1[0], "b": l2[0]}, {"a": l1[1], "b": l2[1]}, image_size=16)[0].dir


def _brute_force(cache, layers, idx):
    """The study's definition, written plainly with numpy in float64."""
    def embed(split):
        fs = FeatureSet(cache, split)
        a = torch.from_numpy(np.array(fs.array("a")))
        b = torch.nn.functional.interpolate(torch.from_numpy(np.array(fs.array("b"))), size=a.shape[-2:],
                                            mode="nearest")
        e = torch.cat([a, b], 1).numpy().astype(np.float64)[:, idx]
        return e.reshape(e.shape[0], e.shape[1], -1)
    tr, te = embed("train"), embed("test")
    out = np.zeros((te.shape[0], tr.shape[2]))
    for p in range(tr.shape[2]):
        x = tr[:, :, p]
        cov = np.cov(x, rowvar=False) + 0.01 * np.eye(x.shape[1])
        inv = np.linalg.inv(cov)
        dlt = te[:, :, p] - x.mean(0)
        out[:, p] = np.sqrt(np.einsum("nd,de,ne->n", dlt, inv, dlt))
    side = int(round(tr.shape[2] ** 0.5))
    return out.reshape(-1, side, side)


@pytest.mark.parametrize("big,small", [(4, 2), (5, 3), (9, 4)])   # nearest upsampling by 2, and by 5/3, 9/4 (gathers)
@pytest.mark.parametrize("d", [11, 7])
@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])   # grid rows per chunk: the coarse layer's rows read in parts
def test_padim_matches_brute_force_definition(tmp_path, d, big, small, chunk_rows, device):
    cache = _cache(tmp_path, big=big, small=small)
    m = PaDiM({"d": d, "chunk_mb": chunk_rows * 12 * d * big * 4 / 2**20}, ["a", "b"], seed=1024, device=device)
    m.fit(FeatureSet(cache, "train"))
    got = m.grid_scores(FeatureSet(cache, "test"))[1]
    idx = np.concatenate([m.channels["a"], m.channels["b"] + 6])
    assert len(idx) == d and m.inv_cov.device == m.mean.device == torch.device(device)
    np.testing.assert_allclose(got, _brute_force(cache, ["a", "b"], idx), rtol=2e-4, atol=1e-4)


def test_padim_finds_the_anomaly_and_is_deterministic(tmp_path, device):
    cache = _cache(tmp_path)
    runs = []
    for _ in range(2):
        m = PaDiM({"d": 8}, ["a", "b"], seed=1024, device=device)
        m.fit(FeatureSet(cache, "train"))
        scores, maps = m.predict(FeatureSet(cache, "test"))
        runs.append((scores, maps))
    assert maps.shape == (5, 16, 16)
    assert scores.argmax() == 0
    row, col = np.unravel_index(maps[0].argmax(), maps[0].shape)
    assert row >= 8 and col >= 8   # the lower-right quadrant, where the anomaly is
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    other = PaDiM({"d": 8}, ["a", "b"], seed=1)
    other.fit(FeatureSet(cache, "train"))
    assert not all(np.array_equal(other.channels[k], m.channels[k]) for k in ("a", "b"))


@pytest.mark.parametrize("device", CUDA, indirect=True)
def test_padim_on_the_device_agrees_with_the_cpu(tmp_path, device):
    train, test, labels = labelled_cache(tmp_path)
    assert_device_agrees(lambda dev: PaDiM({"d": 9, "chunk_mb": 1e-3}, ["a", "b"], seed=3, device=dev),
                         train, test, labels, device)


def test_padim_rejects_d_above_feature_dim(tmp_path):
    cache = _cache(tmp_path)
    with pytest.raises(UserError, match="padim.d"):
        PaDiM({"d": 12}, ["a", "b"], seed=0).fit(FeatureSet(cache, "train"))


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_padim_nonfinite_features_are_an_error(tmp_path, split, bad, device):
    rng = np.random.default_rng(0)
    tr = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    te = rng.normal(size=(2, 3, 2, 2)).astype(np.float32)
    cache = make_cache(tmp_path / "c", {"a": tr}, {"a": te}, image_size=8)[0].dir
    np.lib.format.open_memmap(cache / split / "a.npy", mode="r+")[1, 2, 1, 0] = bad
    m = PaDiM({"d": 3}, ["a"], seed=0, device=device)
    with pytest.raises(UserError, match=f"features of .*{cache.name}.* NaN or Inf"):
        m.fit(FeatureSet(cache, "train"))
        m.predict(FeatureSet(cache, "test"))


def test_constant_features_and_fewer_images_than_d_are_regularized(tmp_path, device):
    """Zero variance and n < d leave only the 0.01*I term: finite distances, no crash."""
    tr = np.ones((3, 10, 2, 2), np.float32)
    te = np.ones((2, 10, 2, 2), np.float32)
    te[1] += 1.0
    cache = make_cache(tmp_path / "c", {"a": tr}, {"a": te}, image_size=8)[0].dir
    m = PaDiM({"d": 10}, ["a"], seed=0, device=device)
    m.fit(FeatureSet(cache, "train"))
    dist = m.grid_scores(FeatureSet(cache, "test"))[1]
    np.testing.assert_allclose(dist[0], 0.0, atol=1e-3)
    np.testing.assert_allclose(dist[1], np.sqrt(10 / 0.01), rtol=1e-4)


def test_wide_resnet_d550_estimate_fits_8_gib():
    """The study's heaviest PaDiM: WideResNet-50-2, d=550, 56x56 grid."""
    m = PaDiM({"d": 550}, ["layer1", "layer2", "layer3"], seed=0)
    m.grid, m.d = (56, 56), 550
    assert m.fit_bytes(1000) < 8 * 2**30 and m.predict_bytes(400, 224) < 8 * 2**30   # the pass: no model held
    assert 3.5 * 2**30 < m.model_bytes() < 8 * 2**30      # the deployable model: every inverse


def test_memory_estimates_cover_the_arrays_the_pass_holds(tmp_path):
    """The estimates against the arrays a real fit-and-score pass makes (their nbytes, measured):
    one training chunk's slice, means and inverses fit in fit_bytes; predict_bytes holds a test
    chunk's slice, the inverses of a test chunk and of a training chunk, and the maps it returns;
    model_bytes is the deployable model (`mean`, `inv_cov` once built), which the pass never holds.
    Peaks, with the process, are bench/memory.py's figures."""
    from anomaly_backbones.methods.common import Scratch
    from anomaly_backbones.resources import BASELINE_BYTES

    cache = _cache(tmp_path, n=12, m=5, big=9, small=4)
    train, test = FeatureSet(cache, "train"), FeatureSet(cache, "test")
    m = PaDiM({"d": 8, "chunk_mb": 0.01}, ["a", "b"], seed=0)   # 3 training rows, 4 test rows a chunk
    m.fit(train)
    assert len(m._row_chunks(12)) > 1 and m._row_chunks(5) != m._row_chunks(12)
    nbytes = lambda *ts: sum(t.numel() * t.element_size() for t in ts)   # noqa: E731
    r0, r1, mu, inv = next(m._gaussians())
    assert nbytes(m._rows(train, r0, r1, Scratch()), mu, inv) <= m.fit_bytes(12) - BASELINE_BYTES
    _, maps = m.predict(test)
    assert m._model is None   # the pass kept no model
    q0, q1 = m._row_chunks(5)[0]
    held = nbytes(m._rows(test, q0, q1, Scratch())) + 2 * nbytes(inv) * (q1 - q0) // (r1 - r0)
    assert held + maps.nbytes <= m.predict_bytes(5, 16) - BASELINE_BYTES
    assert nbytes(m.mean, m.inv_cov) == m.model_bytes()


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_random_init_scale_features_with_fewer_images_than_d_keep_the_regularizer(tmp_path, scale, device):
    """Random-init backbones give features of 1e2..1e4 (variances 1e4..1e8): float32 rounds the
    0.01*I away beside them and, with n < d, the covariance is singular (float32 Cholesky fails:
    issue #29's resnet101 traceback). The affected positions are redone in float64: the distances
    equal the float64 definition."""
    rng = np.random.default_rng(0)
    tr = (rng.normal(size=(10, 40, 3, 3)) * scale).astype(np.float32)
    te = (rng.normal(size=(3, 40, 3, 3)) * scale).astype(np.float32)
    cache = make_cache(tmp_path / "c", {"a": tr}, {"a": te}, image_size=8)[0].dir
    x = torch.from_numpy(tr).permute(2, 3, 0, 1).reshape(9, 10, 40)
    x = x - x.mean(1, keepdim=True)
    cov = torch.bmm(x.transpose(1, 2), x) / 9 + 0.01 * torch.eye(40)
    assert (torch.linalg.cholesky_ex(cov)[1] != 0).any() == (scale >= 1e3)   # float32 fails (1e2: succeeds, inexact)
    m = PaDiM({"d": 40}, ["a"], seed=0, device=device)
    m.fit(FeatureSet(cache, "train"))
    got = m.grid_scores(FeatureSet(cache, "test"))[1]
    assert m.float64_positions == 9
    want = np.empty((3, 9))
    x64, t64 = tr.astype(np.float64).reshape(10, 40, 9), te.astype(np.float64).reshape(3, 40, 9)
    for p in range(9):
        c = np.cov(x64[:, :, p], rowvar=False) + 0.01 * np.eye(40)
        dl = t64[:, :, p] - x64[:, :, p].mean(0)
        want[:, p] = np.sqrt(np.einsum("nd,de,ne->n", dl, np.linalg.inv(c), dl))
    np.testing.assert_allclose(got.reshape(3, 9), want, rtol=1e-4)


def test_one_pass_equals_the_built_model_bit_for_bit(tmp_path):
    """grid_scores fits and scores chunk by chunk and drops each chunk's inverses; the same
    distances, bit for bit, as scoring against every position's inverse held at once (the
    deployable model), for any chunking (chunk_mb itself moves the last bits: MKL's batches)."""
    cache = _cache(tmp_path, big=9, small=4)
    # rows per chunk (train / test): 1 / 1; 2 / 3 and 5 / 7 (a test chunk spans two training chunks); 9 / 9
    for chunk_mb in (1e-6, 0.01, 0.02, 1000):
        m = PaDiM({"d": 9, "chunk_mb": chunk_mb}, ["a", "b"], seed=1024)
        m.fit(FeatureSet(cache, "train"))
        one_pass = m.grid_scores(FeatureSet(cache, "test"))[1]
        assert m._model is None    # the pass kept no model
        assert m.inv_cov.shape == (81, 9, 9) and m._model is not None   # built on first use
        assert np.array_equal(m.grid_scores(FeatureSet(cache, "test"))[1], one_pass)
