"""k-nearest-neighbour image scores on pooled features, exact (brute force, float64).

dn2_scores is DN2 (Bergman, Cohen, Hoshen 2020) as PANDA and Mean-Shifted score: the sum of the
squared Euclidean distances to the k nearest training features (what faiss.IndexFlatL2 returns
and the authors sum). Differences are taken in float64 for every pair, so the result does not
depend on how rows are chunked and equals a brute-force k-NN bit for bit.
"""
from __future__ import annotations

import numpy as np

CHUNK_ELEMS = 2**24  # float64 differences held at once (128 MB)


def squared_distances(test: np.ndarray, train: np.ndarray, rows: slice) -> np.ndarray:
    """(r, N_train) squared Euclidean distances of test[rows] to every training feature."""
    d = test[rows, None, :].astype(np.float64) - train[None, :, :].astype(np.float64)
    return (d * d).sum(-1)


def knn_scores(train: np.ndarray, test: np.ndarray, k: int, squared: bool = True) -> np.ndarray:
    """(N_test,) float64: the sum over the k nearest training features of the squared distance
    (squared=False: of the Euclidean distance, DOC's template matching with k = 1)."""
    train, test = np.asarray(train), np.asarray(test)
    if len(train) < k:
        raise ValueError(f"k = {k} nearest neighbours need at least {k} training features, got {len(train)}")
    step = max(1, CHUNK_ELEMS // max(1, train.size))
    out = np.empty(len(test))
    for s in range(0, len(test), step):
        d = squared_distances(test, train, slice(s, s + step))
        near = np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)
        out[s:s + step] = (near if squared else np.sqrt(near)).sum(1)
    return out


def dn2_scores(train: np.ndarray, test: np.ndarray, k: int = 2) -> np.ndarray:
    """DN2: sum of squared distances to the k nearest training features (k = 2 in PANDA)."""
    return knn_scores(train, test, k, squared=True)
