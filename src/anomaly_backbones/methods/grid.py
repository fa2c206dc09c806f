"""The feature grid: several layers' maps brought to the largest map and concatenated.

PaDiM, SPADE and the deployable PaDiM scorer (deploy.py) embed a position as the channels of
every chosen layer at that position, each layer upsampled by nearest neighbour to the largest
map ("the grid"). Nearest upsampling takes source index floor(dst * in / out), computed in
integers (exact for every size; F.interpolate computes it in floating point).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


def largest_grid(shapes: Iterable[Sequence[int]]) -> tuple[int, int]:
    """(H, W) of the largest of some (C, H, W) maps (by H * W; the first of equals)."""
    return tuple(max((tuple(s[-2:]) for s in shapes), key=lambda s: s[0] * s[1]))  # type: ignore[return-value]


def nearest_index(out_len: int, in_len: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Source indices of output positions start:stop when `in_len` values are upsampled to `out_len`."""
    return torch.arange(start, out_len if stop is None else stop) * in_len // out_len


def upsample_concat(maps: Sequence[torch.Tensor], size: tuple[int, int], out: torch.Tensor | None = None,
                    rows: tuple[int, int] | None = None, heights: Sequence[int] | None = None) -> torch.Tensor:
    """Nearest-upsample channels-last maps to `size` = (H, W) and concatenate their channels.

    maps: (B, h_i, w_i, C_i) each, any strides (a permuted view of a (B, C, h, w) map is fine).
    rows: (r0, r1) to produce only output rows r0:r1, e.g. PaDiM's row chunks. With `heights`
      (each map's full height h_i) the maps hold only the source rows those output rows need,
      floor(r0 * h_i / H) to floor((r1 - 1) * h_i / H) (what a reader of those rows loaded);
      without, they are whole maps.
    out: (B, r1 - r0 or H, W, sum C_i), any strides, written in place and returned (a permuted
      view lets the caller keep its own memory layout). Without `out` a new tensor is made by
      index gathers only, so the function traces and exports to ONNX (deploy.py).
    The values are copies of the inputs: every path gives the same bits."""
    H, W = size
    r0, r1 = rows if rows is not None else (0, H)
    heights = [m.shape[1] for m in maps] if heights is None else list(heights)
    first = [(r0 * h) // H if m.shape[1] < h else 0 for m, h in zip(maps, heights)]   # loaded rows start here
    if out is None:
        return torch.cat([m.index_select(1, (nearest_index(H, h, r0, r1) - lo).to(m.device))
                          .index_select(2, nearest_index(W, m.shape[2]).to(m.device))
                          for m, h, lo in zip(maps, heights, first)], -1)
    c0 = 0
    for m, h, lo in zip(maps, heights, first):
        w, c = m.shape[2:]
        dst = out[..., c0:c0 + c]
        ri = (nearest_index(H, h, r0, r1) - lo).tolist()
        cols = None if W % w == 0 else nearest_index(W, w).to(m.device)   # no-op on the CPU
        for r, src in enumerate(ri):             # row by row: whole (B, C) blocks per column
            row = m[:, src]                      # (B, w, C)
            if cols is None:                     # integer factor: a broadcast copy, no temporary
                f = W // w
                dst[:, r].unflatten(1, (w, f)).copy_(row.unsqueeze(2).expand(-1, -1, f, -1))
            else:
                dst[:, r].copy_(row.index_select(1, cols))
        c0 += c
    return out
