"""FeatureExtractor: named intermediate feature maps by forward hooks, stopping the forward pass as
soon as the last requested layer has produced its output (deeper layers cost nothing).

Works for any nn.Module (timm, torchvision, in-project) because it only needs module names from
model.named_modules(). Unknown names are an error listing the valid ones (anomalib silently drops them).
"""
from __future__ import annotations

import difflib

import numpy as np
import torch
from torch import nn

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


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) uint8 pixels -> the float input the weights expect. The one definition shared by
    the extract stage and the deployable scorer, so both feed the network identical inputs."""
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


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

    The forward pass runs under inference_mode (no autograd bookkeeping).
    """

    def __init__(self, model: nn.Module, layers, mean=None, std=None):
        self.mean, self.std = mean, std
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
        self.model = model.eval()
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
            with torch.inference_mode():
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

    def pixels(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        """Features of (B, H, W, 3) uint8 images, normalized with the mean and std given."""
        if self.mean is None or self.std is None:
            raise ValueError("FeatureExtractor.pixels needs the backbone's mean and std")
        x = np.ascontiguousarray(images)
        if not x.flags.writeable:   # a read-only map: torch.from_numpy shares memory, so copy it
            x = x.copy()
        return self(normalize(torch.from_numpy(x).permute(0, 3, 1, 2), self.mean, self.std))

    def probe(self, image_size: int) -> tuple[int, int, int]:
        """(largest module output, all hooked outputs, largest hooked output) in elements per
        image, from one forward pass of a blank image that stops where __call__ stops."""
        largest = [0]

        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output.numel())

        handles = [m.register_forward_hook(hook) for m in self.model.modules() if next(m.children(), None) is None]
        try:
            feats = self(torch.zeros(1, 3, image_size, image_size))
        finally:
            for h in handles:
                h.remove()
        sizes = [v.numel() for v in feats.values()]
        return max(largest[0], *sizes), sum(sizes), max(sizes)

    def weight_bytes(self) -> int:
        """Bytes of the model's parameters and buffers."""
        return sum(t.numel() * t.element_size() for t in (*self.model.parameters(), *self.model.buffers()))

    def estimate_bytes(self, batch_size: int, image_size: int, itemsize: int = 4) -> float:
        """Peak RSS of extracting batches of `batch_size` images (see extract_bytes)."""
        return extract_bytes(batch_size, image_size, self.weight_bytes(), *self.probe(image_size), itemsize)

    def dims(self, x: torch.Tensor) -> dict[str, int]:
        """Channels per layer for an input like `x` (runs one forward pass)."""
        return {k: int(v.shape[1]) for k, v in self(x).items()}
