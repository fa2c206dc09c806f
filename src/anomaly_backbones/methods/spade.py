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

Memory stays bounded whatever K and the grid: the gallery is built `chunk_mb` at a time
(a group of whole training images), and distances are computed one tile at a time, a tile
being at most TILE_ELEMS (64 MiB) of test positions x one gallery image's positions, keeping
a running top-kappa; the full positions x gallery matrix never exists. Tile shapes depend
only on the grid, never on chunk_mb or K, so the result is the same for every budget (BLAS
may round differently when a GEMM's shape changes). Cost is one GEMM over positions x
K*h*w x channels per test image (2 * h*w * K*h*w * C flops), exact, deterministic.

Params (params["spade"]): k (50), kappa (1), chunk_mb (gallery maps built at once, 64),
batch_size (test images per feature batch, 16), sigma (4.0).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runner import BASELINE_BYTES, check_memory
from .common import anomaly_maps, check_finite, maps_bytes

DEFAULTS = {"k": 50, "kappa": 1, "chunk_mb": 64, "batch_size": 16, "sigma": 4.0}

TILE_ELEMS = 1 << 24  # one distance tile: at most 16M float32 = 64 MiB


def knn_mean_distance(queries: torch.Tensor, blocks: Iterable[torch.Tensor], kappa: int) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its kappa nearest rows among all `blocks`.

    One GEMM per tile of (query rows, one block): the rows per tile depend only on the block's
    length, so grouping the gallery differently gives the same values. The tile's output
    buffer is reused, not reallocated (a fresh 64 MiB array per tile costs page faults)."""
    q_sq = (queries * queries).sum(1)
    n = queries.shape[0]
    kappa = int(kappa)
    best = torch.full((n, kappa), float("inf"))
    seen = 0
    buf = torch.empty(0)
    for block in blocks:
        g = block.shape[0]
        rows = max(1, min(n, TILE_ELEMS // g))
        if buf.numel() < rows * g:
            buf = torch.empty(rows * g)
        b_sq = (block * block).sum(1).unsqueeze(0)
        bt = block.t()
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            d2 = torch.addmm(b_sq, queries[r0:r1], bt, beta=1.0, alpha=-2.0, out=buf[:(r1 - r0) * g].view(r1 - r0, g))
            if kappa == 1:
                torch.minimum(best[r0:r1, 0], torch.amin(d2, 1), out=best[r0:r1, 0])
            else:
                cand = torch.topk(d2, min(kappa, g), dim=1, largest=False).values
                merged = torch.cat([best[r0:r1], cand], 1)
                best[r0:r1] = torch.topk(merged, kappa, dim=1, largest=False).values
        seen += g
        del block, bt  # a view of the gallery group: let it go before the next group is built
    best = best[:, :min(kappa, seen)]  # fewer gallery rows than kappa: all of them (sorted, so finite first)
    return (best + q_sq.unsqueeze(1)).clamp_min_(0.0).sqrt_().mean(1)


def _image_bytes(shapes: dict[str, tuple[int, int, int]], itemsize: int) -> float:
    """Memory one image takes while its maps are concatenated: its cached maps (mapped pages, a
    copy and a float32 copy) and the (h, w, C) float32 result plus one upsampled layer (made
    only at a non-integer scale factor)."""
    hw = max(s[1] * s[2] for s in shapes.values())
    c = sum(s[0] for s in shapes.values())
    cached = sum(s[0] * s[1] * s[2] for s in shapes.values())
    return 4.0 * hw * (c + max(s[0] for s in shapes.values())) + (4 + 2 * itemsize) * cached


class SPADE:
    """kNN over pooled image features, then kNN over the chosen images' positions."""

    def __init__(self, params: dict, layers: list[str], seed: int = 1024):
        unknown = set(params or {}) - set(DEFAULTS)
        if unknown:
            raise UserError(f"spade: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        p = {**DEFAULTS, **(params or {})}
        self.k, self.kappa, self.batch_size = int(p["k"]), int(p["kappa"]), int(p["batch_size"])
        self.budget_bytes, self.sigma = float(p["chunk_mb"]) * 2**20, float(p["sigma"])
        if min(self.k, self.kappa, self.batch_size) < 1 or self.budget_bytes <= 0:
            raise UserError("spade: k, kappa and batch_size must be >= 1 and chunk_mb > 0")
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
        """{layer: (B, C, H, W)} -> (B, h, w, sum C) at the largest map, nearest upsampling.
        Each layer is written straight into its channel slice; at an integer scale factor
        nearest upsampling is a broadcast copy (the values F.interpolate gives, one pass)."""
        maps = [feats[name] for name in self.layers]
        h, w = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        b = maps[0].shape[0]
        out = torch.empty(b, h, w, sum(m.shape[1] for m in maps))
        c0 = 0
        for m in maps:
            c, mh, mw = m.shape[1:]
            dst = out[..., c0:c0 + c]
            if h % mh == 0 and w % mw == 0:
                dst.view(b, mh, h // mh, mw, w // mw, c).copy_(m.permute(0, 2, 3, 1)[:, :, None, :, None])
            else:
                dst.copy_(F.interpolate(m.float(), size=(h, w), mode="nearest").permute(0, 2, 3, 1))
            c0 += c
        return out

    def _group(self, shapes: dict[str, tuple[int, int, int]], itemsize: int) -> int:
        """Training images per gallery group: their cached maps and their concatenated maps
        (plus one upsampled layer) fit chunk_mb."""
        return max(1, int(self.budget_bytes // _image_bytes(shapes, itemsize)))

    def fit(self, train) -> None:
        """Keep the training cache and its pooled vectors (SPADE has nothing to learn)."""
        if len(train) == 0:
            raise UserError("spade: the training split has no images")
        self.train = train
        self.train_vec = self._pooled(train)
        check_finite(self.train_vec, "spade training features")

    def _gallery(self, idx: np.ndarray) -> Iterator[torch.Tensor]:
        """Concatenated maps of training images `idx`, one (h * w, C) block per image, built a
        group of images at a time."""
        idx = np.sort(idx)
        step = self._group(self.train.shapes(self.layers), self.train.itemsize)
        for s in range(0, len(idx), step):
            part = idx[s:s + step]
            feats = {name: torch.from_numpy(np.asarray(self.train.array(name)[part], dtype=np.float32))
                     for name in self.layers}
            g = self._concat(feats)
            del feats
            yield from g.reshape(len(part), -1, g.shape[-1])
            del g

    def predict_bytes(self, shapes: dict[str, tuple[int, int, int]], n_test: int, n_train: int,
                      image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: baseline; one test batch and one gallery group (see _image_bytes);
        one distance tile; the grids, the anomaly maps and their finiteness mask."""
        shapes = {name: shapes[name] for name in self.layers}
        hw = max(s[1] * s[2] for s in shapes.values())
        images = min(self.batch_size, n_test) + min(self._group(shapes, itemsize), self.k, n_train)
        tile = 4.0 * max(1, min(hw, TILE_ELEMS // hw)) * hw
        return (BASELINE_BYTES + images * _image_bytes(shapes, itemsize) + tile + 4.0 * n_test * hw
                + maps_bytes(n_test, image_size) + n_test * image_size ** 2)

    def grid_scores(self, test) -> tuple[np.ndarray, np.ndarray]:
        """(N,) image scores and (N, h, w) patch scores before upsampling and blur."""
        if self.train_vec is None:
            raise RuntimeError("SPADE.predict before fit")
        k = min(self.k, self.train_vec.shape[0])
        shapes = test.shapes(self.layers)
        check_memory(self.predict_bytes(shapes, len(test), len(self.train), test.image_size, test.itemsize),
                     f"SPADE on {test.dir} ({len(test)} test images, K={k}, layers {shapes})",
                     "lower `spade.chunk_mb` (gallery maps built at once) or `spade.batch_size` (test images "
                     "per batch); the anomaly maps of the whole test set are a fixed part.")
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
                q = x[b].reshape(-1, x.shape[-1])
                d = knn_mean_distance(q, self._gallery(knn_idx[sl.start + b].numpy()), self.kappa)
                grids.append(d.view(x.shape[1], x.shape[2]))
        return scores.astype(np.float64), torch.stack(grids).numpy()

    def predict(self, test) -> tuple[np.ndarray, np.ndarray]:
        scores, grid = self.grid_scores(test)
        maps = anomaly_maps(grid, test.image_size, sigma=self.sigma)
        check_finite(scores, "spade image scores")
        check_finite(maps, "spade anomaly maps")
        return scores, maps
