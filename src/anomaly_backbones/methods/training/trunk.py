"""The trained network of every image-level training method: the backbone trunk up to the deepest
of the resolved `layers`, then global average pooling: (B, 3, S, S) float -> (B, C).

Which parameters train: everything that runs up to and including the module `frozen_through`
is frozen (PANDA's recipe: ResNet conv1, bn1, layer1, layer2; `auto` = the registry's second
default layer, which is layer2 for ResNets and the end of the stride-8 stage for the other
families). The whole network stays in eval mode: BatchNorm running statistics are frozen (the
authors of PANDA and Mean-Shifted call model.eval() before training and never leave it) and
dropout / drop-path are off, so the features of an image depend on the weights only.

PrefixCache: with a frozen prefix and no augmentation, the prefix's output for an image never
changes, so it is computed once per image and training runs only the trainable suffix (the same
values: the prefix is a fixed function of the image). Works where the network calls the prefix's
modules in sequence (ResNets, EfficientNets, ...); it checks itself on the first batch and falls
back to the full forward pass elsewhere.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ...backbones import get_entry
from ...device import model_device
from ...errors import UserError


class _Stop(Exception):
    """Raised from the hook on the deepest layer: the rest of the network never runs."""


def run_until(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`'s output when `model` runs on x; the forward pass stops there."""
    captured = {}

    def hook(_m, _i, out):
        captured["x"] = out
        raise _Stop

    h = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return captured["x"]


