"""FeatureExtractor: named intermediate feature maps by forward hooks, stopping the forward pass as
soon as the last requested layer has produced its output (deeper layers cost nothing).

Works for any nn.Module (timm, torchvision, in-project) because it only needs module names from
model.named_modules(). Unknown names are an error listing the valid ones (anomalib silently drops them).

Device and precision (anomaly_backbones.device): the model lives on `device`; images travel as
uint8 (4x fewer bytes than float32) from pinned host memory without blocking the host, and are
normalized on the device by the same `normalize`; the forward pass runs under
`autocast(device, precision)`; features come back as float32 CPU tensors (the cache writer needs
host memory). On the CPU every move is a no-op and float32 autocast is no context at all, so the
CPU float32 features are the bits of the code before devices existed.
"""
from __future__ import annotations

import difflib
import time
from collections import deque
from typing import Iterator

import numpy as np
import torch
from torch import nn

from ..device import autocast, to_device
from ..errors import UserError
from ..resources import BASELINE_BYTES

LIBS_BYTES = 0.2 * 2**30  # RSS of timm and torchvision, imported with the backbone (part of what bench/memory.py checks)
WORKING = 4  # activations alive at once in a forward pass, in units of the largest one (a residual
             # block's input, a conv output, its normalized copy, the shortcut)


def extract_bytes(batch_size: int, image_size: int, weights: int, largest: int, hooked: int,
                  hooked_max: int, itemsize: int) -> float:
    """Peak RSS of the extract stage. Per image of a batch: the uint8 image (mapped and copied),
    the normalized input (two float32 copies at once), WORKING x the largest activation, the
    hooked outputs (kept until written), and the writer's copies of one layer (finiteness mask,
    the cast to the cache dtype, its bytes). Sizes are elements per image (FeatureExtractor.probe)."""
    per_image = (6.0 * image_size ** 2 + 8.0 * 3 * image_size ** 2 + 4.0 * (WORKING * largest + hooked)
                 + hooked_max * (1 + itemsize + (itemsize if itemsize != 4 else 0)))
    return BASELINE_BYTES + LIBS_BYTES + weights + batch_size * per_image


def device_bytes(batches: int, batch_size: int, image_size: int, weights: int, largest: int, hooked: int) -> float:
    """Peak device memory of extracting on a GPU with `batches` batches in flight: the weights, and
    per image of each batch the uint8 image, the normalized input (two float32 copies), WORKING x
    the largest activation and the hooked outputs with their float32 copies for the host (float32
    sizes: an upper bound under bfloat16/float16 autocast, which also keeps casted weights)."""
    per_image = 3.0 * image_size ** 2 + 8.0 * 3 * image_size ** 2 + 4.0 * (WORKING * largest + 2 * hooked)
    return weights + batches * batch_size * per_image


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) uint8 pixels -> the float input the weights expect, on x's device. The one
    definition shared by the extract stage and the deployable scorer, so both feed the network
    identical inputs."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def stream_batches(submit, collect, images: np.ndarray, batch_size: int, ahead: int = 0
                   ) -> Iterator[tuple[slice, dict[str, torch.Tensor], float]]:
    """The one batch loop of every extractor's `stream`: submit(uint8 batch) queues a batch's
    work, collect(what submit returned) gives its features; (rows, features, seconds) per batch,
    in order, with up to `ahead` later batches submitted before one is collected. `seconds`:
    host wall time in submit and collect since the previous batch was handed over (reading
    `images` not counted)."""
    queue: deque = deque()
    spent = 0.0
    for s in [*range(0, len(images), batch_size), None]:   # None: collect what is still queued
        if s is not None:
            rows = slice(s, min(s + batch_size, len(images)))
            batch = np.array(images[rows])
            t = time.perf_counter()
            queue.append((rows, submit(batch)))
            spent += time.perf_counter() - t
        while queue and (s is None or len(queue) > ahead):
            t = time.perf_counter()
            rows, pending = queue.popleft()
            feats = collect(pending)
            yield rows, feats, spent + time.perf_counter() - t
            spent = 0.0


class _Done(Exception):
    """Raised from a hook once every requested layer has been captured; caught in __call__."""


