"""Peak-RSS estimates of each method's fit and predict, for the memory guards.

One mixin per method, kept apart from the algorithms: each estimate adds up the arrays its step
holds at its peak (BASELINE_BYTES for the process itself). bench/memory.py prints every estimate
against the peak it predicts; tests/test_memory.py checks each grows with the params it names.
Shapes are {layer: (C, H, W)} of the feature cache; `itemsize` is the cache's dtype size.
"""
from __future__ import annotations

from ..features import MAP_BYTES
from ..resources import BASELINE_BYTES
from .common import maps_bytes
from .coreset import UPDATE_BLOCK_ELEMS, coreset_size
from .grid import largest_grid

Shapes = dict[str, tuple[int, int, int]]


class PaDiMMemory:
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
        from .padim import PRODUCT_SPLIT

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


def spade_image_bytes(shapes: Shapes, itemsize: int) -> float:
    """Memory one image takes while its maps are concatenated: its cached maps (mapped pages, a
    copy, a float32 copy unless the cache is float32), the (h, w, C) float32 result, and (an
    upper bound) one upsampled layer where a scale factor is not an integer."""
    h, w = largest_grid(shapes.values())
    c = sum(s[0] for s in shapes.values())
    cached = sum(s[0] * s[1] * s[2] for s in shapes.values())
    odd = max([s[0] for s in shapes.values() if h % s[1] or w % s[2]], default=0)
    return 4.0 * h * w * (c + odd) + (2 * itemsize + (4 if itemsize != 4 else 0)) * cached