def forward_order(model: nn.Module, image_size: int) -> tuple[list[str], dict[str, int]]:
    """Names of the model's modules in the order their forward passes end, and each one's output
    elements per image (one probe image of `image_size` px, on the model's device)."""
    order: list[str] = []
    elems: dict[str, int] = {}

    def hook(_m, _i, out, name):
        if name not in elems:
            order.append(name)
            elems[name] = out.numel() if isinstance(out, torch.Tensor) else 0

    handles = [m.register_forward_hook(lambda m, i, o, n=name: hook(m, i, o, n))
               for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return order, elems


def resolve_frozen(value: str, backbone: str, group: str, model: nn.Module | None = None) -> str | None:
    """`auto` -> the registry's second default layer (PANDA's ResNet: through layer2 of layer1-3);
    for an entry with one default layer (AlexNet, VGG, SqueezeNet: `features`), the first half of
    that layer's children (`features.5` of AlexNet's 13), which needs `model`; `none` -> None; a
    module name as given."""
    if value == "none":
        return None
    if value != "auto":
        return value
    entry = get_entry(backbone)
    layers = entry["layers"] if entry is not None else []
    if len(layers) >= 2:
        return layers[1]
    layer = dict(model.named_modules()).get(layers[0]) if model is not None and layers else None
    children = [name for name, _ in layer.named_children()] if layer is not None else []
    if len(children) < 2:
        raise UserError(f"`{group}.frozen_through: auto` needs a registry backbone whose default layers can be "
                        f"split; {backbone!r} cannot: set `{group}.frozen_through` to a module name or none")
    return f"{layers[0]}.{children[len(children) // 2 - 1]}"


class Trunk(nn.Module):
    """model up to `layer` + global average pooling, with autograd (FeatureExtractor's forward runs
    under inference_mode). `frozen_through`: parameters of every module whose forward pass ends
    no later than that module's are frozen (requires_grad False)."""

    def __init__(self, model: nn.Module, layers: list[str], frozen_through: str | None, image_size: int,
                 group: str):
        super().__init__()
        self.model = model.eval()
        modules = dict(model.named_modules())
        order, self.elems = forward_order(model, image_size)
        missing = [x for x in [*layers, frozen_through] if x is not None and x not in modules]
        if missing:
            raise UserError(f"{group}: module {missing[0]!r} is not in the backbone; fix `layers` or "
                            f"`{group}.frozen_through` (any name of model.named_modules())")
        never = [x for x in layers if x not in order]
        if never:
            raise UserError(f"{group}: layer {never[0]!r} never runs in the forward pass; fix `layers`")
        self.layer = max(layers, key=order.index)          # the deepest of the resolved layers
        self.module = modules[self.layer]
        for p in model.parameters():
            p.requires_grad_(True)
        self.frozen_through = frozen_through
        if frozen_through is not None:
            end = order.index(frozen_through) if frozen_through in order else -1
            if end < 0:
                raise UserError(f"{group}.frozen_through: {frozen_through!r} never runs in the forward pass")
            if end >= order.index(self.layer):
                raise UserError(f"{group}.frozen_through = {frozen_through} freezes every layer up to "
                                f"{self.layer} (the deepest of `layers`): nothing would train; choose an "
                                f"earlier module or none")
            done = set(order[:end + 1])
            for name, m in modules.items():
                if name in done or name.startswith(frozen_through + "."):
                    for p in m.parameters(recurse=False):
                        p.requires_grad_(False)
        self._order = order
        leaves = {n for n, m in modules.items() if n and next(m.children(), None) is None}
        upto = [n for n in order[:order.index(self.layer) + 1] if n in leaves]
        start = order.index(frozen_through) + 1 if frozen_through is not None else 0
        # per image: what autograd keeps (the outputs of the trainable part's modules) and the
        # largest output anywhere (the frozen prefix runs without keeping its activations)
        self.activation_elems = sum(self.elems[n] for n in upto if order.index(n) >= start)
        self.largest_elems = max(self.elems[n] for n in upto)
        self.prefix: PrefixCache | None = None
        self.train(False)
        with torch.no_grad():
            self.dim = int(self(torch.zeros(1, 3, image_size, image_size, device=model_device(model))).shape[1])   # C of the features

    def train(self, mode: bool = True):
        """Always eval: BatchNorm statistics frozen, dropout and drop-path off (see the module doc)."""
        return super().train(False)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every trainable parameter up to the trunk's layer, in model order."""
        used = set(self._order[:self._order.index(self.layer) + 1])
        out = []
        for name, p in self.model.named_parameters():
            owner = name.rsplit(".", 1)[0]
            if p.requires_grad and owner in used:
                out.append((name, p))
        return out

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) output of the deepest layer."""
        if self.prefix is not None and self.prefix.active:
            with self.prefix.skipping():
                return run_until(self.model, self.module, x)
        return run_until(self.model, self.module, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).mean((2, 3))


class PrefixCache:
    """The frozen prefix's output per image, computed once (see the module docstring).

    trunk.prefix = PrefixCache(trunk); cache.fill(key, images_fn, n, batch); then inside
    `with cache.feeding(key, idx)` the trunk's input is ignored and the prefix output of images
    `idx` of set `key` is used instead."""

    def __init__(self, trunk: Trunk):
        self.trunk = trunk
        self.boundary = trunk.frozen_through
        modules = dict(trunk.model.named_modules())
        self.store: dict[str, torch.Tensor] = {}
        self.current: torch.Tensor | None = None
        self.active = False
        # the modules to skip: at each level from the root to the boundary, the children that end
        # before the path's child; the boundary itself returns the cached tensor
        order = trunk._order
        parts = self.boundary.split(".")
        self.skip: list[nn.Module] = []
        # a module on the path that is never called as a whole (a ViT's `blocks`, run block by block
        # by its maps wrapper) leaves no order to skip by: no cache (`check` says False), the same training
        self.chain = all(".".join(parts[:depth + 1]) in order for depth in range(len(parts)))
        for depth in range(len(parts) if self.chain else 0):
            parent = ".".join(parts[:depth])
            path_child = ".".join(parts[:depth + 1])
            for name, child in (modules[parent] if parent else trunk.model).named_children():
                full = f"{parent}.{name}" if parent else name
                if full == path_child:
                    break
                if full in order and order.index(full) < order.index(path_child):
                    self.skip.append(child)
        self.boundary_module = modules[self.boundary]

    @contextmanager
    def skipping(self):
        feed = self.current

        def identity(x, *a, **k):
            return x

        for m in self.skip:
            m.forward = identity
        self.boundary_module.forward = lambda *a, **k: feed
        try:
            yield
        finally:
            for m in [*self.skip, self.boundary_module]:
                del m.forward

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The boundary's output for input x (full forward pass up to the boundary)."""
        with torch.no_grad():
            return run_until(self.trunk.model, self.boundary_module, x)

    def add(self, key: str, x: torch.Tensor) -> None:
        """Append the prefix outputs of a batch to set `key`."""
        out = self.output(x)
        self.store[key] = out if key not in self.store else torch.cat([self.store[key], out])

    @contextmanager
    def feeding(self, key: str, idx):
        self.current, self.active = self.store[key][idx], True
        try:
            yield
        finally:
            self.current, self.active = None, False

    def check(self, x: torch.Tensor) -> bool:
        """Does the trunk from the cached prefix give the full pass's features on batch x?"""
        if not self.chain:
            return False
        before, self.trunk.prefix = self.trunk.prefix, self
        with torch.no_grad():
            full = self.trunk(x)
            self.current, self.active = self.output(x), True
            try:
                cached = self.trunk(torch.zeros(len(x), 3, 1, 1, device=x.device))
            except Exception:   # noqa: BLE001 - a network that is not a chain of modules: no cache
                return False
            finally:
                self.current, self.active, self.trunk.prefix = None, False, before
        return cached.shape == full.shape and torch.allclose(cached, full, rtol=1e-5, atol=1e-6)
