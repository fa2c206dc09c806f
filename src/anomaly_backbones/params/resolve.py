"""Every `auto` param made concrete, once, in one place; the stages use the result.

    r = resolve(p)                 # r["layers"]: the backbone's layers; r["cache_layers"]: what
                                   # extract caches (layers, then what each method adds)
    r = resolve(p, shapes)         # also what needs the cached feature shapes (padim.d)

`shapes` is {layer: (C, H, W)} of the feature cache (its meta.json). Each method's group is
resolved by its class (Method.resolve_params); a method reads only concrete values.
"""
from __future__ import annotations

import copy


def resolve(p: dict, shapes: dict | None = None) -> dict:
    """Validated params -> a deep copy with `layers`, every method group and `cache_layers` concrete."""
    from ..backbones import resolve_layers
    from ..methods import METHODS, get_method

    r = copy.deepcopy(p)
    r["layers"] = resolve_layers(p["backbone"], p["layers"])
    shapes = None if shapes is None else {k: tuple(v) for k, v in shapes.items()}
    cache = list(r["layers"])
    for name in METHODS:
        cls = get_method(name)
        r[name] = cls.resolve_params(r[name], backbone=p["backbone"], layers=r["layers"], shapes=shapes)
        cache += [layer for layer in cls.cached_layers(r[name], r["layers"]) if layer not in cache]
    r["cache_layers"] = cache
    return r
