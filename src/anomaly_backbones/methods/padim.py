"""PaDiM (Defard et al. 2020) as the study defines it, in bounded memory.

Embedding: the chosen layers, each upsampled (nearest) to the largest map and concatenated;
R_d keeps d channels drawn with the seed. Per position a Gaussian with covariance
(1/(n-1)) sum (x-mu)(x-mu)^T + 0.01 I; score = Mahalanobis distance, upsampled bilinearly,
blurred (sigma 4); image score = max of the map.

Memory: the cached features are read by chunks of grid rows (all images, only the R_d
channels; a range of images per read, so the cache pages mapped at once stay bounded), so the
training set is never held at once; each chunk's covariances are one batched matmul over all
images, inverted before the next chunk. The only large array is the (positions, d, d)
inverse covariance: 3136*550*550*4 B = 3.5 GiB for WideResNet-50-2 with d=550 on a 56x56
grid. fit_bytes/predict_bytes estimate the whole peak, which the memory guards check; there
(1,000 training images, bench/padim_memory.py) the peak is 4.70 GiB, estimated 4.61.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import UserError
from ..features import MAP_BYTES, FeatureSet
from ..runner import BASELINE_BYTES, check_memory
from .common import Scratch, across_cores, anomaly_maps, check_finite, maps_bytes

EPS = 0.01
PRODUCT_SPLIT = 8  # predict: the product with the inverse covariances is taken in this many parts per chunk


def _upsample_into(dst: torch.Tensor, row: torch.Tensor) -> None:
    """dst (W, n, c) = row (w, n, c) upsampled along its first axis by nearest neighbour
    (src = floor(x * w / W), as F.interpolate). An integer factor is a broadcast copy into a
    view of dst (no temporary); another ratio gathers the source columns first."""
    W, w = dst.shape[0], row.shape[0]
    if W % w == 0:
        f = W // w
        dst.view(w, f, *dst.shape[1:]).copy_(row.unsqueeze(1).expand(w, f, *row.shape[1:]))
    else:
        dst.copy_(row.index_select(0, torch.arange(W) * w // W))


def _inverse(cov: torch.Tensor) -> torch.Tensor:
    """Inverses of a batch of covariances: Cholesky, and the pseudo-inverse for each matrix that
    is not positive definite. Matrix by matrix, so the result never depends on how the batch
    is split (across_cores)."""
    L, info = torch.linalg.cholesky_ex(cov)
    inv = torch.cholesky_inverse(L)
    bad = info != 0
    if bool(bad.any()):
        inv[bad] = torch.linalg.pinv(cov[bad], hermitian=True)
    return inv


class PaDiM:
    def __init__(self, params: dict, layers: list[str], seed: int):
        self.d_param = params.get("d", "auto")
        self.budget_bytes = float(params.get("chunk_mb", 256)) * 2**20   # a chunk's (p, n, d) slice
        self.sigma = float(params.get("sigma", 4.0))
        self.layers = list(layers)
        self.seed = int(seed)

    # -- embedding -------------------------------------------------------------------
    def _select(self, fs: FeatureSet) -> None:
        """Resolve d and draw R_d once: which channels of which layer to keep."""
        from ..backbones import resolve_d

        dims = [fs.shape(layer)[0] for layer in self.layers]
        total = int(sum(dims))
        d = resolve_d(fs.meta.get("backbone", ""), self.d_param, total)
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(rng.choice(total, size=d, replace=False)) if d < total else np.arange(total)
        offsets = np.cumsum([0] + dims)
        self.channels = {layer: chosen[(chosen >= lo) & (chosen < hi)] - lo
                         for layer, lo, hi in zip(self.layers, offsets[:-1], offsets[1:])}
        self.grid = max((fs.shape(layer)[1:] for layer in self.layers), key=lambda s: s[0] * s[1])
        self.d = d

    def _rows(self, fs: FeatureSet, r0: int, r1: int, scratch: Scratch) -> torch.Tensor:
        """(positions, N, d) embedding of grid rows r0:r1 for all images of a split (in `scratch`).

        Nearest upsampling is an index gather (src = floor(dst * in / out), as F.interpolate),
        so only the rows and the R_d channels a chunk needs are read from the cache, by image
        ranges (FeatureSet.groups). Each range is transposed once at its layer's resolution to
        (h, w, n, c); the gather to the grid then copies whole (n, c) blocks, so the batched
        matmuls get their layout without a further copy. The chunk and the transposed range live
        in buffers reused from chunk to chunk (Scratch)."""
        H, W = self.grid
        out = torch.from_numpy(scratch.get("rows", (r1 - r0, W, len(fs), self.d)))
        off = 0
        for layer in self.layers:
            ch = self.channels[layer]
            if len(ch) == 0:
                continue
            c, h, w = fs.shape(layer)
            ri = (np.arange(r0, r1) * h) // H
            lo, hi = int(ri.min()), int(ri.max()) + 1
            subset = torch.from_numpy(ch) if len(ch) < c else None
            for sl in fs.groups(layer):
                with warnings.catch_warnings():   # a read-only cache map: torch only reads it
                    warnings.simplefilter("ignore", UserWarning)
                    a = torch.from_numpy(np.asarray(fs.array(layer)[sl, :, lo:hi]))
                if subset is not None:
                    a = a.index_select(1, subset)
                t = torch.from_numpy(scratch.get("transposed", (hi - lo, w, a.shape[0], len(ch))))
                t.copy_(a.permute(2, 3, 0, 1))   # (rows, w, n, c), float32 from any cache dtype
                dst = out[:, :, sl, off:off + len(ch)]
                for r, src in enumerate(ri - lo):      # row by row: whole (n, c) blocks, torch copies on all cores
                    _upsample_into(dst[r], t[src])
            off += len(ch)
        return out.view(-1, len(fs), self.d)   # NaN/Inf: checked on what fit and distances compute from it

    def fit_bytes(self, n: int) -> float:
        """Peak RSS of fit: the baseline, the inverse covariances, and the larger of a chunk's
        read (its (p, n, d) slice, plus mapped cache pages and gather temporaries) and its
        compute: the slice, centred in place, then the covariance, Cholesky factor and inverse
        (3 x p*d*d). With few images the d*d terms dominate the chunk."""
        H, W = self.grid
        r0, r1 = self._row_chunks(n)[0]
        p = (r1 - r0) * W
        inv_cov = 4.0 * H * W * self.d * self.d
        sl, cov = 4.0 * n * self.d * p, 4.0 * p * self.d * self.d
        return BASELINE_BYTES + inv_cov + max(sl + 2 * MAP_BYTES, sl + cov, 3 * cov)

    def predict_bytes(self, n: int, image_size: int) -> float:
        """Peak RSS of predict on n images: the fitted model, per chunk the centred (p, N, d)
        slice and a PRODUCT_SPLIT-th of its product with the inverse covariances, and the maps."""
        H, W = self.grid
        r0, r1 = self._row_chunks(n)[0]
        sl = 4.0 * n * self.d * (r1 - r0) * W
        model = 4.0 * H * W * self.d * (self.d + 1)
        return (BASELINE_BYTES + model + sl + max(2 * MAP_BYTES, sl / PRODUCT_SPLIT) + 4.0 * n * H * W
                + maps_bytes(n, image_size))

    def _row_chunks(self, n: int):
        """Row ranges whose (n, d, rows*W) float32 slice fits the memory budget. Each chunk reads
        every image's cache pages again (measured ~0.5 M page faults for the 28 chunks of the
        112x112 grid's fit at 128 MB), so fewer, larger chunks are faster."""
        H, W = self.grid
        rows = max(1, min(H, int(self.budget_bytes // (n * self.d * W * 4))))
        return [(r, min(r + rows, H)) for r in range(0, H, rows)]

    # -- fit -------------------------------------------------------------------------
    def fit(self, train: FeatureSet) -> None:
        """Streams over chunks of grid positions: each chunk's covariances come from one batched
        matmul over all training images, and are inverted before the next chunk is read."""
        self._select(train)
        n = len(train)
        if n < 2:
            raise UserError(f"PaDiM needs at least 2 training images for a covariance ({train.dir}: {n}).")
        H, W = self.grid
        check_memory(self.fit_bytes(n), f"PaDiM on {train.dir} ({H}x{W} grid, d={self.d})",
                     "lower `padim.d` (memory grows with d^2) or choose deeper `layers` (a smaller grid).")
        self.mean = torch.empty(self.d, H * W, dtype=torch.float32)
        self.inv_cov = torch.empty(H * W, self.d, self.d, dtype=torch.float32)  # the one large array
        eye = torch.eye(self.d) * EPS
        scratch = Scratch()
        for r0, r1 in self._row_chunks(n):
            xc = self._rows(train, r0, r1, scratch)                    # (p, n, d)
            mu = xc.mean(1)                                            # (p, d)
            check_finite(mu, f"features of {train.dir}")               # NaN/Inf survive a mean
            xc.sub_(mu.unsqueeze(1))
            cov = torch.bmm(xc.transpose(1, 2), xc).div_(n - 1).add_(eye)
            del xc
            self.mean[:, r0 * W:r1 * W] = mu.T
            across_cores(_inverse, cov, out=self.inv_cov[r0 * W:r1 * W])
            del cov  # not alive while the next chunk is read

    # -- predict -----------------------------------------------------------------------
    def distances(self, test: FeatureSet) -> np.ndarray:
        """(N, h, w) Mahalanobis distances on the feature grid. Per chunk of grid rows, the
        product with the inverse covariances is taken PRODUCT_SPLIT positions' worth at a time
        into one small buffer, so a chunk holds one (p, N, d) block, not two."""
        H, W = self.grid
        out = np.empty((len(test), H * W), np.float32)
        scratch = Scratch()
        for r0, r1 in self._row_chunks(len(test)):
            delta = self._rows(test, r0, r1, scratch).sub_(self.mean[:, r0 * W:r1 * W].T.unsqueeze(1))  # (p, N, d)
            step = -(-delta.shape[0] // PRODUCT_SPLIT)
            buf = torch.from_numpy(scratch.get("product", (step, *delta.shape[1:])))
            for s in range(0, delta.shape[0], step):
                dl = delta[s:s + step]
                pos = slice(r0 * W + s, r0 * W + s + len(dl))
                m = torch.bmm(dl, self.inv_cov[pos], out=buf[:len(dl)]).mul_(dl)   # in place: no third array
                out[:, pos] = m.sum(-1).clamp_min_(0).sqrt_().T.numpy()
            del delta  # not alive while the next chunk is read
        check_finite(out, f"features of {test.dir}")   # NaN/Inf survive the distance
        return out.reshape(-1, H, W)

    def predict(self, test: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        H, W = self.grid
        check_memory(self.predict_bytes(len(test), test.image_size),
                     f"PaDiM predict on {test.dir} ({len(test)} images, {H}x{W} grid, d={self.d})",
                     "lower `padim.d` (memory grows with d^2) or choose deeper `layers` (a smaller grid).")
        maps = anomaly_maps(self.distances(test), test.image_size, self.sigma)
        return maps.reshape(len(maps), -1).max(1), maps
