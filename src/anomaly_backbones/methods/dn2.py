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
from .knn import dn2_scores
from .memory import DN2Memory
from .pooled import PooledMethod


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
        return dn2_scores(self.bank, self.vectors(test), self.k, self.device), None
