"""PaDiM (Defard et al. 2020) as the study defines it, in bounded memory.

Embedding: the chosen layers, each upsampled (nearest) to the largest map and concatenated;
R_d keeps d channels drawn with the seed. Per position a Gaussian with covariance
(1/(n-1)) sum (x-mu)(x-mu)^T + 0.01 I; score = Mahalanobis distance, upsampled bilinearly,
blurred (sigma 4); image score = max of the map.

Memory: one pass over chunks of grid rows fits and scores them (grid_scores): a chunk's
training slice (all training images, only the R_d channels; a range of images per read, so the
cache pages mapped at once stay bounded) gives its means and covariances (one batched matmul),
inverted; the test slice is scored against them; the chunk's means and inverses are then
dropped. No array grows with the grid or holds every position's (d, d) inverse, so the peak is
the chunk's (chunk_mb sizes it, with a floor of one grid row) plus the (N, h, w) distances. The
deployable model (deploy.py, the latency stage) still needs every inverse: `mean` and `inv_cov`
build it on first use (positions x d x d float32: 3136 x 550 x 550 x 4 B = 3.5 GiB for
WideResNet-50-2 with d=550 on a 56x56 grid; `model_bytes`). The memory guards check the
estimates below (`fit_bytes`, `predict_bytes`; bench/padim_memory.py measures the heaviest cases).

Precision: the covariance is accumulated and inverted in float32. Where float32 cannot hold the
regularizer beside the variances of a position (random-init backbones: features of 1e3..1e5,
variances of 1e6..1e10, against eps = 0.01 and float32's 2^-24; n < d leaves eps*I as the only
thing that makes the matrix definite), that position's covariance is recomputed and inverted in
float64 from the same centred features (`_inverse64`), and the inverse stored in float32. Which
positions: those whose Cholesky fails, and those whose largest variance times d * 2^-24 (the
rounding of a d x d Cholesky) reaches eps. Features of pretrained backbones stay on the float32
path, bit for bit as before.

Device: the chunks are read on the host (the cache) and moved to `self.device`; the means, the
inverse covariances, the batched Cholesky inverses and the Mahalanobis products live and run
there (on a GPU the guard checks the device memory those arrays take); the distances come back
as a host array. On the CPU every move is a no-op: the same bits as before devices existed.

Params (resolved): d (an int, or "all"), chunk_mb (a chunk's (positions, images, d) block),
sigma (map blur).
"""
from __future__ import annotations

import time
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
    """Inverses of a batch of float32 covariances by Cholesky, matrix by matrix (so the result
    never depends on how the batch is split, across_cores). A matrix whose Cholesky fails (float32
    lost its regularizer) gets NaN: `_gaussians` redoes it in float64. Its factor is replaced by I
    first: cholesky_inverse raises on a factor with a zero diagonal."""
    L, info = torch.linalg.cholesky_ex(cov)
    bad = info != 0
    if bool(bad.any()):
        L[bad] = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    inv = torch.cholesky_inverse(L)
    if bool(bad.any()):
        inv[bad] = float("nan")
    return inv


