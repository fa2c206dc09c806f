"""Deployable scorers besides PaDiM's (deploy.PadimScorer): raw uint8 image -> (maps, scores), each
the same computation as its method's predict on the feature cache, in torch ops that export to ONNX.

  PatchCoreScorer  trunk -> PatchCore.embed's 3x3 average, bilinear resize, concatenation and
                   channel pooling -> nearest bank vector (exact, as methods.patchcore.nearest)
                   -> the paper's reweighted image score -> bilinear upsampling + blur
  DN2Scorer        trunk up to the pooled layers -> global average pools -> sum of squared
                   distances to the k nearest training vectors (float64, as methods.knn); no map:
                   the map output is the score broadcast over the image, flagged as such
  SPADEScorer      trunk -> pooled deepest layer -> the K nearest training images (float64 top-K,
                   K fixed at export) -> their maps gathered from the gallery (every training
                   image's concatenated maps, a buffer) -> each position's kappa nearest gallery
                   vectors, one gallery image at a time (as methods.spade) -> upsampling + blur
  KernelScorer     OC-SVM and SVDD: pooled layers -> standardization -> RBF or linear kernel
                   against the support vectors (float64); image-level, as DN2
  DeployModel      any of them + the calibrated threshold: (map, score, decision = score > t)

build_scorer(method_name, backbone, fitted, image_size) picks one. NOT_EXPORTED says why the
others are not exported.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone, normalize
from ..backbones.ort_extractor import trunk
from ..errors import UserError
from ..methods import get_method
from ..methods.common import upsample_blur
from ..methods.grid import largest_grid, upsample_concat
from ..resources import BASELINE_BYTES


class _Input(nn.Module):
    def __init__(self, backbone: Backbone, layers: list[str]):
        super().__init__()
        self.trunk = trunk(backbone.model, layers, backbone.name)
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean, dtype=torch.float32))
        self.register_buffer("pixel_std", torch.tensor(backbone.std, dtype=torch.float32))

    def features(self, image: torch.Tensor) -> dict:
        x = normalize(image, self.pixel_mean, self.pixel_std) if image.dtype == torch.uint8 else image
        return self.trunk(x)


class PatchCoreScorer(_Input):
    """image (1, 3, S, S) -> (map (1, S, S), score (1,)); batch 1 (a line scores one part at a time)."""

    def __init__(self, backbone: Backbone, pc, image_size: int):
        super().__init__(backbone, list(pc.layers))
        self.layers, self.dim, self.sigma = list(pc.layers), int(pc.dim), float(pc.sigma)
        self.size, self.neighbors = int(image_size), int(pc.neighbors)
        self.register_buffer("bank", pc.bank.float().cpu())
        self.register_buffer("bank_sq", (self.bank * self.bank).sum(1))

    def forward(self, image: torch.Tensor):
        feats = self.features(image)
        maps = [F.avg_pool2d(feats[name], 3, 1, 1) for name in self.layers]
        h, w = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
        maps = [m if tuple(m.shape[-2:]) == (h, w) else F.interpolate(m, size=(h, w), mode="bilinear",
                                                                      align_corners=False) for m in maps]
        e = torch.cat(maps, 1)
        c = e.shape[1]
        e = e.permute(0, 2, 3, 1).reshape(-1, c)
        if c > self.dim:
            e = F.adaptive_avg_pool1d(e.unsqueeze(1), self.dim).squeeze(1)
        d2 = torch.addmm(self.bank_sq.unsqueeze(0), e, self.bank.t(), beta=1.0, alpha=-2.0)
        v, nn_idx = d2.min(1)
        dist = (v + (e * e).sum(1)).clamp_min(0.0).sqrt()                     # (P,)
        # 0-d tensors as indices do not export (the exporter would need their value): 1-element index_selects
        i = torch.argmax(dist).reshape(1)
        s_star = dist.index_select(0, i)                                        # (1,)
        if self.neighbors <= 1:
            score = s_star
        else:
            k = min(self.neighbors, self.bank.shape[0])
            j = nn_idx.index_select(0, i)
            mj = self.bank.index_select(0, j)[0]
            d_star = self.bank_sq - 2.0 * (self.bank @ mj) + self.bank_sq.index_select(0, j)
            d_star = torch.where(torch.arange(self.bank.shape[0]) == j, torch.full_like(d_star, -1.0), d_star)
            support = torch.topk(d_star, k, largest=False, sorted=True).indices
            d_test = ((self.bank.index_select(0, support) - e.index_select(0, i)) ** 2).sum(1).sqrt()
            score = (1.0 - torch.softmax(d_test.double(), 0)[0]).float() * s_star
        grid = dist.reshape(1, h, w)
        return upsample_blur(grid, self.size, self.sigma), score


class DN2Scorer(_Input):
    """image (1, 3, S, S) -> (map (1, S, S) = the score everywhere, score (1,))."""

    def __init__(self, backbone: Backbone, dn2, image_size: int):
        super().__init__(backbone, list(dn2.layers))
        self.layers, self.k, self.size = list(dn2.layers), int(dn2.k), int(image_size)
        self.register_buffer("bank", torch.as_tensor(dn2.bank, dtype=torch.float64))

    def forward(self, image: torch.Tensor):
        feats = self.features(image)
        x = torch.cat([feats[name].float().mean((2, 3)) for name in self.layers], 1).double()
        # summed from differences, not expanded: OpenVINO's CPU plugin computes float64 graphs in float32,
        # where |b|^2 - 2 x.b + |x|^2 cancels (docs/performance.md, "Export: SPADE, OC-SVM, SVDD")
        d2 = ((self.bank - x) ** 2).sum(1).unsqueeze(0)
        score = torch.topk(d2, self.k, dim=1, largest=False).values.sum(1).float()
        return score.reshape(1, 1, 1).expand(1, self.size, self.size), score


class SPADEScorer(_Input):
    """image (1, 3, S, S) -> (map (1, S, S), score (1,)). The gallery buffer holds every training
    image's maps at the largest grid, (N, h*w, C) float32 (4 N h w C bytes, in the .data file);
    the search is unrolled over the K chosen images, one (h*w, h*w) distance block each, so its
    peak memory is that of methods.spade's tile, not of the whole gallery."""

    def __init__(self, backbone: Backbone, spade, image_size: int):
        super().__init__(backbone, list(spade.layers))
        self.layers, self.deep = list(spade.layers), spade._deepest(spade.train)
        self.size, self.sigma, self.kappa = int(image_size), float(spade.sigma), int(spade.kappa)
        vec = spade.train_vec.double().cpu()
        self.k = min(int(spade.k), vec.shape[0])
        self.register_buffer("train_vec", vec)
        shapes = spade.train.shapes(self.layers)
        (h, w), c, n = largest_grid(shapes.values()), sum(s[0] for s in shapes.values()), vec.shape[0]
        spade.guard(BASELINE_BYTES + 3 * 4.0 * n * h * w * c, f"SPADE export gallery ({n} training images x "
                    f"{h} x {w} x {c} float32)", "the gallery is every training image's maps (the scorer's, the "
                    "exporter's copy and ONNX Runtime's); export fewer layers or images")
        self.grid, gallery = (h, w), torch.empty(n, h, w, c)
        for sl, f in spade.train.batches(self.layers, spade.batch_size):
            spade._concat(f, gallery[sl])                                       # written in place, as SPADE's
        gallery = gallery.reshape(n, h * w, c)
        self.register_buffer("gallery", gallery)
        self.register_buffer("gallery_sq", (gallery * gallery).sum(2))          # (N, h*w)

    def forward(self, image: torch.Tensor):
        feats = self.features(image)
        v = feats[self.deep].double().mean((2, 3))                               # (1, C), as spade._pooled
        d2 = ((self.train_vec - v) ** 2).sum(1).unsqueeze(0)                    # from differences, as DN2Scorer
        near_d2, near = torch.topk(d2, self.k, dim=1, largest=False, sorted=True)
        score = near_d2.mean(1).float()
        h, w = self.grid
        q = upsample_concat([feats[name].permute(0, 2, 3, 1) for name in self.layers], (h, w)).reshape(h * w, -1)
        best = None
        for j in range(self.k):   # unrolled: K is fixed at export
            i = near[0, j:j + 1]
            g = self.gallery.index_select(0, i)[0]                                # (h*w, C)
            d = torch.addmm(self.gallery_sq.index_select(0, i), q, g.t(), beta=1.0, alpha=-2.0)
            if self.kappa == 1:
                v1 = d.min(1, keepdim=True).values
                best = v1 if best is None else torch.minimum(best, v1)
            else:
                cand = torch.topk(d, min(self.kappa, h * w), dim=1, largest=False, sorted=True).values
                cand = cand if best is None else torch.cat([best, cand], 1)
                best = torch.topk(cand, min(self.kappa, cand.shape[1]), dim=1, largest=False, sorted=True).values
        dist = (best + (q * q).sum(1, keepdim=True)).clamp_min(0.0).sqrt().mean(1)
        return upsample_blur(dist.reshape(1, h, w), self.size, self.sigma), score


