"""Pretrained CNN backbones for embedding-based anomaly detection (PaDiM, SPADE, PatchCore, CFLOW-AD).

    bb = load_backbone(name, init="imagenet", seed=1024)
        .model (nn.Module, eval, float32, CPU), .name, .init ("imagenet:<key>" | "random:seed=<n>" |
        "file:<path>"), .mean, .std (input normalization), .entry (registry dict, or None)
    layers = resolve_layers(name, "auto" | [names])
    ext = FeatureExtractor(bb.model, layers); feats = ext(x)   # {layer: (B, C, h, w)}, in `layers` order
    x = normalize(uint8 (B, 3, H, W), bb.mean, bb.std)         # the network input of every stage
    d = resolve_d(name, "auto" | int, dim)
    registry() -> list[dict]; get_entry(name) -> dict | None

`name` is a registry name (registry.yaml), or any timm / torchvision model name (then `layers` must
be given). `init` is imagenet (the library's default weights; for the registry the first named
init), random (seeded), a named variant (torchvision enum member such as IMAGENET1K_V2, timm tag
such as a1_in1k, also as imagenet:<name>), or a checkpoint file (.pth/.pt/.safetensors, strict).
Weights are looked up in the local caches and a missing download host is detected within seconds,
before any model is built; the error says where to put the file.
"""
from ..errors import UserError
from .extractor import FeatureExtractor, normalize
from .loader import Backbone, load_backbone, resolve_d, resolve_layers, weights_offline
from .registry import families, get_entry, registry

__all__ = ["load_backbone", "resolve_layers", "resolve_d", "FeatureExtractor", "registry", "get_entry",
           "families", "weights_offline", "Backbone", "UserError", "normalize"]
