"""A seeded hold-out of training images, and a FeatureSet view of some of its images.

split_holdout(n, fraction, seed) -> (fit indices, held-out indices), both sorted: round(fraction n)
images drawn without replacement by numpy's Generator(seed), the rest fit. fraction 0 holds out
nothing (and FeatureSubset is never built: the fit reads the FeatureSet itself, so every existing
result stays the same bytes).

fit_split(train, p) -> (the images the fit uses, the calibration images or None): with
`threshold.source` = validation the calibration images are the category's cached "validation"
split (all of train is fitted), else the hold-out above.

FeatureSubset(fs, idx) is a FeatureSet whose split is fs's rows idx (sorted): array(layer) is a
RowView that maps first-axis indices through idx and reads only those rows of the memory map, so
methods stream it in chunks exactly as they stream the full cache.
"""
from __future__ import annotations

import numpy as np

from .errors import UserError
from .features import FeatureSet


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held) sorted index arrays of range(n). UserError for a fraction outside [0, 1) or a
    split that leaves no image to fit."""
    fraction = float(fraction)
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"`threshold.holdout` = {fraction} must be in [0, 1) (the share of train/good held out "
                        f"for calibration); e.g. -S threshold.holdout=0.1")
    k = int(round(fraction * n))
    if k >= n:
        raise UserError(f"`threshold.holdout` = {fraction} holds out all {n} training images: lower it")
    held = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)) if k else np.zeros(0, np.int64)
    fit = np.setdiff1d(np.arange(n), held)
    return fit, held


class RowView:
    """Rows `idx` of an (N, ...) array, indexed like the array: view[i], view[a:b], view[a:b, :, lo:hi],
    view[int array]. Each read fetches only the rows it needs."""

    def __init__(self, base, idx: np.ndarray):
        self.base, self.idx = base, np.asarray(idx, dtype=np.int64)
        self.shape = (len(self.idx), *base.shape[1:])
        self.dtype = base.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows = self.idx[first]
        if np.ndim(rows) == 0:
            return self.base[(int(rows), *rest)]
        return np.asarray(self.base[(rows, *rest)])

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.base[self.idx])
        return a if dtype is None else a.astype(dtype)


class FeatureSubset(FeatureSet):
    """The rows idx of a FeatureSet (see the module docstring)."""

    def __init__(self, fs: FeatureSet, idx: np.ndarray):
        self.__dict__.update(fs.__dict__)
        self._fs, self.idx = fs, np.sort(np.asarray(idx, dtype=np.int64))

    def array(self, layer: str) -> RowView:   # type: ignore[override]
        return RowView(self._fs.array(layer), self.idx)

    def __len__(self) -> int:
        return int(self.idx.size)

    def pooled(self, layer: str) -> np.ndarray:
        return self._fs.pooled(layer)[self.idx]


def fit_split(train: FeatureSet, p: dict) -> tuple[FeatureSet, FeatureSet | None]:
    """(the images the fit uses, the held-out ones or None) per params `threshold.holdout` and
    `seed`. holdout 0: (train itself, None), so nothing changes for the default run.
    `threshold.source` = validation: (train itself, the cached validation split)."""
    if (p.get("threshold") or {}).get("source", "holdout") == "validation":
        if "n_validation" not in train.meta:
            raise UserError(f"`threshold.source` = validation but the feature cache {train.dir} has no validation "
                            f"split: re-run prepare and extract with it (dvc repro)")
        return train, FeatureSet(train.dir, "validation")
    frac = float((p.get("threshold") or {}).get("holdout", 0.0))
    if frac == 0.0:
        return train, None
    fit, held = split_holdout(len(train), frac, int(p["seed"]))
    if held.size == 0:
        raise UserError(f"`threshold.holdout` = {frac} of {len(train)} training images in {train.dir} is zero "
                        f"images: a threshold calibrated on zero held-out images means nothing; raise it to at "
                        f"least {1.0 / len(train):.3g}")
    return FeatureSubset(train, fit), FeatureSubset(train, held)
