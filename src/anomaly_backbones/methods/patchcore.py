"""PatchCore (Roth et al. 2022, "Towards Total Recall in Industrial Anomaly Detection").

Why: PatchCore is the strongest memory-bank method of the study; it keeps a greedy k-center
coreset of locally aggregated patch features and scores a test patch by its distance to
the nearest bank entry. Here it works on the feature cache, never on images.

Embedding, per patch: every chosen layer map gets a 3x3 average (avg_pool2d k=3, stride 1,
padding 1); deeper maps are upsampled (bilinear) to the largest chosen map and all are
concatenated along channels; if that gives more than `dim` channels, each patch vector is
reduced to `dim` by adaptive average pooling over channels (as the paper's code does).
With fewer channels than `dim` the vector is kept as it is (pooling "up" would only repeat
channels and reweight the distance).

Params (params["patchcore"], defaults in PatchCore.PARAMS):
- layers: "auto" or a list of cached layers. "auto" takes the top-level `layers` without its
  first (shallowest) entry when there are 3 or more (the paper's layer2+layer3 of a 4-stage
  net; e.g. [blocks.1, blocks.2, blocks.4] -> [blocks.2, blocks.4]), else all of them.
- coreset_ratio: fraction of training patches kept in the memory bank (0.1).
- coreset: "fast" (default) or "exact" greedy k-center, see coreset.py ("fast": bfloat16 updates
  where the hardware has them, else exact's float32: coreset_precision). Both run on a sparse
  random projection of the patches to `projection_dim` (128) dims, seeded; when the
  embedding has no more than `projection_dim` channels it is used unprojected.
- dim: channel cap of the patch vector (1024). neighbors: the paper's b for reweighting (9).
- projection_dim (128), batch_size (images per feature batch, 32), sigma (map blur, 4).

Scores: a test patch scores its Euclidean distance to the nearest bank vector (exact search,
chunked so memory stays bounded). Image score follows anomalib's
PatchcoreModel.compute_anomaly_score: take the patch with the largest distance s*, its
nearest bank vector m*, the `neighbors` bank vectors nearest to m* (m* itself first);
w = 1 - softmax(-)[m*] over the Euclidean distances from the test patch to those vectors,
i.e. 1 - exp(|m_test - m*|) / sum_{m in N_b(m*)} exp(|m_test - m|); score = w * s*
(neighbors == 1: score = s*). Map: patch distances -> bilinear to image size -> blur sigma 4.

Device: cached features are read on the host and moved to `self.device`; the projection (drawn
on the CPU from the seed, then moved), the greedy coreset, the bank and the nearest-neighbour
search run there; the start point of the coreset comes from a CPU generator, so both devices
start from the same patch. Scores and grids come back as host arrays; on the CPU every move is
a no-op (the same bits as before devices existed). GPU GEMMs round differently, so a GPU coreset
may pick other (equally far) centers; tests check the ROC-AUC agrees.

Fit and predict times and ROC-AUC of both coreset modes on the magnetic-tile split:
docs/performance.md ("PatchCore").
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..device import to_device
from ..errors import UserError
from ..resources import BASELINE_BYTES, native_bf16_cpu
from ..params.schema import Param
from .base import LAYERS, SIGMA, Method
from .common import check_finite, maps_bytes
from .coreset import UPDATE_BLOCK_ELEMS, coreset_size, greedy_batched, sparse_random_projection
from .knn import TILE_ELEMS, nearest
from .memory import Shapes

def reweighted_score(patch_dist: torch.Tensor, nn_idx: torch.Tensor, patches: torch.Tensor,
                     bank: torch.Tensor, neighbors: int, bank_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Paper's image score for one image: patch_dist (P,) Euclidean, nn_idx (P,), patches (P, C)."""
    i = int(torch.argmax(patch_dist))
    s_star = patch_dist[i]
    if neighbors <= 1:
        return s_star
    k = min(int(neighbors), bank.shape[0])
    j = int(nn_idx[i])
    bank_sq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    d_star = bank_sq - 2.0 * (bank @ bank[j]) + bank_sq[j]
    d_star[j] = -1.0  # m* itself is its own first neighbour, even among duplicates
    support = torch.topk(d_star, k, largest=False, sorted=True).indices
    d_test = ((bank[support] - patches[i]) ** 2).sum(1).sqrt()
    w = 1.0 - torch.softmax(d_test.double(), 0)[0]
    return (w * s_star.double()).to(patch_dist.dtype)


