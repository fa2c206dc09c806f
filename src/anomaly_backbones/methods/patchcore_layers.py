"""PatchCore's own layer choice, needed by extract (to cache them) and by PatchCore itself."""
from __future__ import annotations


def patchcore_layers(param, layers: list[str]) -> list[str]:
    """`auto`: the given layers minus the shallowest when there are 3 or more (the paper's
    mid-level features: [l1, l2, l3] -> [l2, l3]); a list is taken as given."""
    if param in (None, "auto"):
        return list(layers[1:]) if len(layers) >= 3 else list(layers)
    return list(param)