def _valid_names_hint(names: list[str], bad: str) -> str:
    close = difflib.get_close_matches(bad, names, n=5, cutoff=0.5)
    shallow = [n for n in names if n.count(".") <= 1]
    shown = shallow if len(shallow) <= 80 else shallow[:80] + [f"... ({len(shallow) - 80} more)"]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return (f"{hint}valid names (depth <= 2 of {len(names)}; any dotted name from model.named_modules() works): "
            f"{', '.join(shown)}")


class FeatureExtractor:
    """ext = FeatureExtractor(model, ["layer1", "layer2"]); feats = ext(x) -> {layer: (B, C, h, w)}.
    Given the backbone's mean and std, ext.pixels(images) takes the prepared (B, H, W, 3) uint8 images.

    For a module that runs more than once in a forward pass the first output is taken. Outputs of
    layers other than the last one are cloned, so later in-place ops (ReLU(inplace=True)) cannot
    change them.

    The forward pass runs under inference_mode (no autograd bookkeeping) and
    `autocast(device, precision)`.

    Device: the model is moved to `device` (in place: the caller's module, so a Tail built from
    it later runs there too). Calls:
      ext(x)                   float (B, 3, H, W) on the device -> {layer: (B, C, h, w) on the device,
                               in the autocast dtype}
      ext.pixels(images)       uint8 (B, H, W, 3) numpy -> {layer: float32 CPU tensor}
      ext.stream(images, bs)   batches of an image array -> (slice, features as pixels, seconds);
                               `ahead` batches queued on the device before one is handed over
      ext.forward_device(x)    uint8 (B, H, W, 3) already on the device -> features on the device,
                               no host copy and no synchronization: the pure forward pass (with the
                               normalization) for timing (bench/gpu.py: device.synchronize before
                               reading the clock). `forward_only` is the same method.
    """

    def __init__(self, model: nn.Module, layers, mean=None, std=None, device=torch.device("cpu"),
                 precision: str = "float32"):
        self.mean, self.std = mean, std
        self.device, self.precision = torch.device(device), precision
        autocast(self.device, precision)   # a precision the device lacks (float16 on the CPU): UserError now
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        if not layers:
            raise UserError("`layers` is empty: give at least one module name of the backbone.")
        modules = dict(model.named_modules())
        names = [n for n in modules if n]
        missing = [layer for layer in layers if layer not in modules or layer == ""]
        if missing:
            raise UserError(f"layer(s) {missing} not found in the backbone ({type(model).__name__}). Fix `layers`: "
                            + _valid_names_hint(names, missing[0]))
        dup = sorted({x for x in layers if layers.count(x) > 1})
        if dup:
            raise UserError(f"`layers` lists {dup} more than once. Fix: list each module once.")
        self.model = model.eval().to(self.device)   # the CPU: no-op, the same parameters
        self.layers = layers
        self._modules = {layer: modules[layer] for layer in layers}

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}
        wanted = set(self.layers)
        errors: list[str] = []

        def make_hook(name: str):
            def hook(_module, _inputs, output):
                if name in captured:
                    return
                if not (isinstance(output, torch.Tensor) and output.dim() == 4):
                    desc = (f"tensor of shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
                            else type(output).__name__)
                    errors.append(f"layer {name!r} outputs a {desc}, not a (B, C, h, w) feature map")
                    raise _Done()
                last = len(captured) == len(wanted) - 1
                captured[name] = output if last else output.clone()
                if last:
                    raise _Done()
            return hook

        handles = [m.register_forward_hook(make_hook(n)) for n, m in self._modules.items()]
        try:
            with torch.inference_mode(), autocast(self.device, self.precision):
                self.model(x)
        except _Done:
            pass
        finally:
            for h in handles:
                h.remove()
        if errors:
            raise UserError(errors[0] + ". Fix `layers`: choose modules that output feature maps (e.g. stages/blocks).")
        never = [n for n in self.layers if n not in captured]
        if never:
            raise UserError(f"layer(s) {never} exist but never ran in the forward pass (e.g. auxiliary heads). "
                            f"Fix `layers`: choose modules on the main path.")
        return {n: captured[n] for n in self.layers}

    def forward_device(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (B, H, W, 3) images on the extractor's device -> {layer: (B, C, h, w)} on the device,
        in the autocast dtype (float32, or bfloat16/float16 for most layers under autocast).
        Normalization on the device, then the forward pass; kernels are queued, not awaited."""
        if self.mean is None or self.std is None:
            raise ValueError("FeatureExtractor needs the backbone's mean and std for uint8 images")
        return self(normalize(x.permute(0, 3, 1, 2), self.mean, self.std))

    forward_only = forward_device

    def _submit(self, images: np.ndarray):
        """Queue one batch: uint8 to the device (pinned, non-blocking), the forward pass, and the
        float32 copies of its features back to pinned host memory (non-blocking); returns what
        _collect needs. On the CPU every step but the forward pass is a no-op."""
        x = np.ascontiguousarray(images)
        if not x.flags.writeable:   # a read-only map: torch.from_numpy shares memory, so copy it
            x = x.copy()
        feats = self.forward_device(to_device(torch.from_numpy(x), self.device))
        if self.device.type == "cpu":
            return {k: v.float() for k, v in feats.items()}, None   # float32: the same tensors
        host = {k: v.float().to("cpu", non_blocking=True) for k, v in feats.items()}
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))   # the stream the copies were queued on
        return host, done

    @staticmethod
    def _collect(pending) -> dict[str, torch.Tensor]:
        """The features of a _submit, once its copies to the host have landed."""
        feats, done = pending
        if done is not None:
            done.synchronize()
        return feats

    def pixels(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """Features of (B, H, W, 3) uint8 images, normalized with the mean and std given:
        {layer: (B, C, h, w) float32 CPU tensor}."""
        return self._collect(self._submit(images))

    def stream(self, images: np.ndarray, batch_size: int, ahead: int = 0
               ) -> Iterator[tuple[slice, dict[str, torch.Tensor], float]]:
        """(rows, features as `pixels` gives them, seconds) for images[rows] of each batch, in order.

        Every batch's uint8 images go to the device from pinned memory without blocking the
        host, so the host queues the normalization and the forward pass while the copy runs.
        `ahead` > 0 (useful on a GPU only) also queues that many later batches before a batch is
        handed over: the GPU copies and computes the next batch while the caller writes this one.
        The extract stage keeps 0: its pooled tail runs on the same CUDA stream, so with a batch
        queued ahead the tail would wait for (and be timed with) the next batch's forward pass.
        `seconds`: host wall time in the copies, the forward pass and waiting for the device
        since the previous batch was handed over; reading `images` is not counted (ahead 0: the
        batch's forward pass; ahead > 0: the part of the device's work the caller did not hide).
        Features are the same bits whatever `ahead` is."""
        return stream_batches(self._submit, self._collect, images, batch_size, ahead)

    def probe(self, image_size: int) -> tuple[int, int, int]:
        """(largest module output, all hooked outputs, largest hooked output) in elements per
        image, from one forward pass of a blank image that stops where __call__ stops."""
        largest = [0]

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output.numel())

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if next(m.children(), None) is None]
        try:
            feats = self(to_device(torch.zeros(1, 3, image_size, image_size), self.device))
        finally:
            for h in handles:
                h.remove()
        sizes = [v.numel() for v in feats.values()]
        return max(largest[0], *sizes), sum(sizes), max(sizes)

    def weight_bytes(self) -> int:
        """Bytes of the model's parameters and buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))

    def estimate_bytes(self, batch_size: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of extracting batches of `batch_size` images (see extract_bytes). On a GPU the
        activations live on the device (device_bytes); the host holds the weights as loaded and
        the float32 features (twice: the pinned copy and the writer's cast, or two batches with
        stream's ahead=1)."""
        largest, hooked, hooked_max = self.probe(image_size)
        if self.device.type == "cpu":
            return extract_bytes(batch_size, image_size, self.weight_bytes(), largest, hooked, hooked_max, itemsize)
        return extract_bytes(batch_size, image_size, self.weight_bytes(), 0, 2 * hooked, hooked_max, itemsize)

    def device_bytes(self, batch_size: int, image_size: int) -> float | None:
        """Peak device memory of `stream` on a GPU (room for two batches in flight, ahead=1; see
        device_bytes); None on the CPU (estimate_bytes is the whole story there)."""
        if self.device.type == "cpu":
            return None
        largest, hooked, _ = self.probe(image_size)
        return device_bytes(2, batch_size, image_size, self.weight_bytes(), largest, hooked)

    def dims(self, x: torch.Tensor) -> dict[str, int]:
        """Channels per layer for an input like `x` (runs one forward pass)."""
        return {k: int(v.shape[1]) for k, v in self(x).items()}
