import numpy as np
import pytest
import torch

from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet, FeatureWriter, all_finite

META = {"backbone": "test", "init": "random", "layers": ["a", "b"], "image_size": 16, "ms_per_image": 1.0}


def _write(root, dtype, batches):
    w = FeatureWriter(root, META, dtype)
    n = sum(len(b["a"]) for b in batches)
    w.open("train", n, {k: v.shape[1:] for k, v in batches[0].items()})
    for b in batches:
        w.write("train", b)
    w.close()
    return FeatureSet(root, "train")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_round_trips_batches_in_its_storage_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(scale=30.0, size=(5, 3, 4, 4)).astype(np.float32)
    b = rng.normal(size=(5, 2, 2, 2)).astype(np.float32)
    # numpy and torch batches, split unevenly: rows land in order
    fs = _write(tmp_path / "c", dtype, [{"a": a[:2], "b": torch.from_numpy(b[:2])}, {"a": a[2:], "b": b[2:]}])
    assert fs.meta["dtype"] == dtype and len(fs) == 5 and fs.shape("a") == (3, 4, 4)
    assert (tmp_path / "c/train/a.npy").stat().st_size - 128 == a.size * np.dtype(dtype).itemsize
    got = {k: v for _, batch in fs.batches(batch_size=3) for k, v in batch.items()}  # last batch
    np.testing.assert_array_equal(fs.array("a"), a.astype(dtype))
    np.testing.assert_array_equal(fs.array("b"), b.astype(dtype))
    assert got["a"].dtype == torch.float32 and torch.equal(got["a"], torch.from_numpy(a[3:].astype(dtype).astype(np.float32)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_features_are_refused_and_leave_no_trusted_cache(tmp_path, bad):
    a = np.ones((4, 3, 4, 4), np.float32)
    a[3, 2, 1, 0] = bad
    with pytest.raises(UserError, match="layer 'a' produced NaN/Inf features"):
        _write(tmp_path / "c", "float32", [{"a": a, "b": np.ones((4, 2, 2, 2), np.float32)}])
    with pytest.raises(UserError, match="run the extract stage"):   # no meta.json: never read as a cache
        FeatureSet(tmp_path / "c", "train")


def test_features_beyond_float16_are_refused_not_stored_as_inf(tmp_path):
    a = np.ones((2, 3, 4, 4), np.float32)
    a[1, 0, 0, 0] = 1e5   # finite in float32, inf in float16
    _write(tmp_path / "ok", "float32", [{"a": a, "b": np.ones((2, 2, 2, 2), np.float32)}])
    with pytest.raises(UserError, match=r"beyond the range of float16.*extract\.dtype=float32"):
        _write(tmp_path / "c", "float16", [{"a": a, "b": np.ones((2, 2, 2, 2), np.float32)}])


def test_all_finite_on_arrays_and_tensors():
    x = np.zeros((3, 5), np.float32)
    assert all_finite(x) and all_finite(torch.from_numpy(x)) and all_finite(np.zeros(0, np.float32))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 4] = bad
        assert not all_finite(y) and not all_finite(torch.from_numpy(y)) and not all_finite(y.astype(np.float16))