class SPADEMemory:
    def predict_bytes(self, shapes: Shapes, n_test: int, n_train: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: one test batch and one gallery group (spade_image_bytes each
        image); one distance tile; the grids, the anomaly maps and their finiteness mask."""
        from .spade import tile_rows

        shapes = {name: shapes[name] for name in self.layers}
        h, w = largest_grid(shapes.values())
        hw = h * w
        images = min(self.batch_size, n_test) + min(self._group(shapes, itemsize), self.k, n_train)
        tile = 4.0 * tile_rows(hw, hw) * hw
        return (BASELINE_BYTES + images * spade_image_bytes(shapes, itemsize) + tile + 4.0 * n_test * hw
                + maps_bytes(n_test, image_size) + n_test * image_size ** 2)


class PatchCoreMemory:
    def _sizes(self, shapes: Shapes) -> tuple[int, int, int]:
        """(patches per image, channels of a bank vector, channels the coreset runs on)."""
        shapes = [shapes[name] for name in self.layers]
        hw = max(sh[1] * sh[2] for sh in shapes)
        c = min(sum(sh[0] for sh in shapes), self.dim)
        return hw, c, self.projection_dim if c > self.projection_dim else c

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
        low = 2.0 * n * p if self.coreset == "fast" else 0.0
        block = UPDATE_BLOCK_ELEMS * (2 if self.coreset == "fast" else 4)
        batch = self._batch_bytes(shapes, itemsize)
        cover = x + low + 20.0 * n + block + batch
        bank = 4.0 * coreset_size(n, self.ratio) * c
        return BASELINE_BYTES + max(x + batch, cover, bank + batch)

    def predict_bytes(self, shapes: Shapes, n_test: int, bank_rows: int, image_size: int,
                      itemsize: int = 4) -> float:
        """Peak RSS of predict: the bank and its norms, one embedded batch and its distance
        block, the grids, the anomaly maps and their finiteness mask."""
        from .patchcore import BLOCK_ELEMS

        hw, c, _ = self._sizes(shapes)
        return (BASELINE_BYTES + 4.0 * bank_rows * (c + 1) + self._batch_bytes(shapes, itemsize) + 4.0 * BLOCK_ELEMS
                + 4.0 * n_test * hw + maps_bytes(n_test, image_size) + n_test * image_size ** 2)


class CFlowMemory:
    def _flow_floats(self, c: int) -> tuple[int, int]:
        """(parameters, activations per fiber) of one layer's flow of c channels. Per block the
        subnet input (d1 + P), its hidden layer before and after ReLU (2 x 2(d1 + P)), the
        coefficients and the coupling's intermediates (~8 x d2), the output and its affine (4 c)."""
        d1, d2 = c - c // 2, c // 2
        hid = d1 + self.condition_vector
        params = hid * 2 * hid + 2 * hid + 2 * hid * 2 * d2 + 2 * d2 + 2 * c
        return self.coupling_blocks * params, self.coupling_blocks * (5 * hid + 8 * d2 + 4 * c)

    def _batch_bytes(self, shapes: Shapes, itemsize: int) -> float:
        """The largest layer's feature batch: its cached maps (mapped pages, a copy, a float32
        copy), its fibers, their position index and random order (int64)."""
        return self.batch_size * max(c * h * w * (8 + 2 * itemsize) + 16.0 * h * w for c, h, w in shapes.values())

    def fit_bytes(self, shapes: Shapes, itemsize: int = 4) -> float:
        """Peak RSS of fit: the flows with their gradients and Adam's two moments (4 x params),
        the positional encodings, one feature batch, and one step's activations kept for the
        backward pass plus their gradients (2 x fiber_batch_size x activations per fiber)."""
        shapes = {name: shapes[name] for name in self.layers}
        params = sum(self._flow_floats(c)[0] for c, _, _ in shapes.values())
        step = max(self._flow_floats(c)[1] for c, _, _ in shapes.values())
        cond = sum(h * w for _, h, w in shapes.values()) * self.condition_vector
        return (BASELINE_BYTES + 16.0 * params + 4.0 * cond + self._batch_bytes(shapes, itemsize)
                + 8.0 * self.fiber_batch_size * step)

    def predict_bytes(self, shapes: Shapes, n_test: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of predict: the flows; one test batch (all layers' maps, then per layer its
        fibers and repeated positional encodings) and one forward pass of EVAL_FIBERS fibers;
        the log-likelihoods of all test images (then one layer's in float64); then the maps: the
        summed map, one layer's upsampled map, the output, a chunk's blur temporaries and the heap
        glibc keeps between them (six maps' worth), and the finiteness mask."""
        from .cflow import EVAL_FIBERS

        shapes = {name: shapes[name] for name in self.layers}
        params = sum(self._flow_floats(c)[0] for c, _, _ in shapes.values())
        b = min(self.batch_size, n_test)
        cached = sum(c * h * w for c, h, w in shapes.values())
        batch = b * (cached * (4 + itemsize) + 4.0 * max((c + self.condition_vector) * h * w
                                                        for c, h, w in shapes.values()))
        forward = 4.0 * min(EVAL_FIBERS, b * max(h * w for _, h, w in shapes.values())) * max(
            self._flow_floats(c)[1] // self.coupling_blocks for c, _, _ in shapes.values())
        grids = 4.0 * n_test * sum(h * w for _, h, w in shapes.values()) + 12.0 * n_test * max(
            h * w for _, h, w in shapes.values())
        maps = n_test * image_size ** 2 * (4.0 * 6 + 1)
        return BASELINE_BYTES + 4.0 * params + grids + max(batch + forward, maps)


LIBSVM_CACHE_MB = 200.0  # libsvm's kernel cache (scikit-learn's default cache_size), OC-SVM and SVDD


def pooled_bytes(n: int, dim: int) -> float:
    """n pooled vectors of dim channels as the one-class methods hold them: the float32 reads,
    their float64 concatenation and a standardized copy."""
    return 20.0 * n * dim


class OCSVMMemory:
    def fit_bytes(self, n: int, dim: int) -> float:
        """Peak RSS of fit: the training vectors and libsvm's kernel cache (float32 kernel rows,
        at most LIBSVM_CACHE_MB)."""
        return BASELINE_BYTES + pooled_bytes(n, dim) + min(4.0 * n * n, LIBSVM_CACHE_MB * 2**20)

    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the test vectors and the support vectors (at most all training ones)."""
        return BASELINE_BYTES + pooled_bytes(n_test, dim) + 8.0 * n_train * dim


class SVDDMemory:
    def fit_bytes(self, n: int, dim: int) -> float:
        """Peak RSS of fit: the training vectors, the (n, n) float64 kernel matrix (turned into
        the solver's matrix in place) with the distance matrix the RBF kernel is computed from,
        and libsvm's kernel cache."""
        return BASELINE_BYTES + pooled_bytes(n, dim) + 16.0 * n * n + min(4.0 * n * n, LIBSVM_CACHE_MB * 2**20)

    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the test and support vectors, the (n_test, support) kernel and
        its distance matrix."""
        return BASELINE_BYTES + pooled_bytes(n_test, dim) + 8.0 * n_train * dim + 16.0 * n_test * n_train


class DN2Memory:
    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the bank, the test vectors, one chunk of float64 differences
        (methods/knn.py) and its squared distances with their partitioned copy."""
        from .knn import CHUNK_ELEMS

        rows = max(1, CHUNK_ELEMS // max(1, n_train * dim))
        return (BASELINE_BYTES + 8.0 * n_train * dim + pooled_bytes(n_test, dim)
                + 16.0 * min(n_test, rows) * n_train * (dim + 2))