class KernelScorer(_Input):
    """OC-SVM and SVDD (methods.ocsvm, methods.svdd): image (1, 3, S, S) -> (map (1, S, S) = the
    score everywhere, score (1,)). Both scores have one form over the support vectors sv_i
    (standardized training vectors):

        score(z) = bias + diag * k(z, z) + sum_i coef_i k(sv_i, z),   z = (pooled(x) - mean) / scale

        OC-SVM  minus scikit-learn's decision function: bias = -intercept_ (= rho), diag = 0,
                coef = -dual_coef_ (libsvm's alphas)
        SVDD    ||phi(z) - c||^2: bias = a'Ka, diag = 1, coef = -2 a

    k is the RBF kernel exp(-gamma ||z - sv||^2) (gamma as fitted: `scale` resolved on the training
    vectors) or the linear one z.sv. The pooled vector is the mean of the layer's map in float64,
    rounded to float32 as the feature cache stores it (features.PooledWriter), then float64 like the
    methods' `vectors`; ||z - sv||^2 is summed from differences, not expanded (no cancellation)."""

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
                       float(svm._gamma))   # the fitted gamma (`scale` resolved)
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


class DeployModel(nn.Module):
    """scorer + threshold -> (map, score, decision): decision = score > threshold (bool)."""

    def __init__(self, scorer: nn.Module, threshold: float):
        super().__init__()
        self.scorer = scorer
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, image: torch.Tensor):
        maps, scores = self.scorer(image)
        return maps, scores, scores > self.threshold


