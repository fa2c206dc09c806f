"""Greedy k-center coreset selection for PatchCore: a reference loop, exact and fast modes.

Why: the textbook greedy (`greedy_reference`: take the point farthest from the chosen set,
update every point's distance, repeat) is one memory-bound matrix-vector pass over all
points per center: for m centers, m passes over the whole (n, d) array, which for the
hundreds of thousands of patches of a real training set takes far too long on a CPU
(docs/performance.md, "PatchCore").

`greedy_batched` makes the same choices with few passes. It keeps a pool of the `pool`
points now farthest from the chosen set; every point outside the pool is at most tau away
(tau = the best distance left out of the pool), and distances only shrink as centers are
added, so while the farthest pool point is still > tau it is the global argmax, i.e. exactly
the textbook pick. Picks are made inside the pool (updating pool distances only) until that
test fails; then every point is updated against the whole batch of new centers in blocked
matrix products (GEMM) and a new pool is taken. Late in the selection the farthest points lie
spread over the data, so most of a pool is picked per round (tens of rounds in all).

- precision "float32" ("exact" in PatchCore): same selection as the textbook loop, up to
  float rounding of exact ties (tests check identical indices against a float64 brute force).
- precision "bfloat16" ("fast", the default): the all-points update runs in bfloat16
  (a multiple of the fp32 GEMM rate on CPUs with AVX512-BF16; distance error ~0.2 % on
  average, the pool itself is kept in fp32), so a pick may be a near-farthest point. Its
  covering radius and ROC-AUC against exact's: docs/performance.md, "PatchCore".
Ties go to the lowest index; chosen points are marked -1 so exact duplicates (distance 0)
are still taken, in index order, before anything is chosen twice.

Device: every function runs where x is (its buffers are made on x.device); the selected
indices come back as a CPU tensor. bfloat16 GEMMs are native on recent GPUs too.
"""
from __future__ import annotations

import math

import torch

UPDATE_BLOCK_ELEMS = 1 << 25  # greedy_batched's distance block (rows x new centers): 128 MiB in float32

__all__ = ["coreset_size", "covering_radius", "greedy_batched", "greedy_reference", "sparse_random_projection"]


def coreset_size(n: int, ratio: float) -> int:
    """Number of centers for `ratio` of `n` points: at least 1, at most n."""
    return int(min(n, max(1, int(n * ratio))))


