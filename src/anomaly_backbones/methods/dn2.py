"""DN2 (Bergman, Cohen & Hoshen 2020, "Deep Nearest Neighbor Anomaly Detection"): an image's score
is the sum of its squared Euclidean distances to the k nearest training images, on pooled
features of a pretrained network (the scoring PANDA and Mean-Shifted Contrastive Loss keep).
Image-level: no anomaly map.

Features: the pooled `layers` (methods/pooled.py; auto = the backbone's last stage, ResNet
layer4 in the paper), as they are (the paper does not standardize). Exact search in float64,
in blocks of test rows. Params (params["dn2"]): k (2, the paper's and PANDA's), layers.
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from .memory import DN2Memory
from .pooled import PooledMethod

BLOCK_ELEMS = 1 << 22  # one block of squared distances: 4M float64 = 32 MiB


def knn_sq_sum(queries: np.ndarray, bank: np.ndarray, k: int, block_elems: int = BLOCK_ELEMS) -> np.ndarray:
    """(N,) sum of the k smallest squared Euclidean distances from each query row to the bank rows
    (|q|^2 - 2 q.b + |b|^2, clipped at 0), in blocks of rows."""
    bank_sq = np.einsum("ij,ij->i", bank, bank)
    out = np.empty(len(queries))
    rows = max(1, block_elems // max(1, len(bank)))
    for r0 in range(0, len(queries), rows):
        q = queries[r0:r0 + rows]
        d2 = bank_sq[None, :] - 2.0 * (q @ bank.T)
        d2 += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(d2, 0.0, out=d2)
        out[r0:r0 + rows] = np.partition(d2, k - 1, axis=1)[:, :k].sum(1)
    return out


class DN2(DN2Memory, PooledMethod):
    """k-nearest-neighbour distance on pooled features."""

    name = "dn2"

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
        return knn_sq_sum(self.vectors(test), self.bank, self.k), None
