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


def _trained(epochs, batch_size: int, lr: float, frozen: str, **extra: Param) -> dict[str, Param]:
    """The params every method that trains the backbone has (defaults: its published recipe)."""
    return {
        "epochs": Param(epochs, int, low=0, special=("auto",) if epochs == "auto" else ()),
        "batch_size": Param(batch_size, int, low=1, help="training images per step (memory grows with it)"),
        "lr": Param(lr, float, low=0, low_open=True),
        **extra,
        "frozen_through": Param(frozen, str, help="auto (registry's 2nd layer) | none | a module name"),
        "test_curve": Param(False, bool, help="test ROC-AUC per epoch for the curve (never picks the epoch)"),
    }

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
    "deep_svdd": MethodInfo("anomaly_backbones.methods.training.deep_svdd:DeepSVDD", "image", "images", _trained(
        150, 200, 1e-4, "none",
        lr_milestone=Param(50, int, low=0, help="lr x 0.1 from this epoch on (0: never)"),
        weight_decay=Param(5e-7, float, low=0),
        objective=Param("one-class", str, choices=("one-class", "soft-boundary")),
        nu=Param(0.1, float, low=0, high=1, low_open=True),
        warm_up_epochs=Param(10, int, low=0, help="soft-boundary: epochs before R is updated"),
        eps=Param(0.1, float, low=0, help="centre coordinates nearer 0 are pushed to +-eps"),
        biases=Param("frozen", str, choices=("frozen", "trained"), help="biases and normalization params"))),
    "panda": MethodInfo("anomaly_backbones.methods.training.panda:PANDA", "image", "images", _trained(
        15, 32, 1e-2, "auto",
        variant=Param("early", str, choices=("early", "ses", "ewc")),
        momentum=Param(0.9, float, low=0, high=1),
        weight_decay=Param(5e-5, float, low=0),
        clip=Param(1e-3, float, low=0, low_open=True, help="gradient norm clip"),
        k=Param(2, int, low=1, help="DN2 nearest training features"),
        ses_every=Param(5, int, low=1, help="ses: a snapshot every this many epochs"),
        ewc_lambda=Param(1e4, float, low=0),
        fisher=Param("none", str, help="ewc: a torch file {param name: diagonal Fisher}; none: estimate"),
        prefix_cache=Param(True, bool, help="compute the frozen prefix once per image"))),
    "msc": MethodInfo("anomaly_backbones.methods.training.msc:MeanShifted", "image", "images", _trained(
        20, 64, 1e-5, "auto",
        weight_decay=Param(5e-5, float, low=0),
        k=Param(2, int, low=1, help="DN2 nearest training features"))),
    "doc": MethodInfo("anomaly_backbones.methods.training.doc:DOC", "image", "images", _trained(
        "auto", 32, 5e-5, "auto",
        reference=Param("none", str, help="ImageFolder-layout folder of labelled reference images"),
        momentum=Param(0.9, float, low=0, high=1),
        weight_decay=Param(5e-4, float, low=0),
        **{"lambda": Param(0.1, float, low=0, help="weight of the compactness loss")},
        prefix_cache=Param(True, bool, help="compute the frozen prefix once per image"))),
}


def get_method(name: str):
    """The class registered as `name` (its module imported now)."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r} in `methods`; known: {', '.join(METHODS)}")
    module, cls = METHODS[name].path.split(":")
    return getattr(importlib.import_module(module), cls)
