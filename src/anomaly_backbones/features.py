"""The feature cache: one .npy per (category, split, layer), shaped (N, C, H, W).

The extract stage writes it once per backbone; every method reads it through FeatureSet,
so changing a method or its params never runs the network again. Arrays are memory-mapped
and read in batches, so no method needs the whole cache in RAM.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import UserError

META = "meta.json"
POOLED = "pooled"       # <split>/pooled/<layer>.npy: (N, C) float32 global average pools (PooledWriter)
MAP_BYTES = 64 * 2**20  # most bytes of a cache file one strided read maps at once (FeatureSet.groups)


def layer_file(layer: str) -> str:
    return f"{layer}.npy"


class FeatureSet:
    """Read-only view of one category's cached features for one split ("train" or "test")."""

    def __init__(self, category_dir: str | Path, split: str):
        self.dir = Path(category_dir)
        meta_path = self.dir / META
        if not meta_path.exists():
            raise UserError(f"feature cache {self.dir} has no {META}: run the extract stage (dvc repro).")
        self.meta = json.loads(meta_path.read_text())
        self.split = split
        self.layers: list[str] = list(self.meta["layers"])
        self.image_size: int = int(self.meta["image_size"])
        self.itemsize: int = np.dtype(self.meta.get("dtype", "float32")).itemsize

    def array(self, layer: str) -> np.ndarray:
        """A fresh read-only memory map: callers drop it after each chunk, so pages they read
        leave the process's resident set instead of piling up to the size of the cache."""
        if layer not in self.layers:
            raise UserError(f"layer {layer!r} is not in the feature cache {self.dir} "
                            f"(cached: {self.layers}); add it to the `layers` param and re-run extract.")
        return np.load(self.dir / self.split / layer_file(layer), mmap_mode="r")

    def __len__(self) -> int:
        return int(self.meta[f"n_{self.split}"])

    def pooled(self, layer: str) -> np.ndarray:
        """(N, C) float32 global average pools of `layer` (meta.json's "pooled" lists the layers:
        every cached layer and the backbone's last stage, see PooledWriter)."""
        pooled = self.meta.get("pooled")
        if pooled is None:
            raise UserError(f"feature cache {self.dir} has no pooled features (an older extract); re-run the "
                            f"extract stage: dvc repro -f extract")
        if layer not in pooled:
            raise UserError(f"layer {layer!r} is not in the pooled feature cache {self.dir} (pooled: "
                            f"{list(pooled)}); add it to the `layers` param and re-run extract.")
        return np.load(self.dir / self.split / POOLED / layer_file(layer))

    def shape(self, layer: str) -> tuple[int, int, int]:
        return tuple(self.array(layer).shape[1:])  # type: ignore[return-value]

    def shapes(self, layers: list[str]) -> dict[str, tuple[int, int, int]]:
        return {layer: self.shape(layer) for layer in layers}

    def groups(self, layer: str) -> Iterator[slice]:
        """Image ranges of at most MAP_BYTES of `layer`'s file. A read of a few rows or channels
        of every image still maps whole pages (the kernel maps up to 64 KiB around each fault),
        so one read over all images would put the whole file in the resident set; read range by
        range, each through a fresh map."""
        a = self.array(layer)
        step = max(1, MAP_BYTES // max(1, a[0].nbytes))
        for s in range(0, a.shape[0], step):
            yield slice(s, min(s + step, a.shape[0]))

    def batches(self, layers: list[str] | None = None, batch_size: int = 32,
                channels: dict[str, np.ndarray] | None = None) -> Iterator[tuple[slice, dict[str, torch.Tensor]]]:
        """Yield (index slice, {layer: float32 tensor (B, C, H, W)}), optionally keeping only some channels."""
        layers = layers or self.layers
        n = len(self)
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            out = {}
            for layer in layers:
                a = self.array(layer)[sl]
                if channels is not None and layer in channels:
                    a = a[:, channels[layer]]
                out[layer] = torch.from_numpy(np.array(a, dtype=np.float32))  # a copy: cache maps are read-only
            yield sl, out


def all_finite(x: np.ndarray | torch.Tensor) -> bool:
    """Every value finite, by min and max (NaN propagates through both): one pass each and no
    mask as large as x, which on a GB-sized array costs more than the check."""
    if (x.numel() if isinstance(x, torch.Tensor) else x.size) == 0:
        return True
    return bool(np.isfinite(float(x.min())) and np.isfinite(float(x.max())))


class NpyStreams:
    """.npy files written by appending rows (header first, then raw rows), one per key, with the
    row count checked at close: an interrupted writer leaves files that `close` refuses."""

    def __init__(self):
        self._files: dict[tuple[str, ...], object] = {}
        self._rows: dict[tuple[str, ...], int] = {}
        self._expected: dict[tuple[str, ...], int] = {}

    def open(self, key: tuple[str, ...], path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        f = open(path, "wb")
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": tuple(map(int, shape))})
        self._files[key], self._rows[key], self._expected[key] = f, 0, int(shape[0])

    def append(self, key: tuple[str, ...], rows: np.ndarray) -> None:
        """Write C-contiguous `rows` as they are: the array's own buffer, not a bytes copy (a copy of
        each batch touches fresh memory every time, which costs more than the write itself)."""
        self._files[key].write(memoryview(rows).cast("B"))
        self._rows[key] += rows.shape[0]

    def close(self, where: Path) -> None:
        for key, f in self._files.items():
            f.close()
            if self._rows[key] != self._expected[key]:
                raise RuntimeError(f"{where}/{'/'.join(key)}: wrote {self._rows[key]} of {self._expected[key]} rows")
        self._files.clear()


class FeatureWriter:
    """Streams batches of layer maps into one category's cache; meta.json is written last.

    Plain appends to .npy files (header first), not memory maps, so written pages never
    count against the extract process's memory. A cache without meta.json is incomplete,
    so an interrupted extract is never trusted.
    """

    def __init__(self, category_dir: str | Path, meta: dict, dtype: str = "float32"):
        self.dir = Path(category_dir)
        self.meta = dict(meta)
        self.dtype = np.dtype(dtype)
        self.meta["dtype"] = self.dtype.name
        self._streams = NpyStreams()
        (self.dir / META).unlink(missing_ok=True)

    def open(self, split: str, n: int, shapes: dict[str, tuple[int, int, int]]) -> None:
        (self.dir / split).mkdir(parents=True, exist_ok=True)
        for layer, shp in shapes.items():
            self._streams.open((split, layer), self.dir / split / layer_file(layer), self.dtype, (n, *shp))
        self.meta.setdefault("shapes", {}).update({k: list(map(int, v)) for k, v in shapes.items()})
        self.meta[f"n_{split}"] = n

    def write(self, split: str, feats: dict[str, torch.Tensor | np.ndarray]) -> None:
        for layer, x in feats.items():
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if not all_finite(x):
                raise UserError(f"layer {layer!r} produced NaN/Inf features ({self.dir.name}, {split}); "
                                f"check the weights given by `init` and the input images.")
            with np.errstate(over="ignore"):   # an overflow is reported below, with the fix
                stored = np.ascontiguousarray(x, dtype=self.dtype)
            if stored is not x and not all_finite(stored):
                raise UserError(f"layer {layer!r} has features beyond the range of {self.dtype.name} (largest "
                                f"|value| {float(np.abs(x).max()):.3g}; {self.dir.name}, {split}); store the "
                                f"cache as float32: `extract.dtype=float32`.")
            self._streams.append((split, layer), stored)

    def close(self) -> None:
        self._streams.close(self.dir)
        (self.dir / META).write_text(json.dumps(self.meta, indent=1, sort_keys=True))


def global_pool(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, C, h, w) maps -> (B, C) float32 means over positions, summed in float64 by numpy (one
    thread: the bytes never depend on the thread count)."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return a.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)


class PooledWriter:
    """Streams one category's global average pools, (N, C) float32 per (split, layer), into
    <split>/pooled/<layer>.npy beside the layer maps (float32 whatever the cache dtype: a few KB
    per image). The image-level methods read them through FeatureSet.pooled; `close` returns
    {layer: C} for meta.json's "pooled", which FeatureWriter.close writes last."""

    def __init__(self, category_dir: str | Path):
        self.dir = Path(category_dir)
        self._streams = NpyStreams()
        self.channels: dict[str, int] = {}

    def open(self, split: str, n: int, channels: dict[str, int]) -> None:
        (self.dir / split / POOLED).mkdir(parents=True, exist_ok=True)
        for layer, c in channels.items():
            self._streams.open((split, POOLED, layer), self.dir / split / POOLED / layer_file(layer), np.float32, (n, c))
        self.channels.update({k: int(v) for k, v in channels.items()})

    def write(self, split: str, maps: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Pool each (B, C, h, w) map and append its rows."""
        for layer, x in maps.items():
            v = global_pool(x)
            if not all_finite(v):
                raise UserError(f"layer {layer!r} produced NaN/Inf features ({self.dir.name}, {split}); "
                                f"check the weights given by `init` and the input images.")
            self._streams.append((split, POOLED, layer), np.ascontiguousarray(v))

    def close(self) -> dict[str, int]:
        self._streams.close(self.dir)
        return dict(self.channels)
