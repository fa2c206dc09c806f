"""What the methods share: grid scores -> anomaly maps (bilinear upsampling + Gaussian blur, as
two matmuls), the finiteness check, reusable work buffers, and a batch split across cores."""
from __future__ import annotations


from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..features import all_finite
from ..resources import usable_cpus


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Kernel of size 2*int(4*sigma+0.5)+1, as anomalib's GaussianBlur2d uses."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def blur(maps: torch.Tensor, sigma: float, chunk: int = 64) -> torch.Tensor:
    """Separable Gaussian blur of (N, H, W) maps, reflect padding (replicate on maps smaller
    than the kernel radius, where reflection is undefined). By chunks of maps: conv2d over
    hundreds of 224x224 maps at once takes GBs of workspace; each map's result is the same."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    mode = "reflect" if r < min(maps.shape[-2:]) else "replicate"
    out = torch.empty_like(maps)
    for s in range(0, maps.shape[0], chunk):
        x = maps[s:s + chunk, None]
        x = F.pad(x, (r, r, 0, 0), mode=mode)
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        x = F.pad(x, (0, 0, r, r), mode=mode)
        out[s:s + chunk] = F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]
    return out


@lru_cache(maxsize=16)
def resize_blur_matrix(n: int, size: int, sigma: float) -> torch.Tensor:
    """(size, n) matrix of "bilinear n -> size, then blur" along one axis.

    Both steps are linear and separable, so a map is M_h @ grid @ M_w.T: two small matmuls
    instead of interpolating and convolving every full-size map. Built by running the same
    interpolate + blur on basis images: constant along the other axis, where bilinear weights
    and the normalized reflect-padded blur both sum to one. That axis only needs to be wide
    enough for the same padding mode (r + 1 columns, not size): the same bits as full size x
    size basis images (tests/test_maps.py), built in a fraction of the time."""
    r = int(4.0 * sigma + 0.5)
    basis = torch.eye(n, dtype=torch.float32).view(n, 1, n, 1)
    up = F.interpolate(basis, size=(size, 1), mode="bilinear", align_corners=False)
    return blur(up.expand(n, 1, size, r + 1)[:, 0].contiguous(), sigma)[:, :, 0].T.contiguous()


def upsample_blur(grid: torch.Tensor, size: int, sigma: float = 4.0) -> torch.Tensor:
    """(N, h, w) float32 patch scores -> (N, size, size): bilinear upsampling, then blur, as two
    matmuls. Pure torch ops, so the deployable scorer (deploy.py) traces and exports exactly this."""
    mh, mw = resize_blur_matrix(grid.shape[-2], size, sigma), resize_blur_matrix(grid.shape[-1], size, sigma)
    mh, mw = mh.to(grid.device), mw.to(grid.device)   # no-ops on the CPU
    return torch.matmul(torch.matmul(mh, grid), mw.T)


def anomaly_maps(grid: torch.Tensor | np.ndarray, size: int, sigma: float = 4.0, chunk: int = 64) -> np.ndarray:
    """(N, h, w) patch scores -> (N, size, size) float32 maps on the host, in chunks of images.
    A grid on a GPU is upsampled there, each chunk's maps copied to the host."""
    g = grid.float() if isinstance(grid, torch.Tensor) else torch.as_tensor(np.asarray(grid), dtype=torch.float32)
    out = np.empty((g.shape[0], size, size), np.float32)
    for s in range(0, g.shape[0], chunk):
        out[s:s + chunk] = upsample_blur(g[s:s + chunk], size, sigma).cpu().numpy()
    return out


def maps_bytes(n: int, size: int, chunk: int = 64) -> float:
    """Memory of anomaly_maps on n images: the float32 maps plus one chunk's upsampling and blur
    temporaries (four (chunk, size, size) arrays)."""
    return 4.0 * size * size * (n + 4 * min(n, chunk))


def check_finite(x: np.ndarray | torch.Tensor, what: str) -> None:
    """Non-finite features or scores are an error, never a silent AUROC."""
    if not all_finite(x):
        from ..errors import UserError

        raise UserError(f"{what} contains NaN or Inf: the backbone or its weights produce non-finite "
                        f"values. Check init/weights (a corrupt checkpoint?) and input images.")


class Scratch:
    """Float32 work buffers reused from chunk to chunk of a loop, by name.

    Why: the first touch of fresh memory costs several times the copy into it (page faults),
    and glibc maps every allocation above 32 MB afresh; a chunked loop that allocates its chunk
    each time pays that on every chunk. A buffer grows to the largest shape asked for and is
    freed with the Scratch. `tensor(name, shape, device)` is the same on any device: a view of
    the host buffer on the CPU, a buffer in device memory on a GPU."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}
        self._dev: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """A contiguous (shape) float32 tensor on `device`, contents undefined: on the CPU
        torch.from_numpy(get(name, shape)), on a GPU a device buffer reused the same way."""
        if device.type == "cpu":
            return torch.from_numpy(self.get(name, shape))
        size = int(np.prod(shape))
        buf = self._dev.get(name)
        if buf is None or buf.numel() < size:
            self._dev[name] = buf = torch.empty(size, dtype=torch.float32, device=device)
        return buf[:size].view(shape)

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous (shape) float32 view of buffer `name`; its contents are undefined."""
        size = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            self._bufs[name] = buf = np.empty(size, np.float32)
        return buf[:size].reshape(shape)


def across_cores(fn, batch: torch.Tensor, out: torch.Tensor) -> None:
    """out = fn(batch) over the leading (batch) axis, one slice per core, each on its own thread
    with torch single-threaded, each slice's result copied into its part of `out` (the same bits
    as fn(batch) when fn treats batch items independently; no concatenated copy of the whole).

    For batched small-matrix LAPACK (thousands of d x d Cholesky factors): MKL parallelizes inside
    each tiny matrix, not across the batch, so its own threads do not help (and collapse when
    another process is busy on the cores), while one slice per core on its own thread does
    (docs/performance.md, "PaDiM's inverses"). On a GPU the batch is one call: the device's
    batched kernels parallelize across it."""
    if batch.device.type != "cpu":
        out.copy_(fn(batch))
        return
    workers = min(usable_cpus(), batch.shape[0])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if workers <= 1:
            out.copy_(fn(batch))
            return
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda io: io[1].copy_(fn(io[0])),
                          zip(torch.tensor_split(batch, workers), torch.tensor_split(out, workers))))
    finally:
        torch.set_num_threads(n)
