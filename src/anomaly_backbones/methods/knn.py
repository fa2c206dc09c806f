"""k-nearest-neighbour image scores on pooled features, exact (brute force, float64).

dn2_scores is DN2 (Bergman, Cohen, Hoshen 2020) as PANDA and Mean-Shifted score: the sum of the
squared Euclidean distances to the k nearest training features (what faiss.IndexFlatL2 returns
and the authors sum). Differences are taken in float64 for every pair, so the result does not
depend on how rows are chunked and equals a brute-force k-NN bit for bit.

Device: `device` (default the CPU) says where the distances are computed. The same lines run on
numpy arrays on the CPU (numpy's float64 sums: the bits this module always gave) and on torch
float64 tensors on a GPU (`_smallest` is the one place the two spell an operation differently:
np.partition + sort, torch.topk); the scores come back as a host float64 array. The GPU's
float64 sums are ordered differently, so its scores agree to ~1e-15 relative, not bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

CHUNK_ELEMS = 2**24  # float64 differences held at once (128 MB)


def squared_distances(test, train, rows: slice):
    """(r, N_train) squared Euclidean distances of test[rows] to every training feature (float64
    numpy arrays, or float64 tensors on one device)."""
    if isinstance(test, torch.Tensor):
        d = test[rows, None, :] - train[None, :, :]
    else:
        d = test[rows, None, :].astype(np.float64) - train[None, :, :].astype(np.float64)
    return (d * d).sum(-1)


def _smallest(d, k: int):
    """The k smallest values of each row, in ascending order."""
    if isinstance(d, torch.Tensor):
        return torch.topk(d, k, dim=1, largest=False, sorted=True).values
    return np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)


def knn_scores(train: np.ndarray, test: np.ndarray, k: int, squared: bool = True, device=None) -> np.ndarray:
    """(N_test,) float64: the sum over the k nearest training features of the squared distance
    (squared=False: of the Euclidean distance, DOC's template matching with k = 1). `device`: a
    GPU computes there (see the module docstring); None or the CPU: numpy."""
    train, test = np.asarray(train), np.asarray(test)
    if len(train) < k:
        raise ValueError(f"k = {k} nearest neighbours need at least {k} training features, got {len(train)}")
    step = max(1, CHUNK_ELEMS // max(1, train.size))
    out = np.empty(len(test))
    gpu = device is not None and torch.device(device).type != "cpu"
    if gpu:
        train = torch.as_tensor(train, dtype=torch.float64, device=device)
        test = torch.as_tensor(test, dtype=torch.float64, device=device)
    for s in range(0, len(test), step):
        near = _smallest(squared_distances(test, train, slice(s, s + step)), k)
        if not squared:
            near = near.sqrt() if gpu else np.sqrt(near)
        total = near.sum(1)
        out[s:s + step] = total.cpu().numpy() if gpu else total
    return out


def dn2_scores(train: np.ndarray, test: np.ndarray, k: int = 2, device=None) -> np.ndarray:
    """DN2: sum of squared distances to the k nearest training features (k = 2 in PANDA)."""
    return knn_scores(train, test, k, squared=True, device=device)
