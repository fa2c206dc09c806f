"""The one k-nearest-neighbour search: every method's k-NN goes through `nearest_k`.

    d2, idx = nearest_k(queries, blocks, k)   # (n, k) squared Euclidean distances, ascending, and
                                              # the rows' indices in the concatenation of `blocks`

Used by SPADE (the image kNN on pooled features; the gallery search of each test position,
`knn_mean_distance`), PatchCore (each patch's nearest bank row, `nearest`), DN2 and the training
methods' scores (PANDA, Mean-Shifted, DOC: `knn_scores`, `dn2_scores`).

How: per tile of (query rows, one block) one GEMM gives |b|^2 - 2 q.b, the running k smallest
are merged block by block, and |q|^2 is added at the end (clamped at 0: rounding can make a
tiny distance negative). The rows per tile depend only on the block's length, so how the gallery
is grouped into blocks never changes a value; a tile holds at most TILE_ELEMS distances and is
written into `buf` when given (a fresh 64 MiB array per tile costs page faults). Ties keep the
lower index. The queries' dtype is the arithmetic's: float32 for the maps of SPADE and
PatchCore, float64 for the image scores (DN2 and the training methods: within ~1e-12 relative
of a brute-force sum of squared differences, tests/test_training.py).

Device: the tensors' device. `knn_scores` takes numpy arrays and a `device` (None or the CPU:
computed on the CPU) and returns a host float64 array.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

TILE_ELEMS = 1 << 24  # one distance tile: at most 16M values (64 MiB in float32)
CHUNK_ELEMS = TILE_ELEMS   # knn_scores' tile, in float64 (128 MB); memory estimates read it


def tile_rows(n: int, g: int, elems: int = TILE_ELEMS) -> int:
    """Query rows per tile against a block of g rows: never depends on how blocks are grouped."""
    return max(1, min(n, elems // max(1, g)))


def nearest_k(queries: torch.Tensor, blocks: Iterable[torch.Tensor], k: int, buf: torch.Tensor | None = None,
              elems: int = TILE_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, min(k, rows)) squared Euclidean distances of each query row to its k nearest rows among
    all `blocks` (ascending), and their indices in the blocks' concatenation (see the module
    docstring). `elems`: the largest tile."""
    q_sq = (queries * queries).sum(1)
    n, k = queries.shape[0], int(k)
    best = torch.full((n, k), float("inf"), dtype=queries.dtype, device=queries.device)
    arg = torch.zeros((n, k), dtype=torch.long, device=queries.device)
    seen = 0
    buf = torch.empty(0, dtype=queries.dtype, device=queries.device) if buf is None else buf
    for block in blocks:
        g = block.shape[0]
        rows = tile_rows(n, g, elems)
        if buf.numel() < rows * g:
            buf = torch.empty(rows * g, dtype=queries.dtype, device=queries.device)
        b_sq = (block * block).sum(1).unsqueeze(0)
        bt = block.t()
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            d2 = torch.addmm(b_sq, queries[r0:r1], bt, beta=1.0, alpha=-2.0, out=buf[:(r1 - r0) * g].view(r1 - r0, g))
            if k == 1:
                v, i = d2.min(1)
                better = v < best[r0:r1, 0]   # strict: ties keep the lower index
                best[r0:r1, 0] = torch.where(better, v, best[r0:r1, 0])
                arg[r0:r1, 0] = torch.where(better, i + seen, arg[r0:r1, 0])
            else:
                cv, ci = torch.topk(d2, min(k, g), dim=1, largest=False, sorted=True)
                mv = torch.cat([best[r0:r1], cv], 1)
                mi = torch.cat([arg[r0:r1], ci + seen], 1)
                v, j = torch.topk(mv, k, dim=1, largest=False, sorted=True)
                best[r0:r1], arg[r0:r1] = v, torch.gather(mi, 1, j)
        seen += g
    keep = min(k, seen)   # fewer rows than k: all of them (sorted, so the finite ones first)
    return (best[:, :keep] + q_sq.unsqueeze(1)).clamp_min_(0.0), arg[:, :keep]


def knn_mean_distance(queries: torch.Tensor, blocks: Iterable[torch.Tensor], kappa: int,
                      buf: torch.Tensor | None = None) -> torch.Tensor:
    """SPADE's pixel score: the mean Euclidean distance of each query row to its kappa nearest
    rows among all `blocks`."""
    return nearest_k(queries, blocks, kappa, buf)[0].sqrt_().mean(1)


def nearest(queries: torch.Tensor, bank: torch.Tensor,
            block_elems: int = TILE_ELEMS) -> tuple[torch.Tensor, torch.Tensor]:
    """PatchCore's search: (n,) squared Euclidean distance and index of each query's nearest bank
    row, the bank taken in blocks of block_elems // 1024 rows."""
    cols = min(bank.shape[0], max(1, block_elems // 1024))
    d2, idx = nearest_k(queries, bank.split(cols), 1, elems=block_elems)
    return d2[:, 0], idx[:, 0]


def knn_scores(train: np.ndarray, test: np.ndarray, k: int, squared: bool = True, device=None) -> np.ndarray:
    """(N_test,) float64: the sum over the k nearest training features of the squared distance
    (squared=False: of the Euclidean distance, DOC's template matching with k = 1), computed in
    float64 on `device` (None: the CPU)."""
    train, test = np.asarray(train), np.asarray(test)
    if len(train) < k:
        raise ValueError(f"k = {k} nearest neighbours need at least {k} training features, got {len(train)}")
    dev = torch.device("cpu" if device is None else device)
    tr = torch.as_tensor(train, dtype=torch.float64).to(dev)
    te = torch.as_tensor(test, dtype=torch.float64).to(dev)
    d2 = nearest_k(te, [tr], k, elems=CHUNK_ELEMS)[0]
    return (d2 if squared else d2.sqrt()).sum(1).cpu().numpy()


def dn2_scores(train: np.ndarray, test: np.ndarray, k: int = 2, device=None) -> np.ndarray:
    """DN2 (Bergman, Cohen, Hoshen 2020) as PANDA and Mean-Shifted score: the sum of the squared
    Euclidean distances to the k nearest training features (what faiss.IndexFlatL2 returns and
    the authors sum; k = 2 in PANDA)."""
    return knn_scores(train, test, k, squared=True, device=device)
