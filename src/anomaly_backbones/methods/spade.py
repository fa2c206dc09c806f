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
(a group of whole training images), and distances are computed one tile at a time
(knn.nearest_k), a tile being at most knn.TILE_ELEMS (64 MiB) of test positions x one gallery
image's positions, keeping a running top-kappa; the full positions x gallery matrix never exists. Tile shapes depend
only on the grid, never on chunk_mb or K, so the result is the same for every budget (BLAS
may round differently when a GEMM's shape changes). Cost is one GEMM over positions x
K*h*w x channels per test image (2 * h*w * K*h*w * C flops), exact, deterministic.
bench/memory.py spade measures the peak and time on the magnetic-tile shapes.

Device: cached features are read on the host and moved to `self.device`; the pooled vectors
and the image kNN (float64), the gallery, its tiles and the running top-kappa live there; scores
and grids come back as host arrays (on the CPU every move is a no-op: the same bits as before).

Params (params["spade"]): k (nearest training images), kappa (nearest gallery vectors per test
position), chunk_mb (gallery maps built at once), batch_size (test images per feature batch),
sigma (map blur).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ..device import to_device
from ..errors import UserError
from ..resources import BASELINE_BYTES
from ..params.schema import Param
from .base import SIGMA, Method
from .common import check_finite, maps_bytes
from .grid import largest_grid, upsample_concat
from .knn import knn_mean_distance, nearest_k, tile_rows
from .memory import Shapes

def spade_image_bytes(shapes: Shapes, itemsize: int) -> float:
    """Memory one image takes while its maps are concatenated: its cached maps (mapped pages, a
    copy, a float32 copy unless the cache is float32), the (h, w, C) float32 result, and (an
    upper bound) one upsampled layer where a scale factor is not an integer."""
    h, w = largest_grid(shapes.values())
    c = sum(s[0] for s in shapes.values())
    cached = sum(s[0] * s[1] * s[2] for s in shapes.values())
    odd = max([s[0] for s in shapes.values() if h % s[1] or w % s[2]], default=0)
    return 4.0 * h * w * (c + odd) + (2 * itemsize + (4 if itemsize != 4 else 0)) * cached


class SPADE(Method):
    """kNN over pooled image features, then kNN over the chosen images' positions."""

    name = "spade"
    PARAMS = {
        "k": Param(50, int, low=1, help="nearest training images"),
        "kappa": Param(1, int, low=1, help="nearest gallery vectors per test position"),
        "chunk_mb": Param(64.0, float, low=0, low_open=True, help="gallery maps built at once"),
        "batch_size": Param(16, int, low=1),
        "sigma": SIGMA,
    }

    def configure(self, p: dict) -> None:
        self.k, self.kappa, self.batch_size = p["k"], p["kappa"], p["batch_size"]
        self.budget_bytes, self.sigma = p["chunk_mb"] * 2**20, p["sigma"]
        self.train = None                       # SPADE makes no random choice: `seed` is unused
        self.train_vec: torch.Tensor | None = None

    def _deepest(self, fs) -> str:
        sizes = [fs.shape(name)[1] * fs.shape(name)[2] for name in self.layers]
        smallest = min(sizes)
        return [name for name, s in zip(self.layers, sizes) if s == smallest][-1]

    def _pooled(self, fs) -> torch.Tensor:
        """(N, C) float64 global average of the deepest layer, on self.device."""
        deep = self._deepest(fs)
        out = [to_device(f[deep], self.device).double().mean((2, 3)) for _, f in fs.batches([deep], 64)]
        return torch.cat(out)

    def _concat(self, feats: dict[str, torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
        """{layer: (B, C, H, W)} -> (B, h, w, sum C) at the largest map (grid.upsample_concat),
        written into `out` when given (else made on self.device)."""
        maps = [to_device(feats[name], self.device) for name in self.layers]
        h, w = largest_grid(m.shape for m in maps)
        b = maps[0].shape[0]
        out = torch.empty(b, h, w, sum(m.shape[1] for m in maps), device=self.device) if out is None else out[:b]
        return upsample_concat([m.permute(0, 2, 3, 1) for m in maps], (h, w), out=out)

    def _group(self, shapes: dict[str, tuple[int, int, int]], itemsize: int) -> int:
        """Training images per gallery group: what they take while concatenated (spade_image_bytes)
        fits chunk_mb."""
        return max(1, int(self.budget_bytes // spade_image_bytes(shapes, itemsize)))

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

    def grid_scores(self, test) -> tuple[np.ndarray, np.ndarray]:
        """(N,) image scores and (N, h, w) patch scores before upsampling and blur."""
        if self.train_vec is None:
            raise RuntimeError("SPADE.predict before fit")
        k = min(self.k, self.train_vec.shape[0])
        shapes = test.shapes(self.layers)
        self.guard(self.predict_bytes(shapes, len(test), len(self.train), test.image_size, test.itemsize),
                   f"SPADE on {test.dir} ({len(test)} test images, K={k}, layers {shapes})",
                   "lower `spade.chunk_mb` (gallery maps built at once) or `spade.batch_size` (test images "
                   "per batch); the anomaly maps of the whole test set are a fixed part.")
        test_vec = self._pooled(test)
        check_finite(test_vec, "spade test features")
        knn_d2, knn_idx = nearest_k(test_vec, [self.train_vec], k)   # float64, small
        scores, knn_idx = knn_d2.mean(1).cpu().numpy(), knn_idx.cpu()
        h, w = largest_grid(shapes.values())
        # Buffers made once: small long-lived arrays allocated per image between large
        # short-lived ones fragment glibc's heap (the RSS then grows with every test image).
        grid = torch.empty(len(test), h, w)
        group = min(self._group(self.train.shapes(self.layers), self.train.itemsize), k)
        gallery = torch.empty(group, h, w, sum(s[0] for s in shapes.values()), device=self.device)
        tile = torch.empty(tile_rows(h * w, h * w) * h * w, device=self.device)
        bar = self.progress(len(test), "gallery search", "img")
        for sl, feats in test.batches(self.layers, self.batch_size):
            x = self._concat(feats)
            check_finite(x, "spade test features")
            for b in range(x.shape[0]):
                q = x[b].reshape(-1, x.shape[-1])
                blocks = self._gallery(knn_idx[sl.start + b].numpy(), gallery)
                grid[sl.start + b] = knn_mean_distance(q, blocks, self.kappa, tile).view(h, w).cpu()
                bar.update(1)
        bar.close()
        return scores.astype(np.float64), grid.numpy()

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def predict_bytes(self, shapes: Shapes, n_test: int, n_train: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: one test batch and one gallery group (spade_image_bytes each
        image); one distance tile; the grids, the anomaly maps and their finiteness mask."""
        shapes = {name: shapes[name] for name in self.layers}
        h, w = largest_grid(shapes.values())
        hw = h * w
        images = min(self.batch_size, n_test) + min(self._group(shapes, itemsize), self.k, n_train)
        tile = 4.0 * tile_rows(hw, hw) * hw
        return (BASELINE_BYTES + images * spade_image_bytes(shapes, itemsize) + tile + 4.0 * n_test * hw
                + maps_bytes(n_test, image_size) + n_test * image_size ** 2)
