"""What the image-level one-class methods share (OC-SVM, SVDD, DN2): one vector per image, the
global average pools of the feature cache (FeatureSet.pooled), concatenated over `layers`.

`layers` param: `auto` = the backbone's last stage (the extract stage names it in the cache's
meta.json: ResNet layer4, EfficientNet blocks.6), as DN2 and PANDA use; or a list of layers
pooled by extract (every cached layer and the last stage), each pooled, concatenated in the
order given. The choice is read from the cache at fit, so changing it reruns only the fit stage
(extract pools every candidate, whatever `methods` lists).
"""
from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..params.schema import Param
from .base import Method, _layer_list
from .common import check_finite

# libsvm's stopping tolerance for OC-SVM and SVDD (on SVDD's kernel scaled to largest k_ii = 1;
# the RBF kernel has k_ii = 1 already). scikit-learn's default, 1e-3, stops early enough to swap
# the ranks of close images, so OC-SVM and SVDD with the same nu would rank differently
# (docs/performance.md, "OC-SVM, SVDD and DN2"); the solution to 1e-6 costs no measurable time here.
LIBSVM_TOL = 1e-6


# the params of the methods on pooled features
POOLED_LAYERS = Param("auto", list, special=("auto",), check=_layer_list,
                      help="auto: the backbone's last stage; or pooled layers, concatenated")
KERNEL = Param("rbf", str, choices=("rbf", "linear"))
GAMMA = Param("scale", float, low=0, low_open=True, special=("scale",),
              help="RBF width; scale: 1 / (dim * variance of the standardized training vectors)")
NU = Param(0.1, float, low=0, high=1, low_open=True, help="bound on the fraction of training outliers")


class PooledMethod(Method):
    """Base of the methods on pooled vectors: `level = "image"` (no anomaly map), reads no
    layer maps. Subclasses implement fit and grid_scores on `self.vectors(fs)`."""

    level = "image"
    RESOLVES_AUTO = ("layers",)   # against the pooled cache at fit (pooled_layers)

    @classmethod
    def cached_layers(cls, group: dict, layers: list[str]) -> list[str]:
        """No layer maps: the pooled cache holds every layer these methods may read."""
        return []

    def pooled_layers(self, fs) -> list[str]:
        """The `layers` param made concrete against the cache: auto -> [its last stage]."""
        if "pooled" not in fs.meta:
            fs.pooled("")   # a cache from before pooling: FeatureSet's UserError says to re-run extract
        pooled = list(fs.meta["pooled"])
        want = self.params["layers"]
        if want == "auto":
            last = fs.meta.get("last_stage")
            if last is None:
                raise UserError(f"`{self.name}.layers` is auto (the backbone's last stage), but the feature cache "
                                f"{fs.dir} has no pooled last stage (see the extract log); name pooled layers "
                                f"instead: {pooled}")
            return [last]
        missing = [layer for layer in want if layer not in pooled]
        if missing:
            raise UserError(f"`{self.name}.layers` names {missing}, which the pooled cache {fs.dir} lacks (pooled: "
                            f"{pooled}); extract pools every layer of the top-level `layers` param and the last stage")
        return list(want)

    def vectors(self, fs) -> np.ndarray:
        """(N, D) float64: the pooled `layers` of a split, concatenated; sets `self.layers`."""
        self.layers = self.pooled_layers(fs)
        x = np.concatenate([fs.pooled(layer) for layer in self.layers], axis=1).astype(np.float64)
        check_finite(x, f"{self.name} pooled features ({fs.dir}, {fs.split})")
        return x