def _inverse64(xc: torch.Tensor, n: int) -> torch.Tensor:
    """(p, d, d) float64 inverses of (x^T x / (n-1) + EPS*I) for centred (p, n, d) features.

    In float64 the regularizer survives variances up to ~1e12 (EPS against 2^-53); beyond that the
    Cholesky may still fail, and the inverse is taken from the eigendecomposition with the
    eigenvalues floored at EPS (every eigenvalue of Sigma + EPS*I is at least EPS exactly)."""
    x = xc.double()
    cov = torch.bmm(x.transpose(1, 2), x).div_(n - 1)
    cov.diagonal(dim1=1, dim2=2).add_(EPS)
    L, info = torch.linalg.cholesky_ex(cov)
    bad = info != 0
    if bool(bad.any()):
        L[bad] = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    inv = torch.cholesky_inverse(L)
    if bool(bad.any()):
        w, v = torch.linalg.eigh(cov[bad])
        inv[bad] = (v / w.clamp_min(EPS).unsqueeze(-2)) @ v.transpose(-1, -2)
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
        "chunk_mb": Param(64.0, float, low=0, low_open=True, help="a chunk's (positions, images, d) block"),
        "sigma": SIGMA,
    }

    def configure(self, p: dict) -> None:
        self.d_param = p["d"]
        self.budget_bytes = p["chunk_mb"] * 2**20   # a chunk's (p, n, d) slice
        self.sigma = p["sigma"]
        self._model = None            # (mean, inv_cov) once built (`mean`, `inv_cov`)
        self.float64_positions = 0    # positions of the last fit inverted in float64 (module docstring)

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
        """Row ranges of at least one grid row where the (p, n, d) slice of n images and each
        (p, d, d) array (covariances, factors, inverses) fit the memory budget. Each chunk reads
        every image's cache pages again, so fewer, larger chunks are faster. The chunking also
        fixes the batches of the batched matmuls and inverses (MKL's results depend on the batch
        in the last bits): fit uses the chunks of the training set, scoring those of the test
        set, with or without a built model."""
        H, W = self.grid
        rows = min(self.budget_bytes // (n * self.d * W * 4), self.budget_bytes // (self.d * self.d * W * 4))
        rows = max(1, min(H, int(rows)))
        return [(r, min(r + rows, H)) for r in range(0, H, rows)]

    # -- fit -------------------------------------------------------------------------
    def fit(self, train: FeatureSet) -> None:
        """Draws R_d and keeps the training set: the Gaussians are computed chunk by chunk where
        they are used (grid_scores), or all at once when `mean` / `inv_cov` are read."""
        self._select(train)
        n = len(train)
        if n < 2:
            raise UserError(f"PaDiM needs at least 2 training images for a covariance ({train.dir}: {n}).")
        H, W = self.grid
        self.guard(self.fit_bytes(n), f"PaDiM on {train.dir} ({H}x{W} grid, d={self.d})",
                   "lower `padim.d` (memory grows with d^2) or `padim.chunk_mb`.")
        self.train, self.n_train = train, n
        self._model, self.float64_positions = None, 0

    def _gaussians(self):
        """Yields (r0, r1, (p, d) means, (p, d, d) inverse covariances) of grid rows r0:r1, chunk
        by chunk of the training set (float32; float64 where float32 loses EPS, module docstring);
        the whole grid at once (views) when the model is built."""
        if self._model is not None:
            yield 0, self.grid[0], self._model[0].T, self._model[1]
            return
        train, n, dev, W = self.train, self.n_train, self.device, self.grid[1]
        eye = to_device(torch.eye(self.d) * EPS, dev)
        scratch = Scratch()
        self.float64_positions, self.deferred_fit_s = 0, 0.0
        for r0, r1 in self._row_chunks(n):
            t = time.perf_counter()
            xc = to_device(self._rows(train, r0, r1, scratch), dev)    # (p, n, d)
            mu = xc.mean(1)                                            # (p, d)
            check_finite(mu, f"features of {train.dir}")               # NaN/Inf survive a mean
            xc.sub_(mu.unsqueeze(1))
            cov = torch.bmm(xc.transpose(1, 2), xc).div_(n - 1).add_(eye)
            lost = cov.diagonal(dim1=1, dim2=2).amax(1) * (self.d * 2.0 ** -24) >= EPS
            inv = torch.empty((r1 - r0) * W, self.d, self.d, dtype=torch.float32, device=dev)
            if bool(lost.any()):   # float32 only where it holds EPS; the others are done in float64 below
                keep = (~lost).nonzero()[:, 0]
                if len(keep):
                    part = torch.empty(len(keep), self.d, self.d, dtype=torch.float32, device=dev)
                    across_cores(_inverse, cov[keep], out=part)
                    inv[keep] = part
                    del part
            else:
                across_cores(_inverse, cov, out=inv)
            del cov  # not alive while the next chunk is read
            redo = lost | inv[:, 0, 0].isnan()    # _inverse fills a failed matrix with NaN (keep: never lost)
            if bool(redo.any()):   # a quarter of the chunk at a time: float64 arrays are twice the size
                idx = redo.nonzero()[:, 0]
                for part in torch.split(idx, max(1, len(inv) // 4)):
                    out = torch.empty(len(part), self.d, self.d, dtype=torch.float32, device=dev)
                    across_cores(lambda x: _inverse64(x, n), xc[part], out=out)   # copy_ casts to float32
                    inv[part] = out
                self.float64_positions += len(idx)
            del xc
            self.deferred_fit_s += time.perf_counter() - t
            yield r0, r1, mu, inv

    def _build_model(self) -> None:
        """Every position's mean (d, H*W) and inverse covariance (H*W, d, d): the deployable
        model, guarded by its size (`model_bytes`)."""
        H, W = self.grid
        self.guard(self.model_bytes(), f"the PaDiM model of {self.train.dir} ({H}x{W} grid, d={self.d}, "
                   f"every inverse covariance)", "lower `padim.d` (the inverses grow with d^2).")
        mean = torch.empty(self.d, H * W, dtype=torch.float32, device=self.device)
        inv_cov = torch.empty(H * W, self.d, self.d, dtype=torch.float32, device=self.device)
        bar = self.progress(H * W, "fit (positions)", "pos")
        for r0, r1, mu, inv in self._gaussians():
            mean[:, r0 * W:r1 * W], inv_cov[r0 * W:r1 * W] = mu.T, inv
            bar.update((r1 - r0) * W)
        bar.close()
        self._model = (mean, inv_cov)

    @property
    def mean(self) -> torch.Tensor:
        """(d, H*W) means of every position (built with `inv_cov` on first use)."""
        if self._model is None:
            self._build_model()
        return self._model[0]

    @property
    def inv_cov(self) -> torch.Tensor:
        """(H*W, d, d) inverse covariances of every position (built on first use)."""
        if self._model is None:
            self._build_model()
        return self._model[1]

    # -- predict -----------------------------------------------------------------------
    def grid_scores(self, test: FeatureSet) -> tuple[None, np.ndarray]:
        """(None, (N, h, w) Mahalanobis distances on the feature grid): the image score is the
        maximum of the anomaly map. One pass: the training chunks' Gaussians (`_gaussians`) are
        made as the test chunks reach their rows and dropped once every test chunk that needs
        them is scored, so at most the Gaussians of one test chunk and one training chunk are
        alive. The product with the inverse covariances is taken PRODUCT_SPLIT positions' worth
        at a time into one small buffer, so a chunk holds one (p, N, d) test block, not two."""
        H, W = self.grid
        N = len(test)
        self.guard(self.predict_bytes(N, test.image_size),
                   f"PaDiM predict on {test.dir} ({N} images, {H}x{W} grid, d={self.d})",
                   "lower `padim.d` (memory grows with d^2) or `padim.chunk_mb`.")
        out = np.empty((N, H * W), np.float32)
        scratch = Scratch()
        gaussians, held = self._gaussians(), []
        bar = self.progress(H * W, "fit and predict (positions)", "pos")
        for q0, q1 in self._row_chunks(N):
            while not held or held[-1][1] < q1:
                held.append(next(gaussians))
            held = [g for g in held if g[1] > q0]      # chunks wholly above this one: dropped
            mu, inv = _rows_of(held, q0, q1, W)
            delta = to_device(self._rows(test, q0, q1, scratch), self.device)
            delta.sub_(mu.unsqueeze(1))                                       # (p, N, d)
            step = -(-delta.shape[0] // PRODUCT_SPLIT)
            buf = scratch.tensor("product", (step, *delta.shape[1:]), self.device)
            for s in range(0, delta.shape[0], step):
                dl = delta[s:s + step]
                m = torch.bmm(dl, inv[s:s + len(dl)], out=buf[:len(dl)]).mul_(dl)   # in place: no third array
                out[:, q0 * W + s:q0 * W + s + len(dl)] = m.sum(-1).clamp_min_(0).sqrt_().T.cpu().numpy()
            del delta, mu, inv  # not alive while the next chunk is read
            bar.update((q1 - q0) * W)
        bar.close()
        held.clear()
        check_finite(out, f"features of {test.dir}")   # NaN/Inf survive the distance
        return None, out.reshape(-1, H, W)

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def _chunk_bytes(self, n: int) -> tuple[float, float]:
        """(the (p, n, d) slice, one (p, d, d) array) of the first chunk for n images."""
        W = self.grid[1]
        r0, r1 = self._row_chunks(n)[0]
        p = (r1 - r0) * W
        return 4.0 * n * self.d * p, 4.0 * p * self.d * self.d

    def model_bytes(self) -> float:
        """The deployable model (`mean`, `inv_cov`: every position's mean and inverse
        covariance, float32), what the latency stage exports."""
        H, W = self.grid
        return 4.0 * H * W * self.d * (self.d + 1)

    def fit_bytes(self, n: int) -> float:
        """Peak RSS of fitting one training chunk on n images: its (p, n, d) slice (plus mapped
        cache pages and gather temporaries while it is read), centred in place and kept while the
        covariances, Cholesky factors and inverses are made (3 x p*d*d, 4 where float32 holds EPS at
        only some positions and those are gathered; the float64 redo, a quarter of the chunk at a
        time, is within that). On a GPU: the device memory of the same arrays."""
        sl, cov = self._chunk_bytes(n)
        if self.device.type != "cpu":
            return sl + 4 * cov
        return BASELINE_BYTES + max(sl + 2 * MAP_BYTES, sl + 4 * cov)

    def predict_bytes(self, n: int, image_size: int) -> float:
        """Peak RSS of the fit-and-score pass on n test images (after `fit` on `n_train`): a
        training chunk being fitted, the inverses held for one test chunk (its own rows' and one
        training chunk's), the centred (p, n, d) test slice and a PRODUCT_SPLIT-th of its product
        with the inverses; the (n, h, w) distances and the maps. Bounded by chunk_mb, not by the
        grid or d. On a GPU: the device memory of the chunk's arrays (maps are made on the host)."""
        H, W = self.grid
        n_train = getattr(self, "n_train", n)
        tr, tr_cov = self._chunk_bytes(n_train)
        te, te_cov = self._chunk_bytes(n)
        held = te_cov + 2 * tr_cov + te + te / PRODUCT_SPLIT
        chunk = max(held, tr + 4 * tr_cov + te_cov + tr_cov)   # fitting the next chunk while one is held
        if self.device.type != "cpu":
            return chunk
        return (BASELINE_BYTES + max(chunk, te + held + 2 * MAP_BYTES) + 4.0 * n * H * W
                + maps_bytes(n, image_size))


def _rows_of(held: list, q0: int, q1: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and inverses of grid rows q0:q1 from the held (r0, r1, mu, inv) chunks: views when
    one chunk covers them, else their concatenation."""
    parts = [(mu[(max(q0, r0) - r0) * W:(min(q1, r1) - r0) * W], inv[(max(q0, r0) - r0) * W:(min(q1, r1) - r0) * W])
             for r0, r1, mu, inv in held if r0 < q1 and r1 > q0]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
