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
        self._arrays: dict[str, np.ndarray] = {}

    def array(self, layer: str) -> np.ndarray:
        if layer not in self.layers:
            raise UserError(f"layer {layer!r} is not in the feature cache {self.dir} "
                            f"(cached: {self.layers}); add it to the `layers` param and re-run extract.")
        if layer not in self._arrays:
            self._arrays[layer] = np.load(self.dir / self.split / layer_file(layer), mmap_mode="r")
        return self._arrays[layer]

    def __len__(self) -> int:
        return int(self.array(self.layers[0]).shape[0])

    def shape(self, layer: str) -> tuple[int, int, int]:
        return tuple(self.array(layer).shape[1:])  # type: ignore[return-value]

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
                out[layer] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            yield sl, out


class FeatureWriter:
    """Streams batches of layer maps into one category's cache; meta.json is written last.

    A cache without meta.json is incomplete, so an interrupted extract is never trusted.
    """

    def __init__(self, category_dir: str | Path, meta: dict, dtype: str = "float32"):
        self.dir = Path(category_dir)
        self.meta = dict(meta)
        self.dtype = np.dtype(dtype)
        self.meta["dtype"] = self.dtype.name
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        self._filled: dict[str, int] = {}
        (self.dir / META).unlink(missing_ok=True)

    def open(self, split: str, n: int, shapes: dict[str, tuple[int, int, int]]) -> None:
        (self.dir / split).mkdir(parents=True, exist_ok=True)
        for layer, shp in shapes.items():
            self._arrays[(split, layer)] = np.lib.format.open_memmap(
                self.dir / split / layer_file(layer), mode="w+", dtype=self.dtype, shape=(n, *shp))
        self._filled[split] = 0
        self.meta.setdefault("shapes", {}).update({k: list(v) for k, v in shapes.items()})
        self.meta[f"n_{split}"] = n

    def write(self, split: str, feats: dict[str, torch.Tensor | np.ndarray]) -> None:
        start = self._filled[split]
        b = None
        for layer, x in feats.items():
            x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            if not np.isfinite(x).all():
                raise UserError(f"layer {layer!r} produced NaN/Inf features ({self.dir.name}, {split}); "
                                f"check the weights given by `init` and the input images.")
            b = x.shape[0]
            self._arrays[(split, layer)][start:start + b] = x
        self._filled[split] = start + (b or 0)

    def close(self) -> None:
        for (split, _), a in self._arrays.items():
            if self._filled[split] != a.shape[0]:
                raise RuntimeError(f"{self.dir}/{split}: wrote {self._filled[split]} of {a.shape[0]} rows")
            a.flush()
        self._arrays.clear()
        (self.dir / META).write_text(json.dumps(self.meta, indent=1, sort_keys=True))
