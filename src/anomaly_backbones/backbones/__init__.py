"""Pretrained CNN backbones for embedding-based anomaly detection (PaDiM, SPADE, PatchCore, CFLOW-AD).

    bb = load_backbone(name, init="imagenet", seed=1024)
        .model (nn.Module, eval, float32, CPU), .name, .init ("imagenet:<key>" | "random:seed=<n>" |
        "file:<path>"), .mean, .std (input normalization), .entry (registry dict, or None)
    layers = resolve_layers(name, "auto" | [names])
    ext = FeatureExtractor(bb.model, layers); feats = ext(x)   # {layer: (B, C, h, w)}, in `layers` order
    x = normalize(uint8 (B, 3, H, W), bb.mean, bb.std)         # the network input of every stage
    registry_d(name) -> int | None                 # PaDiM's d for the default layers (None: all)
    param_counts(name, layers=None) -> {"trunk": int, "full": int}
    registry() -> list[dict]; get_entry(name) -> dict | None; families(); weights_offline(entry) -> bool

`name` is a registry name (registry.yaml), or any timm / torchvision model name (then `layers` must
be given). `init` is imagenet (the library's default weights; for the registry the first named
init), random (seeded), a named variant (torchvision enum member such as IMAGENET1K_V2, timm tag
such as a1_in1k, also as imagenet:<name>), or a checkpoint file (.pth/.pt/.safetensors, strict).
Weights come from one of the sources in weights.SOURCES; they are looked up in the local caches and
a missing download host is detected within seconds, before any model is built; the error says where
to put the file.

Modules: registry (registry.yaml, registry_facts.yaml), architectures (name -> constructor), weights
(the weight sources), caches (where files sit, no torch), checkpoints (reading and strict loading),
loader (load_backbone and the registry-dependent params), counts (parameter counts), extractor and
ort_extractor (features), ibn (IBN-Net), cli (the listing). The registry functions and
weights_offline import no torch; the others are imported on first use, so the listing needs no torch.
"""
from __future__ import annotations

import importlib

from ..errors import UserError
from .registry import families, get_entry, registry   # after the submodule import: the function wins the name
from .weights import weights_offline

_LAZY = {
    "load_backbone": "loader", "Backbone": "loader", "resolve_layers": "loader",
    "registry_d": "loader", "param_counts": "counts", "FeatureExtractor": "extractor", "normalize": "extractor",
}

__all__ = ["load_backbone", "Backbone", "resolve_layers", "registry_d", "param_counts",
           "FeatureExtractor", "normalize", "registry", "get_entry", "families", "weights_offline", "UserError"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
