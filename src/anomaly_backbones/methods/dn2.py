"""DN2 (Bergman, Cohen & Hoshen 2020, "Deep Nearest Neighbor Anomaly Detection"): an image's score
is the sum of its squared Euclidean distances to the k nearest training images, on pooled
features of a pretrained network (the scoring PANDA and Mean-Shifted Contrastive Loss keep).
Image-level: no anomaly map.

Features: the pooled `layers` (methods/pooled.py; auto = the backbone's last stage, ResNet
layer4 in the paper), as they are (the paper does not standardize). Exact search in float64
(methods/knn.py, shared with PANDA and Mean-Shifted, so PANDA with 0 epochs is DN2 exactly), on
`self.device` (the pooled vectors are read on the host). Params (params["dn2"]): k (2, the paper's and PANDA's), layers.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..resources import BASELINE_BYTES
from .knn import CHUNK_ELEMS, dn2_scores, tile_rows
from .memory import pooled_bytes
from ..params.schema import Param
from .pooled import POOLED_LAYERS, PooledMethod


class DN2(PooledMethod):
    """k-nearest-neighbour distance on pooled features."""

    name = "dn2"
    PARAMS = {"layers": POOLED_LAYERS, "k": Param(2, int, low=1, help="nearest training images")}

    def configure(self, p: dict) -> None:
        self.k = p["k"]
        self.bank = None

    def fit(self, train) -> None:
        """Keep the training vectors; k must not exceed their number."""
        if self.k > len(train):
            raise UserError(f"`dn2.k` = {self.k} is larger than the training set of {train.dir} ({len(train)} "
                            f"images); lower it")
        self.bank = self.vectors(train)

    def grid_scores(self, test) -> tuple[np.ndarray, None]:
        """(N,) sum of squared distances to the k nearest training vectors; no grid (image-level)."""
        if self.bank is None:
            raise RuntimeError("DN2.predict before fit")
        self.guard(self.predict_bytes(len(test), *self.bank.shape), f"DN2 predict on {test.dir} ({len(test)} images)",
                   "pool fewer channels (`dn2.layers`).")
        return dn2_scores(self.bank, self.vectors(test), self.k, self.device), None

    # -- memory: peak estimates for the guards (bench/memory.py prints them against the peaks)
    def predict_bytes(self, n_test: int, n_train: int, dim: int) -> float:
        """Peak RSS of predict: the bank and its float64 copy, the test vectors and theirs, one
        float64 distance tile (methods/knn.py) and the top-k of each of its rows."""
        rows = tile_rows(n_test, n_train, CHUNK_ELEMS)
        return (BASELINE_BYTES + 16.0 * n_train * dim + pooled_bytes(n_test, dim) + 8.0 * n_test * dim
                + 8.0 * rows * n_train + 32.0 * n_test * min(n_train, 64))