def sparse_random_projection(n_features: int, n_components: int, seed: int) -> torch.Tensor:
    """(n_features, n_components) sparse random matrix as in sklearn's SparseRandomProjection.

    Density 1/sqrt(n_features); nonzeros are +-sqrt(1/density)/sqrt(n_components), so squared
    distances are preserved in expectation. Seeded by `seed` alone (torch.Generator).
    """
    g = torch.Generator().manual_seed(int(seed))
    density = 1.0 / math.sqrt(n_features)
    u = torch.rand(n_features, n_components, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(n_features, n_components, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    value = math.sqrt(1.0 / density) / math.sqrt(n_components)
    return (torch.where(u < density, sign * value, 0.0)).to(torch.float32)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (tests compare with a float64 reference); anything else -> float32."""
    return x.contiguous() if x.dtype == torch.float64 else x.to(torch.float32).contiguous()


def _row_norms(x: torch.Tensor, rows: int = 65536) -> torch.Tensor:
    """(x * x).sum(1), the same values, by row blocks: no temporary the size of x."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for s in range(0, x.shape[0], rows):
        torch.sum(x[s:s + rows] * x[s:s + rows], 1, out=out[s:s + rows])
    return out


def _sqdist_to(x: torch.Tensor, xx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances of every row of x to one vector c (xx = row norms of x)."""
    return (xx - 2.0 * (x @ c) + c.dot(c)).clamp_min_(0.0)


def greedy_reference(x: torch.Tensor, m: int, start: int) -> torch.Tensor:
    """Textbook greedy k-center: start at `start`, then repeatedly take the farthest point.

    O(n * m * d), one pass over x per center. Ties go to the lowest index (torch.argmax).
    Returns m distinct indices, in selection order (duplicates of chosen points, at distance
    0, are taken in index order once everything else is covered).
    """
    x = _as_float(x)
    n = x.shape[0]
    m = min(int(m), n)
    xx = (x * x).sum(1)
    sel = torch.empty(m, dtype=torch.long)
    sel[0] = start
    dist = _sqdist_to(x, xx, x[start])
    dist[start] = -1.0  # chosen points are marked -1, so duplicates (distance 0) still come before them
    for i in range(1, m):
        j = int(torch.argmax(dist))
        sel[i] = j
        torch.minimum(dist, _sqdist_to(x, xx, x[j]), out=dist)
        dist[j] = -1.0
    return sel


def _update(dist: torch.Tensor, x: torch.Tensor, xx: torch.Tensor, centers: torch.Tensor,
            block_elems: int, low: torch.Tensor | None = None) -> None:
    """dist = min(dist, squared distance to the nearest of `centers`), one GEMM per row block.

    With `low` (a bfloat16 copy of x) the products run in bfloat16: faster than fp32 on CPUs
    with AVX512-BF16/AMX, at an error of about 2^-8 * |xx - d| per distance.
    """
    c = centers
    cc = (c * c).sum(1)
    rows = max(1, min(x.shape[0], max(8192, block_elems // max(1, c.shape[0]))))
    if low is not None:
        src, ct, cc = low, c.to(torch.bfloat16).t().contiguous(), cc.to(torch.bfloat16)
    else:
        src, ct = x, c.t().contiguous()
    # preallocated outputs: a fresh multi-MB tensor per block costs page faults (sys time)
    buf = torch.empty(rows, c.shape[0], dtype=src.dtype, device=x.device)
    vals = torch.empty(rows, dtype=src.dtype, device=x.device)
    pos = torch.empty(rows, dtype=torch.long, device=x.device)
    bias = cc.unsqueeze(0).expand(rows, -1)
    for s in range(0, x.shape[0], rows):
        e = min(s + rows, x.shape[0])
        r = e - s
        part = torch.addmm(bias[:r], src[s:e], ct, beta=1.0, alpha=-2.0, out=buf[:r])  # |c|^2 - 2 x.c
        torch.min(part, 1, out=(vals[:r], pos[:r]))
        best = vals[:r].to(dist.dtype).add_(xx[s:e]).clamp_min_(0.0)
        torch.minimum(dist[s:e], best, out=dist[s:e])


def greedy_batched(x: torch.Tensor, m: int, start: int, pool: int = 4096, precision: str = "float32",
                   block_elems: int = UPDATE_BLOCK_ELEMS, copy: bool = True, progress=None) -> torch.Tensor:
    """Greedy k-center with batched updates (see module docstring).

    precision "float32" (or float64 input): the same selection as `greedy_reference`.
    precision "bfloat16": the all-points update runs in bfloat16 (distances off by ~0.2 %
    on average), so a pick may be a near-farthest point instead of the farthest: fast mode.
    `pool`: candidates kept per round (more = larger batches, fewer passes over x);
    `block_elems`: size of one distance block (rows x new centers), bounds temporary memory.
    `copy=False` centres a float32 x in place (the caller's tensor changes): no second copy of
    what is usually the largest array of the process. `progress(k)` is called with the number of
    centers each round adds (a progress bar's update).
    """
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, not {precision!r}")
    x = _as_float(x)
    mean = x.mean(0)  # distances are unchanged by centring; smaller norms, smaller rounding error
    x = x - mean if copy else x.sub_(mean)
    n = x.shape[0]
    m = min(int(m), n)
    xx = _row_norms(x)
    low = x.to(torch.bfloat16) if precision == "bfloat16" else None
    sel: list[int] = [int(start)]
    dist = _sqdist_to(x, xx, x[start])
    dist[start] = -1.0
    pool = max(1, min(int(pool), n))
    while len(sel) < m:
        k = min(pool + 1, n)
        vals, idx = torch.topk(dist, k, largest=True, sorted=True)
        if k > pool:
            tau = float(vals[pool])
            vals, idx = vals[:pool], idx[:pool]
        else:
            tau = -1.0  # every point is in the pool; chosen ones are -1
        # lowest original index first, so argmax ties resolve as in greedy_reference
        order = torch.argsort(idx)
        idx, cd = idx[order], vals[order].clone()
        xc, xxc = x[idx], xx[idx]
        picks: list[int] = []
        while len(sel) + len(picks) < m:
            j = int(torch.argmax(cd))
            if not float(cd[j]) > tau:
                break
            picks.append(j)
            torch.minimum(cd, _sqdist_to(xc, xxc, xc[j]), out=cd)
            cd[j] = -1.0
        if not picks:
            # the farthest pool point ties with a point outside the pool: one plain step
            new = torch.tensor([int(torch.argmax(dist))], device=x.device)
        else:
            new = idx[torch.tensor(picks, device=x.device)]
        sel.extend(new.tolist())   # one device->host copy, not one per index
        if progress is not None:
            progress(len(new))
        _update(dist, x, xx, x[new], block_elems, low)
        dist[new] = -1.0
    return torch.tensor(sel[:m], dtype=torch.long)


def covering_radius(x: torch.Tensor, centers: torch.Tensor, block_elems: int = 1 << 24) -> float:
    """Max over points of the distance to the nearest selected center (the k-center objective)."""
    x = _as_float(x)
    xx = _row_norms(x)
    dist = torch.full((x.shape[0],), float("inf"), dtype=x.dtype, device=x.device)
    for s in range(0, len(centers), 4096):
        _update(dist, x, xx, x[centers[s:s + 4096]], block_elems)
    return float(dist.max().sqrt())