class PatchCore(Method):
    """Coreset memory bank of aggregated patch features; nearest-neighbour scoring."""

    name = "patchcore"
    PARAMS = {
        "layers": LAYERS,
        "coreset_ratio": Param(0.1, float, low=0, high=1, low_open=True),
        "coreset": Param("fast", str, choices=("fast", "exact")),
        "dim": Param(1024, int, low=1),
        "neighbors": Param(9, int, low=1),
        "projection_dim": Param(128, int, low=1),
        "batch_size": Param(32, int, low=1),
        "sigma": SIGMA,
    }
    RESOLVES_AUTO = ("layers",)   # from the top-level layers it is given (resolve_params)

    @classmethod
    def resolve_params(cls, group: dict, *, backbone: str, layers: list[str], shapes: dict | None) -> dict:
        """layers: "auto" -> `layers` without its first (shallowest) entry when there are 3 or
        more, else all of them; a list stays."""
        g = dict(group)
        if g["layers"] == "auto":
            g["layers"] = list(layers[1:]) if len(layers) >= 3 else list(layers)
        return g

    def coreset_precision(self) -> str:
        """The coreset's update precision: float32 for "exact"; for "fast", bfloat16 where the
        device multiplies it in hardware (a CPU with AVX512-BF16/AMX/ARM BF16, a GPU with bf16),
        else float32: emulated bfloat16 GEMMs are many times slower than float32 (docs/performance.md,
        "PatchCore"), and float32 picks exact's centres. So "fast" selects by CPU type, as every
        last digit here does."""
        if self.coreset != "fast":
            return "float32"
        if self.device.type == "cpu":
            return "bfloat16" if native_bf16_cpu() else "float32"
        if self.device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16"

    @classmethod
    def cached_layers(cls, group: dict, layers: list[str]) -> list[str]:
        return cls.resolve_params(group, backbone="", layers=layers, shapes=None)["layers"]

    def configure(self, p: dict) -> None:
        """`self.layers` becomes the method's own (resolved) layers among the top-level ones."""
        self.layers = self.resolve_params(p, backbone="", layers=self.layers, shapes=None)["layers"]
        self.ratio = p["coreset_ratio"]
        self.coreset = p["coreset"]
        self.dim, self.neighbors = p["dim"], p["neighbors"]
        self.projection_dim, self.batch_size, self.sigma = p["projection_dim"], p["batch_size"], p["sigma"]
        self.bank: torch.Tensor | None = None
        self.coreset_idx: torch.Tensor | None = None

    def embed(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[int, int]]:
        """{layer: (B, C, H, W)} -> ((B*h*w, C') patch vectors on self.device, (h, w)), rows image-major."""
        maps = [F.avg_pool2d(to_device(feats[name], self.device).float(), 3, 1, 1) for name in self.layers]
        h, w = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if tuple(m.shape[-2:]) == (h, w) else
                F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps]
        e = torch.cat(maps, 1)
        c = e.shape[1]
        e = e.permute(0, 2, 3, 1).reshape(-1, c)
        if c > self.dim:
            e = F.adaptive_avg_pool1d(e.unsqueeze(1), self.dim).squeeze(1)
        return e.contiguous(), (int(h), int(w))

    def _check(self, estimate: float, fs, what: str, fix: str) -> None:
        hw, c, p = self._sizes(fs.shapes(self.layers))
        self.guard(estimate, f"PatchCore {what} on {fs.dir} ({len(fs)} images x {hw} patches, {c} dims, "
                               f"coreset on {p} dims)", fix)

    def fit(self, train) -> None:
        """Project all training patches, pick the coreset, keep its full vectors as the bank."""
        n_img = len(train)
        if n_img == 0:
            raise UserError("patchcore: the training split has no images")
        self._check(self.fit_bytes(train.shapes(self.layers), n_img, train.itemsize), train, "fit",
                    "lower `patchcore.projection_dim` (all training patches are kept at that many dims) or choose "
                    "deeper `patchcore.layers` (fewer patches per image); `coreset_ratio` and `dim` shrink only "
                    "the bank.")
        x = proj = None
        for sl, feats in train.batches(self.layers, self.batch_size):
            e, hw = self.embed(feats)
            check_finite(e, "patchcore training features")
            if x is None:
                c, per_img = e.shape[1], hw[0] * hw[1]
                if c > self.projection_dim:
                    proj = to_device(sparse_random_projection(c, self.projection_dim, self.seed), self.device)
                x = torch.empty(n_img * per_img, proj.shape[1] if proj is not None else c, device=self.device)
            x[sl.start * per_img:sl.stop * per_img] = e @ proj if proj is not None else e
        n = x.shape[0]
        m = coreset_size(n, self.ratio)
        g = torch.Generator().manual_seed(self.seed)
        start = int(torch.randint(n, (1,), generator=g))
        precision = self.coreset_precision()
        if self.coreset == "fast" and precision == "float32":
            print(f"note: patchcore.coreset=fast runs in float32 on this {self.device.type} (no native bfloat16 "
                  f"matmul): the same selection as coreset=exact")
        with self.progress(m, "coreset", "center") as bar:
            idx = greedy_batched(x, m, start, precision=precision, copy=False, progress=bar.update)  # centres x in place
        del x
        self.coreset_idx = idx
        # second pass: full-dimensional vectors of the chosen patches
        order = torch.argsort(idx)
        sorted_idx = idx[order]
        bank = None
        for sl, feats in train.batches(self.layers, self.batch_size):
            lo, hi = sl.start * per_img, sl.stop * per_img
            a, b = torch.searchsorted(sorted_idx, torch.tensor([lo, hi])).tolist()
            if a == b:
                continue
            e, _ = self.embed(feats)
            if bank is None:
                bank = torch.empty(m, e.shape[1], device=self.device)
            bank[to_device(order[a:b], self.device)] = e[to_device(sorted_idx[a:b] - lo, self.device)]
        self.bank = bank.contiguous()
        self._bank_sq = (self.bank * self.bank).sum(1)

    def grid_scores(self, test) -> tuple[np.ndarray, np.ndarray]:
        """(N,) image scores and (N, h, w) patch distances before upsampling."""
        if self.bank is None:
            raise RuntimeError("PatchCore.predict before fit")
        self._check(self.predict_bytes(test.shapes(self.layers), len(test), self.bank.shape[0], test.image_size,
                                       test.itemsize), test, "predict",
                    "lower `patchcore.coreset_ratio` or `patchcore.dim` (the bank), or `patchcore.batch_size`; "
                    "the anomaly maps of the whole test set are a fixed part.")
        # results go into arrays made once (per-batch pieces fragment the heap, see SPADE.grid_scores)
        scores, grid = np.empty(len(test), np.float64), None
        bar = self.progress(len(test), "nearest-neighbour search", "img")
        for sl, feats in test.batches(self.layers, self.batch_size):
            e, (h, w) = self.embed(feats)
            check_finite(e, "patchcore test features")
            d2, nn_idx = nearest(e, self.bank)
            dist = d2.sqrt().view(-1, h * w)
            nn_idx = nn_idx.view(-1, h * w)
            e = e.view(dist.shape[0], h * w, -1)
            for b in range(dist.shape[0]):
                scores[sl.start + b] = float(reweighted_score(dist[b], nn_idx[b], e[b], self.bank, self.neighbors,
                                                              self._bank_sq))
            grid = torch.empty(len(test), h, w) if grid is None else grid
            grid[sl] = dist.view(-1, h, w).cpu()
            bar.update(sl.stop - sl.start)
        bar.close()
        return scores, grid.numpy()

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def _sizes(self, shapes: Shapes) -> tuple[int, int, int]:
        """(patches per image, channels of a bank vector, channels the coreset runs on)."""
        shapes = [shapes[name] for name in self.layers]
        hw = max(sh[1] * sh[2] for sh in shapes)
        c = min(sum(sh[0] for sh in shapes), self.dim)
        return hw, c, self.projection_dim if c > self.projection_dim else c

    def bank_rows(self, shapes: Shapes, n_img: int) -> int:
        """Rows of the memory bank a fit on `n_img` images keeps (coreset_ratio of their patches)."""
        return coreset_size(n_img * self._sizes(shapes)[0], self.ratio)

    def _batch_bytes(self, shapes: Shapes, itemsize: int) -> float:
        """One feature batch through embed: the cached maps (mapped pages, a float32 copy), their
        3x3 averages, the upsampled, concatenated and reshaped maps, the pooled and the projected
        vectors."""
        hw, c, p = self._sizes(shapes)
        full = sum(shapes[name][0] for name in self.layers)
        cached = sum(shapes[name][0] * shapes[name][1] * shapes[name][2] for name in self.layers)
        return self.batch_size * (cached * (8 + itemsize) + 4.0 * hw * (3 * full + c + p))

    def fit_bytes(self, shapes: Shapes, n_img: int, itemsize: int = 4) -> float:
        """Peak RSS of fit: the projected patches of all training images (n*h*w x p float32);
        during the coreset (which centres them in place) their bfloat16 copy ("fast"), per-patch
        norms, distances and temporaries, one distance block, and the heap glibc keeps from the
        first pass's batch temporaries; then the bank (coreset_ratio of the patches x min(C, dim))
        while a batch is embedded again."""
        hw, c, p = self._sizes(shapes)
        n = n_img * hw
        x = 4.0 * n * p
        bf16 = self.coreset_precision() == "bfloat16"
        low = 2.0 * n * p if bf16 else 0.0
        block = UPDATE_BLOCK_ELEMS * (2 if bf16 else 4)
        batch = self._batch_bytes(shapes, itemsize)
        cover = x + low + 20.0 * n + block + batch
        bank = 4.0 * self.bank_rows(shapes, n_img) * c
        return BASELINE_BYTES + max(x + batch, cover, bank + batch)

    def predict_bytes(self, shapes: Shapes, n_test: int, bank_rows: int, image_size: int,
                      itemsize: int = 4) -> float:
        """Peak RSS of predict: the bank and its norms, one embedded batch and its distance
        block, the grids, the anomaly maps and their finiteness mask."""
        hw, c, _ = self._sizes(shapes)
        return (BASELINE_BYTES + 4.0 * bank_rows * (c + 1) + self._batch_bytes(shapes, itemsize) + 4.0 * TILE_ELEMS
                + 4.0 * n_test * hw + maps_bytes(n_test, image_size) + n_test * image_size ** 2)
