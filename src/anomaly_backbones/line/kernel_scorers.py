"""Deployable OC-SVM and SVDD (methods.ocsvm, methods.svdd): raw uint8 image -> (map, score), the
kernel methods' score on the image's pooled features, in torch ops that export to ONNX.

Both scores have one form over the support vectors sv_i (standardized training vectors):

    score(z) = bias + diag * k(z, z) + sum_i coef_i k(sv_i, z),   z = (pooled(x) - mean) / scale

    OC-SVM  minus scikit-learn's decision function: bias = -intercept_ (= rho), diag = 0,
            coef = -dual_coef_ (libsvm's alphas)
    SVDD    ||phi(z) - c||^2: bias = a'Ka, diag = 1, coef = -2 a

k is the RBF kernel exp(-gamma ||z - sv||^2) (gamma as fitted: `scale` resolved on the training
vectors) or the linear one z.sv. The pooled vector is the mean of the layer's map in float64,
rounded to float32 as the feature cache stores it (features.PooledWriter), then float64 like the
methods' `vectors`; ||z - sv||^2 is summed from differences, not expanded (no cancellation).
Image-level: the map output is the score broadcast over the image (as DN2's).
"""
from __future__ import annotations

import numpy as np
import torch

from ..backbones import Backbone
from .scorers import _Input


class KernelScorer(_Input):
    """image (1, 3, S, S) -> (map (1, S, S) = the score everywhere, score (1,))."""

    def __init__(self, backbone: Backbone, layers: list[str], image_size: int, mean: np.ndarray,
                 scale: np.ndarray, sv: np.ndarray, coef: np.ndarray, bias: float, diag: float, kind: str,
                 gamma: float):
        super().__init__(backbone, list(layers))
        self.layers, self.size, self.kind = list(layers), int(image_size), kind
        self.bias, self.diag, self.gamma = float(bias), float(diag), float(gamma)
        f64 = dict(dtype=torch.float64)
        self.register_buffer("mean", torch.as_tensor(mean, **f64).reshape(1, -1))
        self.register_buffer("scale", torch.as_tensor(scale, **f64).reshape(1, -1))
        self.register_buffer("sv", torch.as_tensor(sv, **f64))                   # (n_sv, D)
        self.register_buffer("coef", torch.as_tensor(coef, **f64).reshape(-1, 1))

    @classmethod
    def of(cls, method: str, backbone: Backbone, fitted, image_size: int) -> "KernelScorer":
        """The scorer of a fitted methods.ocsvm.OCSVM ("ocsvm") or methods.svdd.SVDD ("svdd")."""
        sc = fitted.scaler
        if method == "ocsvm":
            svm = fitted.svm
            return cls(backbone, fitted.layers, image_size, sc.mean_, sc.scale_, svm.support_vectors_,
                       -svm.dual_coef_[0], -float(svm.intercept_[0]), 0.0, fitted.kernel,
                       float(getattr(svm, "_gamma", 0.0)))
        return cls(backbone, fitted.layers, image_size, sc.mean_, sc.scale_, fitted.sv, -2.0 * fitted.a,
                   float(fitted.aka), 1.0, fitted.kernel, float(fitted.gamma))

    def forward(self, image: torch.Tensor):
        feats = self.features(image)
        x = torch.cat([feats[name].double().mean((2, 3)).float() for name in self.layers], 1).double()
        z = (x - self.mean) / self.scale                                           # (1, D)
        if self.kind == "rbf":
            kz = torch.exp(-self.gamma * ((self.sv - z) ** 2).sum(1, keepdim=True))  # (n_sv, 1)
            kzz = torch.ones_like(z[:, :1])
        else:
            kz = self.sv @ z.t()
            kzz = (z * z).sum(1, keepdim=True)
        score = (self.bias + self.diag * kzz + (self.coef * kz).sum(0, keepdim=True)).reshape(1).float()
        return score.reshape(1, 1, 1).expand(1, self.size, self.size), score
