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
Magnetic-tile shapes (synthetic features, 761 train / 583 test, K=50 images of 56x56
positions x 176 dims; bench/memory.py spade), 2 shared cores: peak RSS 0.88 GiB (estimated
0.94), 0.92 s per test image; before the buffers were reused, 7.4 GiB (the heap grew ~11 MB
per test image) and 1.74 s, with identical values.

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


def _tile_rows(n: int, g: int) -> int:
    """Query rows per tile against a block of g gallery rows: never depends on the budget."""
    return max(1, min(n, TILE_ELEMS // g))


def knn_mean_distance(queries: torch.Tensor, blocks: Iterable[torch.Tensor], kappa: int,
                      buf: torch.Tensor | None = None) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its kappa nearest rows among all `blocks`.

    One GEMM per tile of (query rows, one block): the rows per tile depend only on the block's
    length, so grouping the gallery differently gives the same values. Tiles are written into
    `buf` (flat float32, grown if too small): a fresh 64 MiB array per tile costs page faults."""
    q_sq = (queries * queries).sum(1)
    n = queries.shape[0]
    kappa = int(kappa)
    best = torch.full((n, kappa), float("inf"))
    seen = 0
    buf = torch.empty(0) if buf is None else buf
    for block in blocks:
        g = block.shape[0]
        rows = _tile_rows(n, g)
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
    best = best[:, :min(kappa, seen)]  # fewer gallery rows than kappa: all of them (sorted, so finite first)
    return (best + q_sq.unsqueeze(1)).clamp_min_(0.0).sqrt_().mean(1)


def _grid(shapes: dict[str, tuple[int, int, int]]) -> tuple[int, int]:
    """(h, w) of the largest map: the grid every layer is upsampled to."""
    return max((tuple(s[1:]) for s in shapes.values()), key=lambda s: s[0] * s[1])


def _image_bytes(shapes: dict[str, tuple[int, int, int]], itemsize: int) -> float:
    """Memory one image takes while its maps are concatenated: its cached maps (mapped pages, a
    copy, a float32 copy unless the cache is float32), the (h, w, C) float32 result, and one
    upsampled layer where a scale factor is not an integer (F.interpolate's output)."""
    h, w = _grid(shapes)
    c = sum(s[0] for s in shapes.values())
    cached = sum(s[0] * s[1] * s[2] for s in shapes.values())
    odd = max([s[0] for s in shapes.values() if h % s[1] or w % s[2]], default=0)
    return 4.0 * h * w * (c + odd) + (2 * itemsize + (4 if itemsize != 4 else 0)) * cached


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

    def _concat(self, feats: dict[str, torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """{layer: (B, C, H, W)} -> (B, h, w, sum C) at the largest map, nearest upsampling.
        Each layer is written straight into its channel slice (of `out` when given); at an
        integer scale factor nearest upsampling is a broadcast copy (F.interpolate's values)."""
        maps = [feats[name] for name in self.layers]
        h, w = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        b = maps[0].shape[0]
        out = torch.empty(b, h, w, sum(m.shape[1] for m in maps)) if out is None else out[:b]
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
        """Training images per gallery group: what they take while concatenated (_image_bytes)
        fits chunk_mb."""
        return max(1, int(self.budget_bytes // _image_bytes(shapes, itemsize)))

    def fit(self, train) -> None:
        """Keep the training cache and its pooled vectors (SPADE has nothing to learn)."""
        if len(train) == 0:
            raise UserError("spade: the training split has no images")
        self.train = train
        self.train_vec = self._pooled(train)
        check_finite(self.train_vec, "spade training features")

    def _gallery(self, idx: np.ndarray, out: torch.Tensor) -> Iterator[torch.Tensor]:
        """Concatenated maps of training images `idx`, one (h * w, C) block per image, built a
        group of images at a time into `out` (group, h, w, C), which is reused."""
        idx = np.sort(idx)
        for s in range(0, len(idx), out.shape[0]):
            part = idx[s:s + out.shape[0]]
            feats = {name: torch.from_numpy(np.asarray(self.train.array(name)[part], dtype=np.float32))
                     for name in self.layers}
            g = self._concat(feats, out)
            del feats
            yield from g.reshape(len(part), -1, g.shape[-1])

    def predict_bytes(self, shapes: dict[str, tuple[int, int, int]], n_test: int, n_train: int,
                      image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: baseline; one test batch and one gallery group (see _image_bytes);
        one distance tile; the grids, the anomaly maps and their finiteness mask."""
        shapes = {name: shapes[name] for name in self.layers}
        h, w = _grid(shapes)
        hw = h * w
        images = min(self.batch_size, n_test) + min(self._group(shapes, itemsize), self.k, n_train)
        tile = 4.0 * _tile_rows(hw, hw) * hw
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
        h, w = _grid(shapes)
        # Buffers made once: small long-lived arrays allocated per image between large
        # short-lived ones fragment glibc's heap (measured: +11 MB RSS per test image).
        grid = torch.empty(len(test), h, w)
        group = min(self._group(self.train.shapes(self.layers), self.train.itemsize), k)
        gallery = torch.empty(group, h, w, sum(s[0] for s in shapes.values()))
        tile = torch.empty(_tile_rows(h * w, h * w) * h * w)
        for sl, feats in test.batches(self.layers, self.batch_size):
            x = self._concat(feats)
            check_finite(x, "spade test features")
            for b in range(x.shape[0]):
                q = x[b].reshape(-1, x.shape[-1])
                blocks = self._gallery(knn_idx[sl.start + b].numpy(), gallery)
                grid[sl.start + b] = knn_mean_distance(q, blocks, self.kappa, tile).view(h, w)
        return scores.astype(np.float64), grid.numpy()

    def predict(self, test) -> tuple[np.ndarray, np.ndarray]:
        scores, grid = self.grid_scores(test)
        maps = anomaly_maps(grid, test.image_size, sigma=self.sigma)
        check_finite(scores, "spade image scores")
        check_finite(maps, "spade anomaly maps")
        return scores, maps
