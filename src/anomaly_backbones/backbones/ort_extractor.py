"""The extract stage's fast path: the backbone trunk exported to ONNX and run by ONNX Runtime.

Why: on the CPU, ONNX Runtime runs these convnets several times faster than eager PyTorch, partly
because its arena reuses activation memory where eager PyTorch maps and faults in fresh pages for
every batch (figures: docs/performance.md, Backbones). The features agree with FeatureExtractor's
to float32 rounding (checked on every build, see OnnxExtractor.check), so the choice of engine is
recorded but never changes what a method sees beyond ~1e-5.

`extract.engine`: onnx | eager | auto (ONNX Runtime where the backbone traces and exports, else
eager PyTorch, said in the log and recorded in the feature cache's stats). ONNX Runtime runs here
on the CPU in float32 only: on a GPU (`device`) or with `extract.precision` other than float32,
auto means eager PyTorch (FeatureExtractor on the device, under autocast) and `onnx` is a UserError.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..device import autocast
from ..errors import UserError
from ..resources import usable_cpus
from .extractor import FeatureExtractor, extract_bytes, normalize, stream_batches

ENGINES = ("auto", "onnx", "eager")
ORT_BATCH = 8    # images per ONNX Runtime call: its arena keeps every activation of a call, so the
                 # peak grows with the call's size while the time barely falls (docs/performance.md)
ORT_ARENA = 4.0  # what the arena holds, in largest activations per image of a call (bench/memory.py)
CHECK_TOL = 1e-3  # largest |ORT - eager| allowed, relative to the largest |feature| of the layer


def trunk(model: nn.Module, layers: list[str], name: str) -> nn.Module:
    """The backbone up to the deepest of `layers`, returning {layer: (B, C, h, w)}.

    A torch.fx graph (timm's tracer, which also knows torchvision models): FeatureExtractor stops
    the forward pass by raising from a hook, which neither tracing nor ONNX export can follow."""
    from timm.models import create_feature_extractor

    try:
        return create_feature_extractor(model, return_nodes={layer: layer for layer in layers}).eval()
    except Exception as e:  # noqa: BLE001 - fx fails in many ways on dynamic control flow
        raise UserError(f"backbone {name!r} cannot be traced (torch.fx) into a trunk up to {layers[-1]!r}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Use eager PyTorch "
                        f"for it (`extract.engine=eager`); the `latency` stage needs a traceable forward "
                        f"pass, so for this backbone run `dvc repro aggregate`.") from None


def run_in_calls(session, feeds: dict[str, np.ndarray], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """`session` on {input name: (N, ...) C-contiguous array}, in calls of ORT_BATCH rows, each
    writing its outputs straight into its rows of one (N, *shape) float32 array per output (IO
    binding; only the batch axis is dynamic): no per-call arrays to join. `shapes`: each output's
    shape without the batch axis, in the session's output order."""
    n = len(next(iter(feeds.values())))
    out = [np.empty((n, *shape), np.float32) for shape in shapes]
    io = session.io_binding()
    for s in range(0, n, ORT_BATCH):
        for name, x in feeds.items():
            io.bind_cpu_input(name, x[s:s + ORT_BATCH])
        for o, a in zip(session.get_outputs(), out):
            rows = a[s:s + ORT_BATCH]
            io.bind_output(o.name, "cpu", 0, np.float32, list(rows.shape), rows.ctypes.data)
        session.run_with_iobinding(io)
    return out


def ort_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class _Pixels(nn.Module):
    """uint8 (B, H, W, 3) images -> the fx trunk's features as a tuple in `layers` order (ONNX
    outputs are positional). The normalization is part of the graph: ONNX Runtime casts and
    normalizes in its own arena, faster than feeding it float tensors normalized by torch, with
    the same bits (the same IEEE operations, `normalize`)."""

    def __init__(self, body: nn.Module, layers: list[str], mean, std):
        super().__init__()
        self.body, self.layers, self.mean, self.std = body, list(layers), mean, std

    def forward(self, images: torch.Tensor):
        out = self.body(normalize(images.permute(0, 3, 1, 2), self.mean, self.std))
        return tuple(out[layer] for layer in self.layers)


class OnnxExtractor:
    """Same call as FeatureExtractor.pixels: feats = ext.pixels(images) -> {layer: (B, C, h, w)} float32,
    from (B, H, W, 3) uint8 images, batch of any size.

    Exported with torch's TorchScript-based exporter, several times quicker than the dynamo
    exporter (an export is paid by every cold extract run), with a dynamic batch axis. The .onnx
    file lives only while the session is built."""

    device, precision = torch.device("cpu"), "float32"   # ONNX Runtime's CPU provider, no autocast

    def __init__(self, eager: FeatureExtractor, name: str, image_size: int, threads: int | None = None):
        self.layers = list(eager.layers)
        self.eager = eager
        body = _Pixels(trunk(eager.model, self.layers, name), self.layers, eager.mean, eager.std).eval()
        threads = threads or usable_cpus()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "trunk.onnx"
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")  # the exporter's deprecation notice, not the user's concern
                    torch.onnx.export(body, (torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8),), str(path),
                                      dynamo=False, input_names=["image"],
                                      output_names=[f"feature{i}" for i in range(len(self.layers))],
                                      dynamic_axes={"image": {0: "batch"}})
                self.session = ort_session(path, threads)
                # each output's (C, h, w): fixed by the export's image size, though not always
                # declared in the graph (TF "same" padding computes its pads from the input shape)
                probe = np.zeros((1, image_size, image_size, 3), np.uint8)
                self.shapes = [a.shape[1:] for a in self.session.run(None, {"image": probe})]
            except Exception as e:  # noqa: BLE001 - the exporter and ORT raise many types
                first = (str(e).strip().splitlines() or [""])[0][:300]
                raise UserError(f"backbone {name!r} does not export to ONNX ({type(e).__name__}: {first}); "
                                f"use eager PyTorch for it: `extract.engine=eager`.") from None
        self.check(name, image_size)

    def pixels(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """Features of (B, H, W, 3) uint8 images -> {layer: (B, C, h, w) float32}, in calls of
        ORT_BATCH images (run_in_calls)."""
        out = run_in_calls(self.session, {"image": np.ascontiguousarray(images, dtype=np.uint8)}, self.shapes)
        return {layer: torch.from_numpy(a) for layer, a in zip(self.layers, out)}

    def stream(self, images: np.ndarray, batch_size: int):
        """(rows, features, seconds) per batch, as FeatureExtractor.stream on the CPU (seconds: the
        pixels call alone, reading `images` not counted)."""
        return stream_batches(self.pixels, lambda feats: feats, images, batch_size)

    def device_bytes(self, batch_size: int, image_size: int) -> None:
        return None   # the CPU: estimate_bytes is the whole story

    def check(self, name: str, image_size: int) -> None:
        """An export that runs but computes something else must not fill the cache: on two seeded
        random images every layer must match eager PyTorch within CHECK_TOL of its largest value."""
        x = np.random.default_rng(0).integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
        want, got = self.eager.pixels(x), self.pixels(x)
        for layer in self.layers:
            scale = float(want[layer].abs().max()) or 1.0
            err = float((got[layer] - want[layer]).abs().max()) / scale
            if got[layer].shape != want[layer].shape or not err <= CHECK_TOL:
                raise UserError(f"the ONNX export of backbone {name!r} disagrees with eager PyTorch at layer "
                                f"{layer!r} (shape {tuple(got[layer].shape)} vs {tuple(want[layer].shape)}, "
                                f"relative difference {err:.3g}); use `extract.engine=eager`.")

    def estimate_bytes(self, batch_size: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of extracting with ONNX Runtime: extract_bytes without eager's activations,
        the weights twice (torch's and the session's), the outputs twice (per call, then joined),
        and the arena of one call of ORT_BATCH images."""
        largest, hooked, hooked_max = self.eager.probe(image_size)
        return (extract_bytes(batch_size, image_size, 2 * self.eager.weight_bytes(), 0, 2 * hooked, hooked_max,
                              itemsize)
                + ORT_ARENA * 4.0 * min(batch_size, ORT_BATCH) * largest)


def make_extractor(model: nn.Module, layers: list[str], name: str, engine: str, image_size: int, mean, std,
                   device=torch.device("cpu"), precision: str = "float32"):
    """(extractor, engine used) for `extract.engine`, `device` and `extract.precision`. Either
    one's .pixels(uint8 (B, H, W, 3) images) normalizes with mean and std and returns
    {layer: (B, C, h, w) float32 CPU tensor}; .stream(images, batch_size) walks an image array.

    CPU and float32: auto tries ONNX Runtime, then eager. A GPU or a precision other than float32:
    eager PyTorch on the device under autocast (ONNX Runtime runs on the CPU in float32 here), so
    auto means eager and `onnx` is a UserError naming the fix. The model is moved to `device`."""
    if engine not in ENGINES:
        raise UserError(f"`extract.engine` is {engine!r}; choose one of {', '.join(ENGINES)}.")
    device = torch.device(device)
    autocast(device, precision)   # the one check of `extract.precision` (float16 on the CPU included)
    if engine == "onnx" and device.type != "cpu":
        raise UserError(f"`extract.engine` = onnx runs ONNX Runtime on the CPU, but `device` is {device}; "
                        f"set `extract.engine: auto` (eager PyTorch on the GPU) or `device: cpu`.")
    if engine == "onnx" and precision != "float32":
        raise UserError(f"`extract.engine` = onnx has no {precision} (ONNX Runtime has no autocast); set "
                        f"`extract.engine: auto` (eager PyTorch) or `extract.precision: float32`.")
    # validates the layer names first, for every engine
    eager = FeatureExtractor(model, layers, mean, std, device, precision)
    if engine == "eager" or device.type != "cpu" or precision != "float32":
        return eager, "eager"
    try:
        return OnnxExtractor(eager, name, image_size), "onnx"
    except UserError as e:
        if engine == "onnx":
            raise
        print(f"note: extracting {name} with eager PyTorch: {e}")
        return eager, "eager"
