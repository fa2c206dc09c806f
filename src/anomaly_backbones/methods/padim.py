"""PaDiM (Defard et al. 2020) as the study defines it, in bounded memory.

Embedding: the chosen layers, each upsampled (nearest) to the largest map and concatenated;
R_d keeps d channels drawn with the seed. Per position a Gaussian with covariance
(1/(n-1)) sum (x-mu)(x-mu)^T + 0.01 I; score = Mahalanobis distance, upsampled bilinearly,
blurred (sigma 4); image score = max of the map.

Memory: the cached features are read by chunks of grid rows (all images, only the R_d
channels; a range of images per read, so the cache pages mapped at once stay bounded), so the
training set is never held at once; each chunk's covariances are one batched matmul over all
images, inverted before the next chunk. The only large array is the (positions, d, d)
inverse covariance (positions x d x d float32: 3136 x 550 x 550 x 4 B = 3.5 GiB for
WideResNet-50-2 with d=550 on a 56x56 grid). The memory guards check the estimates of
methods/memory.py before fit and predict (bench/padim_memory.py measures the heaviest case).

Device: the chunks are read on the host (the cache) and moved to `self.device`; the means, the
inverse covariances, the batched Cholesky inverses and the Mahalanobis products live and run
there (on a GPU the guard checks the device memory those arrays take); the distances come back
as a host array. On the CPU every move is a no-op: the same bits as before devices existed.

Params (resolved): d (an int, or "all"), chunk_mb (a chunk's (positions, images, d) block),
sigma (map blur).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..device import to_device
from ..errors import UserError
from ..features import MAP_BYTES, FeatureSet
from ..resources import BASELINE_BYTES
from ..params.schema import Param
from .base import SIGMA, Method
from .common import Scratch, across_cores, check_finite, maps_bytes
from .grid import largest_grid, upsample_concat

EPS = 0.01
PRODUCT_SPLIT = 8  # predict: the product with the inverse covariances is taken in this many parts per chunk


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


def _resolve_d(d, dim: int, registry_d) -> int:
    """PaDiM's d for features of `dim` channels: `auto` -> registry_d (None: every channel;
    never above dim, since the registry's d is for its default layers); "all" -> dim; an int
    must be in [1, dim]."""
    dim = int(dim)
    if d == "auto":
        return dim if registry_d is None else min(int(registry_d), dim)
    if d == "all":
        return dim
    if not 1 <= d <= dim:
        raise UserError(f"`padim.d` = {d} is out of range: the features have dim {dim} channels, so d must "
                        f"be in [1, {dim}] (or 'auto' / 'all').")
    return int(d)


class PaDiM(Method):
    """Per-position Gaussians of the embedding; score = Mahalanobis distance."""

    name = "padim"
    PARAMS = {
        "d": Param("auto", int, low=1, special=("auto", "all"), help="kept channels (R_d); auto: the registry's"),
        "chunk_mb": Param(256.0, float, low=0, low_open=True, help="a chunk's (positions, images, d) block"),
        "sigma": SIGMA,
    }

    def configure(self, p: dict) -> None:
        self.d_param = p["d"]
        self.budget_bytes = p["chunk_mb"] * 2**20   # a chunk's (p, n, d) slice
        self.sigma = p["sigma"]

    @classmethod
    def resolve_params(cls, group: dict, *, backbone: str, layers: list[str], shapes: dict | None) -> dict:
        """d: `auto` -> the registry's d for the backbone (all channels where it has none). Needs
        `shapes` (the channels of `layers`); without them the group is returned as given."""
        g = dict(group)
        if shapes is not None:
            from ..backbones import registry_d

            g["d"] = _resolve_d(g["d"], sum(shapes[layer][0] for layer in layers), registry_d(backbone))
        return g

    # -- embedding -------------------------------------------------------------------
    def _select(self, fs: FeatureSet) -> None:
        """Draw R_d once: which channels of which layer to keep."""
        dims = [fs.shape(layer)[0] for layer in self.layers]
        total = int(sum(dims))
        d = _resolve_d(self.d_param, total, None)
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(rng.choice(total, size=d, replace=False)) if d < total else np.arange(total)
        offsets = np.cumsum([0] + dims)
        self.channels = {layer: chosen[(chosen >= lo) & (chosen < hi)] - lo
                         for layer, lo, hi in zip(self.layers, offsets[:-1], offsets[1:])}
        self.grid = largest_grid(fs.shape(layer) for layer in self.layers)
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
            lo, hi = (r0 * h) // H, ((r1 - 1) * h) // H + 1     # the source rows of grid rows r0:r1
            subset = torch.from_numpy(ch) if len(ch) < c else None
            for sl in fs.groups(layer):
                with warnings.catch_warnings():   # a read-only cache map: torch only reads it
                    warnings.simplefilter("ignore", UserWarning)
                    a = torch.from_numpy(np.asarray(fs.array(layer)[sl, :, lo:hi]))
                if subset is not None:
                    a = a.index_select(1, subset)
                t = torch.from_numpy(scratch.get("transposed", (hi - lo, w, a.shape[0], len(ch))))
                t.copy_(a.permute(2, 3, 0, 1))   # (rows, w, n, c), float32 from any cache dtype
                # (n, rows, W, c) views of (rows, W, n, c) memory: the bmm layout, no further copy
                upsample_concat([t.permute(2, 0, 1, 3)], (H, W), rows=(r0, r1), heights=[h],
                                out=out[:, :, sl, off:off + len(ch)].permute(2, 0, 1, 3))
            off += len(ch)
        return out.view(-1, len(fs), self.d)   # NaN/Inf: checked on what fit and distances compute from it

    def _row_chunks(self, n: int):
        """Row ranges whose (n, d, rows*W) float32 slice fits the memory budget. Each chunk reads
        every image's cache pages again, so fewer, larger chunks are faster."""
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
        self.guard(self.fit_bytes(n), f"PaDiM on {train.dir} ({H}x{W} grid, d={self.d})",
                   "lower `padim.d` (memory grows with d^2) or choose deeper `layers` (a smaller grid).")
        dev = self.device
        self.mean = torch.empty(self.d, H * W, dtype=torch.float32, device=dev)
        self.inv_cov = torch.empty(H * W, self.d, self.d, dtype=torch.float32, device=dev)  # the one large array
        eye = to_device(torch.eye(self.d) * EPS, dev)
        scratch = Scratch()
        chunks = self._row_chunks(n)
        bar = self.progress(H * W, "fit (positions)", "pos")
        for r0, r1 in chunks:
            xc = to_device(self._rows(train, r0, r1, scratch), dev)    # (p, n, d)
            mu = xc.mean(1)                                            # (p, d)
            check_finite(mu, f"features of {train.dir}")               # NaN/Inf survive a mean
            xc.sub_(mu.unsqueeze(1))
            cov = torch.bmm(xc.transpose(1, 2), xc).div_(n - 1).add_(eye)
            del xc
            self.mean[:, r0 * W:r1 * W] = mu.T
            across_cores(_inverse, cov, out=self.inv_cov[r0 * W:r1 * W])
            del cov  # not alive while the next chunk is read
            bar.update((r1 - r0) * W)
        bar.close()

    # -- predict -----------------------------------------------------------------------
    def grid_scores(self, test: FeatureSet) -> tuple[None, np.ndarray]:
        """(None, (N, h, w) Mahalanobis distances on the feature grid): the image score is the
        maximum of the anomaly map. Per chunk of grid rows, the
        product with the inverse covariances is taken PRODUCT_SPLIT positions' worth at a time
        into one small buffer, so a chunk holds one (p, N, d) block, not two."""
        H, W = self.grid
        self.guard(self.predict_bytes(len(test), test.image_size),
                   f"PaDiM predict on {test.dir} ({len(test)} images, {H}x{W} grid, d={self.d})",
                   "lower `padim.d` (memory grows with d^2) or choose deeper `layers` (a smaller grid).")
        out = np.empty((len(test), H * W), np.float32)
        scratch = Scratch()
        bar = self.progress(H * W, "predict (positions)", "pos")
        for r0, r1 in self._row_chunks(len(test)):
            delta = to_device(self._rows(test, r0, r1, scratch), self.device)
            delta.sub_(self.mean[:, r0 * W:r1 * W].T.unsqueeze(1))   # (p, N, d)
            step = -(-delta.shape[0] // PRODUCT_SPLIT)
            buf = scratch.tensor("product", (step, *delta.shape[1:]), self.device)
            for s in range(0, delta.shape[0], step):
                dl = delta[s:s + step]
                pos = slice(r0 * W + s, r0 * W + s + len(dl))
                m = torch.bmm(dl, self.inv_cov[pos], out=buf[:len(dl)]).mul_(dl)   # in place: no third array
                out[:, pos] = m.sum(-1).clamp_min_(0).sqrt_().T.cpu().numpy()
            del delta  # not alive while the next chunk is read
            bar.update((r1 - r0) * W)
        bar.close()
        check_finite(out, f"features of {test.dir}")   # NaN/Inf survive the distance
        return None, out.reshape(-1, H, W)

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def fit_bytes(self, n: int) -> float:
        """Peak RSS of fit on n images: the inverse covariances, and the larger of a chunk's read
        (its (p, n, d) slice, plus mapped cache pages and gather temporaries) and its compute:
        the slice, centred in place, then the covariance, Cholesky factor and inverse
        (3 x p*d*d). With few images the d*d terms dominate the chunk. On a GPU: the device
        memory of the same arrays (the inverses, the slice and the covariances live there; the
        cache pages stay on the host)."""
        H, W = self.grid
        r0, r1 = self._row_chunks(n)[0]
        p = (r1 - r0) * W
        inv_cov = 4.0 * H * W * self.d * self.d
        sl, cov = 4.0 * n * self.d * p, 4.0 * p * self.d * self.d
        if self.device.type != "cpu":
            return inv_cov + max(sl + cov, 3 * cov)
        return BASELINE_BYTES + inv_cov + max(sl + 2 * MAP_BYTES, sl + cov, 3 * cov)

    def predict_bytes(self, n: int, image_size: int) -> float:
        """Peak RSS of predict on n images: the fitted model, per chunk the centred (p, N, d)
        slice and a PRODUCT_SPLIT-th of its product with the inverse covariances, and the maps.
        On a GPU: the device memory of the model, the slice and the product (the maps are made
        on the host)."""
        H, W = self.grid
        r0, r1 = self._row_chunks(n)[0]
        sl = 4.0 * n * self.d * (r1 - r0) * W
        model = 4.0 * H * W * self.d * (self.d + 1)
        if self.device.type != "cpu":
            return model + sl + sl / PRODUCT_SPLIT
        return (BASELINE_BYTES + model + sl + max(2 * MAP_BYTES, sl / PRODUCT_SPLIT) + 4.0 * n * H * W
                + maps_bytes(n, image_size))