def build_scorer(method: str, backbone: Backbone, fitted, image_size: int) -> nn.Module:
    """The deployable scorer of a fitted method; UserError for a method without one."""
    if method == "padim":
        from ..deploy import PadimScorer

        return PadimScorer(backbone, fitted, image_size)
    if method == "patchcore":
        return PatchCoreScorer(backbone, fitted, image_size)
    if method == "dn2":
        return DN2Scorer(backbone, fitted, image_size)
    if method == "spade":
        return SPADEScorer(backbone, fitted, image_size)
    if method in ("ocsvm", "svdd"):
        return KernelScorer.of(method, backbone, fitted, image_size)
    raise UserError(f"method {method!r} has no deployable export here: {NOT_EXPORTED.get(method, 'not a cache method')}")


NOT_EXPORTED = {
    "cflow": "its score is not a function of one image: each layer's likelihoods are exp(log p - the largest "
             "log p over the whole test set) and the map is (the largest summed likelihood over the whole test "
             "set) minus the image's own (methods.cflow.grid_scores), so an image's score depends on the images "
             "tested with it. Its flows do export (ONNX Runtime agrees with eager; docs/performance.md, "
             "\"Export: SPADE, OC-SVM, SVDD\"), but a one-image model would need another normalization: another score",
}
EXPORTABLE = ("padim", "patchcore", "dn2", "spade", "ocsvm", "svdd")
# no anomaly map (the method class's `level`): the map output is the score everywhere
IMAGE_LEVEL = tuple(m for m in EXPORTABLE if get_method(m).level == "image")
