"""A deployable PaDiM: one nn.Module from raw pixels to (anomaly map, image score), its ONNX export,
and batch-1 latency timing (the `latency` stage).

The study's stages cache features and score whole test sets in batches; a deployment scores one
image end to end. PadimScorer chains the backbone trunk (cut after the deepest PaDiM layer) and a
fitted PaDiM's head with the same input normalization, nearest resampling to the grid, R_d channels,
Mahalanobis distance and upsampling + blur, so its output equals PaDiM.predict's for the same image.
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .backbones import Backbone, normalize
from .backbones.ort_extractor import ort_session, trunk
from .errors import UserError
from .methods.common import upsample_blur
from .methods.grid import upsample_concat
from .methods.padim import PaDiM


class PadimScorer(nn.Module):
    """image (B, 3, S, S), uint8 pixels or already normalized float -> (maps (B, S, S), scores (B,))."""

    def __init__(self, backbone: Backbone, padim: PaDiM, image_size: int):
        super().__init__()
        self.layers = [layer for layer in padim.layers if len(padim.channels[layer])]  # R_d may skip a layer
        self.trunk = trunk(backbone.model, self.layers, backbone.name)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean, dtype=torch.float32))
        self.register_buffer("pixel_std", torch.tensor(backbone.std, dtype=torch.float32))
        H, W = padim.grid
        self.grid, self.size, self.sigma = (int(H), int(W)), int(image_size), float(padim.sigma)
        for i, layer in enumerate(self.layers):
            self.register_buffer(f"ch{i}", torch.as_tensor(padim.channels[layer], dtype=torch.long))
        self.register_buffer("mu", padim.mean)                          # (d, H*W), shared with padim
        self.register_buffer("inv_cov", padim.inv_cov)                  # (H*W, d, d), shared, not copied

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize(image, self.pixel_mean, self.pixel_std) if image.dtype == torch.uint8 else image
        feats = self.trunk(x)
        # R_d channels of each layer, channels last, then nearest to the grid exactly as PaDiM reads the cache
        e = upsample_concat([feats[layer].index_select(1, getattr(self, f"ch{i}")).permute(0, 2, 3, 1)
                             for i, layer in enumerate(self.layers)], self.grid)                 # (B, H, W, d)
        delta = (e.flatten(1, 2) - self.mu.T).transpose(0, 1).contiguous()                     # (P, B, d)
        dist = (torch.bmm(delta, self.inv_cov) * delta).sum(-1).clamp_min(0).sqrt().T       # (B, P)
        maps = upsample_blur(dist.reshape(-1, *self.grid), self.size, self.sigma)
        return maps, maps.flatten(1).amax(1)


# ----------------------------------------------------------------------------------------- ONNX

def export_onnx(scorer: nn.Module, path: str | Path, name: str, size: int | None = None,
                outputs: tuple[str, ...] = ("map", "score"), fix: str | None = None) -> Path:
    """Export for a batch of one uint8 image (raw pixels in, as a deployment receives them) of
    `size` px (default scorer.size). Weights go to a .data file next to the model (external data):
    PaDiM's inverse covariances alone exceed protobuf's 2 GB for the larger backbones. A failing op
    is a UserError naming the backbone and `fix` (default: the latency stage's advice)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = int(size or scorer.size)
    x = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # the exporter's advice on other export modes, not ours
            torch.onnx.export(scorer, (x,), str(path), input_names=["image"], output_names=list(outputs),
                              dynamo=True, external_data=True, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise UserError(f"backbone {name!r} does not export to ONNX: {_root_cause(e)}. "
                        + (fix or "The `latency` stage needs an exportable backbone; for this one run "
                                  "`dvc repro aggregate` (the quality metrics do not need that stage).")) from None
    return path


def _root_cause(e: BaseException) -> str:
    """The innermost exception's first line: the exporter wraps the failing op in generic advice."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    first = (re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def onnx_files(path: str | Path) -> list[Path]:
    """The model file and its external data file(s)."""
    path = Path(path)
    return [path] + sorted(p for p in path.parent.glob(path.name + "*") if p != path)


def check_onnx(scorer: PadimScorer, path: str | Path, image: torch.Tensor, name: str, rtol: float = 1e-3) -> None:
    """An export that runs but computes something else must not be timed: ONNX Runtime's map and
    score for `image` must match eager within rtol (relative to the map's largest value)."""
    with torch.inference_mode():
        maps, scores = scorer(image)
    got_maps, got_scores = ort_session(path, 1).run(None, {"image": image.numpy()})
    scale = float(maps.abs().max()) or 1.0
    err = max(float(np.abs(got_maps - maps.numpy()).max()), float(np.abs(got_scores - scores.numpy()).max()))
    if not err <= rtol * scale:
        raise UserError(f"the ONNX export of backbone {name!r} disagrees with eager PyTorch (largest difference "
                        f"{err:.3g} for values up to {scale:.3g}): an op exports with other semantics.")


# -------------------------------------------------------------------------------------- timing

def time_ms(fn, inputs: list, runs: int, warmup: int) -> dict:
    """Median and 90th percentile of `runs` calls (cycling through `inputs`) after `warmup` calls, in ms."""
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    t = []
    for i in range(runs):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        t.append(1000.0 * (time.perf_counter() - t0))
    return {"median": float(np.median(t)), "p90": float(np.percentile(t, 90))}


def eager_ms(scorer: PadimScorer, inputs: list[torch.Tensor], threads: int, runs: int, warmup: int) -> dict:
    """Eager PyTorch latency with `threads` intra-op threads (the process's setting is restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            return time_ms(scorer, inputs, runs, warmup)
    finally:
        torch.set_num_threads(before)


def onnx_ms(path: str | Path, inputs: list[np.ndarray], threads: int, runs: int, warmup: int) -> dict:
    """ONNX Runtime latency of the exported model with `threads` intra-op threads."""
    sess = ort_session(path, threads)
    return time_ms(lambda x: sess.run(None, {"image": x}), inputs, runs, warmup)
