"""Anomaly detection methods: the registry (data) and `get_method`.

Each entry names the class (module:Class, imported on demand), its kind (`level`: pixel maps or
image scores only; `reads`: the feature cache or prepared images) and its params schema: the
defaults and rules of its group in params.yaml, checked by every stage before it works. The
contract every class follows: methods/base.py.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import UserError
from ..params.schema import Param


@dataclass(frozen=True)
class MethodInfo:
    path: str                                  # "module:Class"
    level: str = "pixel"                       # "pixel" | "image"
    reads: str = "features"                    # "features" | "images"
    params: dict[str, Param] = field(default_factory=dict)


def _multiple_of_4(v) -> str | None:
    return None if v % 4 == 0 else "must be a positive multiple of 4"


def _layer_list(v) -> str | None:
    if isinstance(v, list) and len(set(v)) != len(v):
        return "lists a layer more than once"
    return None


SIGMA = Param(4.0, float, low=0, help="Gaussian blur of the anomaly map (0: none)")
# the image-level methods on pooled features (methods/pooled.py)
POOLED_LAYERS = Param("auto", list, special=("auto",), check=_layer_list,
                      help="auto: the backbone's last stage; or pooled layers, concatenated")
KERNEL = Param("rbf", str, choices=("rbf", "linear"))
GAMMA = Param("scale", float, low=0, low_open=True, special=("scale",),
              help="RBF width; scale: 1 / (dim * variance of the standardized training vectors)")
NU = Param(0.1, float, low=0, high=1, low_open=True, help="bound on the fraction of training outliers")

METHODS: dict[str, MethodInfo] = {
    "padim": MethodInfo("anomaly_backbones.methods.padim:PaDiM", params={
        "d": Param("auto", int, low=1, special=("auto", "all"), help="kept channels (R_d); auto: the registry's"),
        "chunk_mb": Param(256.0, float, low=0, low_open=True, help="a chunk's (positions, images, d) block"),
        "sigma": SIGMA,
    }),
    "spade": MethodInfo("anomaly_backbones.methods.spade:SPADE", params={
        "k": Param(50, int, low=1, help="nearest training images"),
        "kappa": Param(1, int, low=1, help="nearest gallery vectors per test position"),
        "chunk_mb": Param(64.0, float, low=0, low_open=True, help="gallery maps built at once"),
        "batch_size": Param(16, int, low=1),
        "sigma": SIGMA,
    }),
    "patchcore": MethodInfo("anomaly_backbones.methods.patchcore:PatchCore", params={
        "layers": Param("auto", list, special=("auto",), check=_layer_list),
        "coreset_ratio": Param(0.1, float, low=0, high=1, low_open=True),
        "coreset": Param("fast", str, choices=("fast", "exact")),
        "dim": Param(1024, int, low=1),
        "neighbors": Param(9, int, low=1),
        "projection_dim": Param(128, int, low=1),
        "batch_size": Param(32, int, low=1),
        "sigma": SIGMA,
    }),
    "cflow": MethodInfo("anomaly_backbones.methods.cflow:CFlow", params={
        "epochs": Param(4, int, low=1),
        "fibers_per_epoch": Param(131072, int, low=1),
        "fiber_batch_size": Param(256, int, low=1),
        "lr": Param(2e-4, float, low=0, low_open=True),
        "coupling_blocks": Param(8, int, low=1),
        "condition_vector": Param(128, int, low=4, check=_multiple_of_4),
        "clamp_alpha": Param(1.9, float, low=0, low_open=True),
        "batch_size": Param(32, int, low=1),
        "sigma": SIGMA,
    }),
    "ocsvm": MethodInfo("anomaly_backbones.methods.ocsvm:OCSVM", level="image", params={
        "layers": POOLED_LAYERS, "kernel": KERNEL, "nu": NU, "gamma": GAMMA,
    }),
    "svdd": MethodInfo("anomaly_backbones.methods.svdd:SVDD", level="image", params={
        "layers": POOLED_LAYERS, "kernel": KERNEL, "nu": NU,
        "C": Param("auto", float, low=0, low_open=True, special=("auto",), help="auto: 1 / (nu n); else nu is unused"),
        "gamma": GAMMA,
    }),
    "dn2": MethodInfo("anomaly_backbones.methods.dn2:DN2", level="image", params={
        "layers": POOLED_LAYERS,
        "k": Param(2, int, low=1, help="nearest training images"),
    }),
}


def get_method(name: str):
    """The class registered as `name` (its module imported now)."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r} in `methods`; known: {', '.join(METHODS)}")
    module, cls = METHODS[name].path.split(":")
    return getattr(importlib.import_module(module), cls)
