"""SPADE (Cohen & Hoshen 2020, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences").

Why: SPADE is the simplest kNN baseline of the study; it has no training and no random
choice, so it shows what the backbone's features alone give.

Image score: mean *squared* Euclidean distance from the test image's globally average-pooled
deepest-layer feature (the cached layer with the smallest map; the last such in `layers`)
to its K nearest training images (K = params["k"], clipped to the training-set size).

Pixel map: the gallery is the K nearest training images' layer maps, every layer in
`layers` upsampled (nearest) to the largest map and concatenated along channels. Each test
position scores the mean Euclidean (not squared) distance to its `kappa` nearest gallery
vectors, taken over all positions of all K images. The (h, w) grid goes through
common.anomaly_maps (bilinear to the image size, Gaussian blur sigma 4).

Memory stays bounded: distances are computed in blocks of at most `chunk` gallery vectors
(and as many test positions as keep a block under 64 MiB), keeping a running top-kappa;
the full positions x gallery matrix never exists. Cost is one GEMM over positions x K*h*w
x channels per test image (2 * h*w * K*h*w * C flops), exact, deterministic.

Params (params["spade"]): k (50), kappa (1), chunk (8192), batch_size (test images per
feature batch, 16), sigma (4.0).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .common import anomaly_maps, check_finite

DEFAULTS = {"k": 50, "kappa": 1, "chunk": 8192, "batch_size": 16, "sigma": 4.0}

BLOCK_ELEMS = 1 << 24  # one distance block: 16M float32 = 64 MiB


def knn_mean_distance(queries: torch.Tensor, gallery: torch.Tensor, kappa: int,
                      chunk: int = 8192) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its kappa nearest gallery rows, chunked."""
    q_sq = (queries * queries).sum(1)
    n, g = queries.shape[0], gallery.shape[0]
    kappa = min(int(kappa), g)
    chunk = max(1, int(chunk))
    rows = max(1, BLOCK_ELEMS // min(chunk, g))
    best = torch.full((n, kappa), float("inf"))
    for c0 in range(0, g, chunk):
        block = gallery[c0:c0 + chunk]
        b_sq = (block * block).sum(1)
        bt = block.t()
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            d2 = torch.addmm(b_sq.unsqueeze(0), queries[r0:r1], bt, beta=1.0, alpha=-2.0)
            if kappa == 1:
                cand = d2.min(1, keepdim=True).values
                best[r0:r1] = torch.minimum(best[r0:r1], cand)
            else:
                kk = min(kappa, d2.shape[1])
                cand = torch.topk(d2, kk, dim=1, largest=False).values
                merged = torch.cat([best[r0:r1], cand], 1)
                best[r0:r1] = torch.topk(merged, kappa, dim=1, largest=False).values
    return (best + q_sq.unsqueeze(1)).clamp_min_(0.0).sqrt_().mean(1)


class SPADE:
    """kNN over pooled image features, then kNN over the chosen images' positions."""

    def __init__(self, params: dict, layers: list[str], seed: int = 1024):
        unknown = set(params or {}) - set(DEFAULTS)
        if unknown:
            raise UserError(f"spade: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        p = {**DEFAULTS, **(params or {})}
        self.k, self.kappa, self.chunk = int(p["k"]), int(p["kappa"]), int(p["chunk"])
        self.batch_size, self.sigma = int(p["batch_size"]), float(p["sigma"])
        if min(self.k, self.kappa, self.chunk, self.batch_size) < 1:
            raise UserError("spade: k, kappa, chunk and batch_size must be >= 1")
        if not layers:
            raise UserError("spade: `layers` is empty; set the top-level `layers` param")
        self.layers = list(layers)
        self.seed = seed  # SPADE makes no random choice
        self.train = None
        self.train_vec: torch.Tensor | None = None

    def _deepest(self, fs) -> str:
        sizes = [fs.shape(name)[1] * fs.shape(name)[2] for name in self.layers]
        smallest = min(sizes)
        return [name for name, s in zip(self.layers, sizes) if s == smallest][-1]

    def _pooled(self, fs) -> torch.Tensor:
        """(N, C) float64 global average of the deepest layer."""
        deep = self._deepest(fs)
        out = [f[deep].double().mean((2, 3)) for _, f in fs.batches([deep], 64)]
        return torch.cat(out)

    def _concat(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """{layer: (B, C, H, W)} -> (B, h, w, sum C) at the largest map, nearest upsampling."""
        maps = [feats[name].float() for name in self.layers]
        h, w = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if tuple(m.shape[-2:]) == (h, w) else F.interpolate(m, size=(h, w), mode="nearest")
                for m in maps]
        return torch.cat(maps, 1).permute(0, 2, 3, 1).contiguous()

    def fit(self, train) -> None:
        """Keep the training cache and its pooled vectors (SPADE has nothing to learn)."""
        if len(train) == 0:
            raise UserError("spade: the training split has no images")
        self.train = train
        self.train_vec = self._pooled(train)
        check_finite(self.train_vec, "spade training features")

    def _gallery(self, idx: np.ndarray) -> torch.Tensor:
        """Concatenated maps of training images `idx`, as (len(idx) * h * w, C) rows."""
        idx = np.sort(idx)
        feats = {name: torch.from_numpy(np.asarray(self.train.array(name)[idx], dtype=np.float32))
                 for name in self.layers}
        g = self._concat(feats)
        return g.reshape(-1, g.shape[-1])

    def grid_scores(self, test) -> tuple[np.ndarray, np.ndarray]:
        """(N,) image scores and (N, h, w) patch scores before upsampling and blur."""
        if self.train_vec is None:
            raise RuntimeError("SPADE.predict before fit")
        k = min(self.k, self.train_vec.shape[0])
        test_vec = self._pooled(test)
        check_finite(test_vec, "spade test features")
        d2 = torch.cdist(test_vec, self.train_vec).pow(2)  # float64, small
        knn_d2, knn_idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        scores = knn_d2.mean(1).numpy()
        grids = []
        for sl, feats in test.batches(self.layers, self.batch_size):
            x = self._concat(feats)
            check_finite(x, "spade test features")
            for b in range(x.shape[0]):
                gallery = self._gallery(knn_idx[sl.start + b].numpy())
                q = x[b].reshape(-1, x.shape[-1])
                grids.append(knn_mean_distance(q, gallery, self.kappa, self.chunk).view(x.shape[1], x.shape[2]))
        return scores.astype(np.float64), torch.stack(grids).numpy()

    def predict(self, test) -> tuple[np.ndarray, np.ndarray]:
        scores, grid = self.grid_scores(test)
        maps = anomaly_maps(grid, test.image_size, sigma=self.sigma)
        check_finite(scores, "spade image scores")
        check_finite(maps, "spade anomaly maps")
        return scores, maps
