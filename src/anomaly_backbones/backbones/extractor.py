"""FeatureExtractor: named intermediate feature maps by forward hooks, stopping the forward pass as
soon as the last requested layer has produced its output (deeper layers cost nothing).

Works for any nn.Module (timm, torchvision, in-project) because it only needs module names from
model.named_modules(). Unknown names are an error listing the valid ones (anomalib silently drops them).
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from ..errors import UserError


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

    For a module that runs more than once in a forward pass the first output is taken. Outputs of
    layers other than the last one are cloned, so later in-place ops (ReLU(inplace=True)) cannot
    change them.

    The forward pass runs under inference_mode (no autograd bookkeeping).
    """

    def __init__(self, model: nn.Module, layers):
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

    def dims(self, x: torch.Tensor) -> dict[str, int]:
        """Channels per layer for an input like `x` (runs one forward pass)."""
        return {k: int(v.shape[1]) for k, v in self(x).items()}
