"""Grid scores -> anomaly maps: the matrix form equals interpolate + blur, and blur is a true Gaussian."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from anomaly_backbones.methods.common import anomaly_maps, blur, resize_blur_matrix


def test_blur_is_scipys_gaussian_with_mirror_padding():
    x = torch.rand(2, 40, 33)
    ours = blur(x, 4.0).numpy()
    ref = np.stack([gaussian_filter(m.double().numpy(), 4.0, mode="mirror", truncate=4.0) for m in x])
    assert np.abs(ours - ref).max() < 1e-5


@pytest.mark.parametrize("shape,size", [((5, 56, 56), 224), ((3, 7, 5), 224), ((2, 28, 14), 64)])
def test_anomaly_maps_equal_interpolate_then_blur(shape, size):
    g = torch.rand(*shape) * 10
    up = F.interpolate(g[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    ref = blur(up, 4.0).numpy()
    out = anomaly_maps(g, size, 4.0, chunk=2)
    assert out.shape == (shape[0], size, size) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-4
    # a constant grid stays constant (weights sum to one along both axes)
    assert np.allclose(anomaly_maps(torch.full(shape, 3.0), size, 4.0), 3.0, atol=1e-5)


@pytest.mark.parametrize("n,size,sigma", [(56, 224, 4.0), (112, 224, 4.0), (7, 224, 2.0), (4, 16, 4.0), (3, 9, 1.0)])
def test_resize_blur_matrix_is_bit_identical_to_full_size_basis_images(n, size, sigma):
    """The matrix is built on narrow basis images; interpolating and blurring whole size x size
    ones (the definition) must give the same bits, reflect and replicate padding alike."""
    basis = torch.eye(n, dtype=torch.float32).view(n, 1, n, 1)
    full = F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    want = blur(full, sigma)[:, :, 0].T.contiguous()
    resize_blur_matrix.cache_clear()
    got = resize_blur_matrix(n, size, sigma)
    assert got.shape == (size, n) and torch.equal(got, want)
