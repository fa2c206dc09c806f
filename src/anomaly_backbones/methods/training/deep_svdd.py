"""Deep SVDD (Ruff et al., ICML 2018) on the backbone trunk.

As the authors' PyTorch code (github.com/lukasruff/Deep-SVDD-PyTorch, src/optim/deepSVDD_trainer.py):
the centre c is the mean of the initial network's outputs on the training images, coordinates
with |c_j| < eps (0.1) pushed to -eps / +eps by their sign (a zero unit is trivially matched by
zero weights); Adam with L2 weight decay; the learning rate times 0.1 from epoch `lr_milestone`
on; objective one-class (mean ||f - c||^2) or soft-boundary (R^2 + mean(max(0, ||f - c||^2 - R^2))
/ nu, R set after each batch to the (1 - nu) quantile of the batch's distances once
`warm_up_epochs` epochs have passed); score ||f - c||^2 (soft-boundary: minus R^2). Defaults are
the authors' CIFAR-10 command (lr 1e-4, 150 epochs, milestone 50, batch 200, weight decay
5e-7); their autoencoder pretraining is replaced by the backbone's initialization (`init`).

Network: the trunk (trunk.py) up to the deepest of `layers`, global average pooling, all of it
trained by default (`frozen_through: none`). The paper's network has no bias terms and uses
BatchNorm without affine parameters, because a bias lets the network map every input to c
(hypersphere collapse). A pretrained trunk has biases and affine BatchNorm, and its BatchNorm
statistics belong to its weights. So, by default (`biases: frozen`), every bias and every
normalization layer's parameters are frozen and BatchNorm uses its running statistics (eval
mode, as in every training method here): no additive term can move toward c. That is not the
paper's bias-free network: a frozen offset still exists (BatchNorm's beta - gamma * mean / std),
so collapse is still possible through the weights, only not by learning the offset. Collapse (the
network maps every training image to one point, wherever that point is) is detected after
training: `collapsed` when the final network's training outputs spread around their mean by at
most COLLAPSE_RATIO * ||c||^2 (mean squared distance; every image within 1e-3 ||c|| of one
point); the stage reports it. `biases: trained` trains biases and normalization parameters too.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...device import to_device
from ...params.schema import Param
from .base import ImageMethod, ImageSet, trained_params

COLLAPSE_RATIO = 1e-6
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def init_center(outputs: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """The authors' init_center_c from the (N, C) initial outputs."""
    c = outputs.sum(dim=0) / outputs.shape[0]
    c[(abs(c) < eps) & (c < 0)] = -eps
    c[(abs(c) < eps) & (c > 0)] = eps
    return c


def svdd_loss(outputs: torch.Tensor, c: torch.Tensor, objective: str, R: torch.Tensor, nu: float):
    """(loss, dist) as in the authors' training loop."""
    dist = torch.sum((outputs - c) ** 2, dim=1)
    if objective == "soft-boundary":
        scores = dist - R ** 2
        loss = R ** 2 + (1 / nu) * torch.mean(torch.max(torch.zeros_like(scores), scores))
    else:
        loss = torch.mean(dist)
    return loss, dist


def get_radius(dist: torch.Tensor, nu: float) -> float:
    """The (1 - nu) quantile of the distances (not squared), as the authors."""
    return float(np.quantile(np.sqrt(dist.clone().data.cpu().numpy()), 1 - nu))


class DeepSVDD(ImageMethod):
    name = "deep_svdd"
    PARAMS = trained_params(
        150, 200, 1e-4, "none",
        lr_milestone=Param(50, int, low=0, help="lr x 0.1 from this epoch on (0: never)"),
        weight_decay=Param(5e-7, float, low=0),
        objective=Param("one-class", str, choices=("one-class", "soft-boundary")),
        nu=Param(0.1, float, low=0, high=1, low_open=True),
        warm_up_epochs=Param(10, int, low=0, help="soft-boundary: epochs before R is updated"),
        eps=Param(0.1, float, low=0, help="centre coordinates nearer 0 are pushed to +-eps"),
        biases=Param("frozen", str, choices=("frozen", "trained"), help="biases and normalization params"))

    def configure(self, p: dict) -> None:
        super().configure(p)
        self.objective, self.nu = p["objective"], p["nu"]

    def prepare_trunk(self, train: ImageSet) -> None:
        if self.params["biases"] == "frozen":
            for m in self.trunk.model.modules():
                for name, q in m.named_parameters(recurse=False):
                    if name == "bias" or isinstance(m, NORM_LAYERS):
                        q.requires_grad_(False)

    def setup(self, train: ImageSet) -> None:
        out = to_device(torch.from_numpy(self.features(train)), self.device)
        self.c = init_center(out, self.params["eps"])
        self.R = torch.tensor(0.0, device=self.device)
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=self.lr,
                                          weight_decay=self.params["weight_decay"])

    def begin_epoch(self, epoch: int) -> None:
        if epoch == self.params["lr_milestone"] and epoch > 0:
            for g in self.optimizer.param_groups:
                g["lr"] = self.lr * 0.1

    def step(self, train: ImageSet, idx: np.ndarray) -> float:
        self.optimizer.zero_grad()
        loss, dist = svdd_loss(self.embed(train, idx), self.c, self.objective, self.R, self.nu)
        loss.backward()
        self.optimizer.step()
        if self.objective == "soft-boundary" and len(self.losses) >= self.params["warm_up_epochs"]:
            self.R.data = torch.tensor(get_radius(dist, self.nu), device=self.device)
        return float(loss.item())

    def finish(self, train: ImageSet) -> None:
        out = to_device(torch.from_numpy(self.features(train)), self.device).double()
        self.spread = float(((out - out.mean(0)) ** 2).sum(1).mean())
        self.collapsed = self.spread <= COLLAPSE_RATIO * float((self.c.double() ** 2).sum())

    def scores(self, test: ImageSet) -> np.ndarray:
        out = to_device(torch.from_numpy(self.features(test)), self.device)
        dist = torch.sum((out - self.c) ** 2, dim=1)
        return (dist - self.R ** 2 if self.objective == "soft-boundary" else dist).double().cpu().numpy()
