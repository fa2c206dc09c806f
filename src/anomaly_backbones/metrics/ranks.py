"""The one sort every threshold metric shares: negatives sorted, positives ranked among them.

ROC-AUC, average precision, F1-max and AUPRO, with every distinct score a threshold, are all sums
over two counts per distinct positive score v: the negatives below v and the negatives tied with
v (the positives at or above v come from the positives' own sorted order). So the only pass that
costs is sorting the negatives, the large class at pixel level. They are split into contiguous
parts, each copied out and sorted by its own thread (numpy's sort and searchsorted release the
GIL); a count over all negatives is the sum of the parts' counts. Counts are exact integers, so
no result depends on the number of parts.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

VALUE_CHUNK = 2**20     # distinct positive scores counted at once: ~10 arrays of 8 bytes each, 80 MB
PARALLEL_FROM = 2**20   # scores from which the sort is split over threads


def threads() -> int:
    """Cores this process may use (affinity, not the machine's count), at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, n))


def _map(fn, items: list) -> list:
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def _order_key(v: float) -> int:
    """float32 -> int, monotone in the float's order (-0.0 just below +0.0)."""
    i = int(np.float32(v).view(np.int32))
    return i if i >= 0 else -(i & 0x7FFFFFFF) - 1


def _from_key(k: int) -> np.float32:
    bits = k if k >= 0 else (-k - 1) | 0x80000000
    return np.array(bits, np.uint32).view(np.float32)[()]


class SortedNegatives:
    """The negative scores, sorted, as a few parts; counts over all of them are sums over parts."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if p.size]
        self.n = sum(p.size for p in self.parts)

    def below_and_tied(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For ascending float32 `values`: negatives < each value, and negatives == each value (int64)."""
        def count(part):
            lo = np.searchsorted(part, values, "left")
            tied = np.zeros(values.size, np.int64)
            # ties only where a value equals the element at its insertion point (rare for continuous scores)
            eq = part[np.minimum(lo, part.size - 1)] == values
            if eq.any():
                tied[eq] = np.searchsorted(part, values[eq], "right") - lo[eq]
            return lo, tied
        below, tied = np.zeros(values.size, np.int64), np.zeros(values.size, np.int64)
        for lo, t in _map(count, self.parts):
            below += lo
            tied += t
        return below, tied

    def count_ge(self, v) -> int:
        return sum(p.size - int(np.searchsorted(p, v, "left")) for p in self.parts)

    def count_eq(self, v) -> int:
        return sum(int(np.searchsorted(p, v, "right") - np.searchsorted(p, v, "left")) for p in self.parts)

    def largest_below(self, v) -> np.float32 | None:
        """The largest negative < v, or None."""
        found = [p[i - 1] for p in self.parts if (i := int(np.searchsorted(p, v, "left"))) > 0]
        return max(found) if found else None

    def top_cut(self, fraction: float) -> np.float32:
        """The smallest float32 c with (negatives >= c) <= fraction * n: the negatives >= c are the
        largest whole set of distinct values that stays within that share (the FPR limit of AUPRO).
        Bisection over the floats' order (32 steps of one binary search per part)."""
        limit = fraction * self.n
        lo = _order_key(min(p[0] for p in self.parts))      # count_ge(min) = n
        hi = _order_key(max(p[-1] for p in self.parts)) + 1  # count_ge(above the max) = 0
        if self.count_ge(_from_key(lo)) <= limit:
            return _from_key(lo)
        while hi - lo > 1:                                   # invariant: lo fails, hi passes
            mid = (lo + hi) // 2
            if self.count_ge(_from_key(mid)) <= limit:
                hi = mid
            else:
                lo = mid
        return _from_key(hi)


def split_classes(labels: np.ndarray, scores: np.ndarray, parts: int | None = None, meanwhile=None
                  ) -> tuple[np.ndarray, SortedNegatives, object]:
    """The positive scores in their original order (a copy), the negatives sorted in parts, and
    meanwhile(positives): work on the positives done in this thread while other threads sort.

    labels: flat bool; scores: flat float32, same length. Each part is a contiguous range of
    elements whose negatives one thread copies out and sorts. parts: default one per usable core
    for a million scores or more, else one."""
    if parts is None:
        parts = threads() if scores.size >= PARALLEL_FROM else 1
    cuts = np.linspace(0, scores.size, max(1, parts) + 1).astype(np.int64)
    pos = scores[labels]

    def job(i):
        neg = scores[cuts[i]:cuts[i + 1]][~labels[cuts[i]:cuts[i + 1]]]
        neg.sort()
        return neg
    if parts == 1:
        return pos, SortedNegatives([job(0)]), meanwhile(pos) if meanwhile else None
    with ThreadPoolExecutor(parts) as pool:
        sorting = [pool.submit(job, i) for i in range(parts)]
        extra = meanwhile(pos) if meanwhile else None
        return pos, SortedNegatives([f.result() for f in sorting]), extra


def runs(sorted_values: np.ndarray) -> np.ndarray:
    """Start of each run of equal values in an ascending array, then its length: (runs + 1,) int64.
    -0.0 and +0.0 are one run, as in searchsorted."""
    change = np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1
    return np.concatenate(([0], change, [sorted_values.size])).astype(np.int64)


def ranked_chunks(pos_sorted: np.ndarray, negs: SortedNegatives):
    """Walks the distinct positive scores in ascending chunks of VALUE_CHUNK. Yields
    (first, values, below, tied): `first` the index in pos_sorted of each value's first positive,
    with one more entry (the end of the chunk's last run), and the counts of negatives below and
    tied with each value."""
    first = runs(pos_sorted)
    for a in range(0, first.size - 1, VALUE_CHUNK):
        f = first[a:a + VALUE_CHUNK + 1]
        values = pos_sorted[f[:-1]]
        below, tied = negs.below_and_tied(values)
        yield f, values, below, tied
