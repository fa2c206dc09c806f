"""PANDA (Reiss, Cohen, Bergman, Hoshen, CVPR 2021): adapt a pretrained network to the normal
images with a compactness loss, score with DN2.

As the authors' code (github.com/talreiss/PANDA, panda.py, losses.py, utils.py): the network is
in eval mode throughout (BatchNorm statistics frozen); the early stages are frozen (ResNet conv1,
bn1, layer1, layer2: `frozen_through`, trunk.py); the centre c is the mean of the initial training
features; the loss is mean over the batch of ||f - c||^2 / C; SGD (lr 1e-2, momentum 0.9,
weight decay 5e-5) with the gradient norm clipped to 1e-3; batches of 32 in a random order,
15 epochs; score = DN2 (k = 2, sum of squared distances) against the training features of
the final network. Here the features are the trunk's (trunk.py), not ResNet's pooled layer4.

Variants (`variant`):
- early: the epoch cap (`epochs`), the authors' default.
- ses (sparse early stopping, as the seed defines it): a snapshot of the weights every
  `ses_every` epochs (and after the last); each snapshot scores the test set, its scores are
  divided by their mean over the test inputs, and an image's score is the maximum over snapshots.
- ewc: the loss adds lambda/2 * sum_i F_i (theta_i - theta*_i)^2 over the trainable parameters
  (authors' EWCLoss, lambda 1e4), F the diagonal Fisher information (ewc.py).
"""
from __future__ import annotations

import numpy as np
import torch

from ...device import to_device
from ...params.schema import Param
from .base import ImageMethod, ImageSet, trained_params
from .ewc import ewc_penalty, load_or_estimate_fisher
from ..knn import dn2_scores


def compactness_loss(features: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """PANDA's CompactnessLoss: mean over the batch of ||f - c||^2 / C."""
    return ((features - center).norm(dim=1).pow(2) / features.shape[1]).mean()


class PANDA(ImageMethod):
    name = "panda"
    PARAMS = trained_params(
        15, 32, 1e-2, "auto",
        variant=Param("early", str, choices=("early", "ses", "ewc")),
        momentum=Param(0.9, float, low=0, high=1),
        weight_decay=Param(5e-5, float, low=0),
        clip=Param(1e-3, float, low=0, low_open=True, help="gradient norm clip"),
        k=Param(2, int, low=1, help="DN2 nearest training features"),
        ses_every=Param(5, int, low=1, help="ses: a snapshot every this many epochs"),
        ewc_lambda=Param(1e4, float, low=0),
        fisher=Param("none", str, help="ewc: a torch file {param name: diagonal Fisher}; none: estimate"),
        prefix_cache=Param(True, bool, help="compute the frozen prefix once per image"))
    uses_prefix_cache = True

    def configure(self, p: dict) -> None:
        super().configure(p)
        self.variant, self.k = p["variant"], p["k"]

    def preflight(self) -> None:
        if self.variant == "ewc":
            from .ewc import check_fisher_source

            check_fisher_source(self.params["fisher"], self.backbone)

    def setup(self, train: ImageSet) -> None:
        self.center = to_device(torch.from_numpy(self.train_features()), self.device).mean(dim=0)
        p = self.params
        self.optimizer = torch.optim.SGD(self.trainable_parameters(), lr=self.lr, momentum=p["momentum"],
                                         weight_decay=p["weight_decay"])
        self.ewc = None
        if self.variant == "ewc":
            fisher = load_or_estimate_fisher(self, train)
            self.ewc = (fisher, {n: q.detach().clone() for n, q in self.trunk.trainable()})
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def loss(self, features: torch.Tensor) -> torch.Tensor:
        loss = compactness_loss(features, self.center)
        if self.ewc is not None:
            fisher, old = self.ewc
            loss = loss + ewc_penalty(self.trunk.trainable(), old, fisher, self.params["ewc_lambda"])
        return loss

    def step(self, train: ImageSet, idx: np.ndarray) -> float:
        self.optimizer.zero_grad()
        loss = self.loss(self.embed(train, idx, "train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.params["clip"])
        self.optimizer.step()
        return float(loss.item())

    def end_epoch(self, epoch: int, train: ImageSet, test: ImageSet | None) -> None:
        if self.variant == "ses" and ((epoch + 1) % self.params["ses_every"] == 0 or epoch + 1 == self.epochs):
            self.snapshots.append({n: q.detach().clone() for n, q in self.trunk.trainable()})

    def scores(self, test: ImageSet) -> np.ndarray:
        if self.variant != "ses" or not self.snapshots:
            return dn2_scores(self.train_features(), self.test_features(test), self.k, self.device)
        params = dict(self.trunk.trainable())
        final = {n: q.detach().clone() for n, q in params.items()}
        best = None
        try:
            for snap in self.snapshots:
                with torch.no_grad():
                    for n, q in params.items():
                        q.copy_(snap[n])
                s = dn2_scores(self.features(self.train_set, "train"), self.test_features(test), self.k, self.device)
                s = s / s.mean()
                best = s if best is None else np.maximum(best, s)
        finally:
            with torch.no_grad():
                for n, q in params.items():
                    q.copy_(final[n])
        return best
