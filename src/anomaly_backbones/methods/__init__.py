"""Anomaly detection methods on cached features.

Every method has the same shape, so stages and tests treat them alike:

    m = METHOD(params: dict, layers: list[str], seed: int)
    m.fit(train: FeatureSet)                       # learns from defect-free features
    scores, maps = m.predict(test: FeatureSet)     # (N,) image scores, (N, S, S) float32 maps

`params` is the method's group in params.yaml (e.g. params["padim"]); `layers` is the
resolved top-level `layers` param (a method with its own layer param, like PatchCore, may
override it). S is the cache's image_size. All randomness comes from `seed`.
"""
from __future__ import annotations

import importlib

from ..errors import UserError

METHODS = {
    "padim": "anomaly_backbones.methods.padim:PaDiM",
    "spade": "anomaly_backbones.methods.spade:SPADE",
    "patchcore": "anomaly_backbones.methods.patchcore:PatchCore",
    "cflow": "anomaly_backbones.methods.cflow:CFlow",
}


def get_method(name: str):
    if name not in METHODS:
        raise UserError(f"unknown method {name!r} in `methods`; known: {sorted(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
