"""grid.upsample_concat: every path (new tensor, written in place through a permuted view, a range
of rows from partly loaded maps) equals nearest upsampling by floor(dst * in / out), bit for bit."""
from __future__ import annotations

import pytest
import torch

from anomaly_backbones.methods.grid import largest_grid, nearest_index, upsample_concat

SHAPES = [(3, 8, 8), (2, 4, 4), (5, 3, 3), (1, 8, 5)]   # factors 1, 2, 8/3 and a non-square one


def reference(maps: list[torch.Tensor], H: int, W: int) -> torch.Tensor:
    """(B, H, W, sum C) by explicit loops over output positions."""
    out = []
    for m in maps:
        _, c, h, w = m.shape
        up = torch.empty(m.shape[0], H, W, c)
        for y in range(H):
            for x in range(W):
                up[:, y, x] = m[:, :, (y * h) // H, (x * w) // W]
        out.append(up)
    return torch.cat(out, -1)


@pytest.fixture
def maps():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, *s, generator=g) for s in SHAPES]


def test_nearest_index_and_largest_grid():
    assert nearest_index(8, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert nearest_index(8, 3, 2, 5).tolist() == [0, 1, 1]
    assert largest_grid(SHAPES) == (8, 8) and largest_grid([(1, 2, 6), (1, 3, 3)]) == (2, 6)


def test_new_tensor_and_in_place_paths_equal_the_definition(maps):
    ref = reference(maps, 8, 8)
    cl = [m.permute(0, 2, 3, 1) for m in maps]
    assert torch.equal(upsample_concat(cl, (8, 8)), ref)
    out = torch.empty(2, 8, 8, ref.shape[-1])
    assert torch.equal(upsample_concat(cl, (8, 8), out=out), ref)
    other = torch.empty(8, 8, 2, ref.shape[-1])            # another memory layout, through a view
    upsample_concat(cl, (8, 8), out=other.permute(2, 0, 1, 3))
    assert torch.equal(other.permute(2, 0, 1, 3), ref)


@pytest.mark.parametrize("r0,r1", [(0, 8), (0, 3), (2, 5), (3, 4), (5, 8)])
def test_a_range_of_rows_from_partly_loaded_maps(maps, r0, r1):
    """What PaDiM's row chunks do: load only the source rows of grid rows r0:r1."""
    ref = reference(maps, 8, 8)[:, r0:r1]
    parts, heights = [], []
    for m in maps:
        h = m.shape[2]
        lo, hi = (r0 * h) // 8, ((r1 - 1) * h) // 8 + 1
        parts.append(m[:, :, lo:hi].permute(0, 2, 3, 1))
        heights.append(h)
    out = torch.empty(r1 - r0, 8, 2, ref.shape[-1])
    upsample_concat(parts, (8, 8), rows=(r0, r1), heights=heights, out=out.permute(2, 0, 1, 3))
    assert torch.equal(out.permute(2, 0, 1, 3), ref)
    assert torch.equal(upsample_concat(parts, (8, 8), rows=(r0, r1), heights=heights), ref)
    whole = [m.permute(0, 2, 3, 1) for m in maps]              # whole maps: no heights needed
    assert torch.equal(upsample_concat(whole, (8, 8), rows=(r0, r1)), ref)
