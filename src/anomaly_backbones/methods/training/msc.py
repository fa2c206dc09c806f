"""Mean-Shifted Contrastive loss (Reiss & Hoshen, AAAI 2023), with the angular centre loss.

As the authors' code (github.com/talreiss/Mean-Shifted-Anomaly-Detection, main.py and utils.py,
run with --angular): features are L2-normalized; the centre c is the normalized mean of the
initial training features; each batch is seen as two MoCo-v2 augmented views; with o = z - c for
both views, loss = contrastive(o1, o2) (o normalized again, temperature 0.25, the 2B x 2B
similarity matrix without its diagonal) + mean ||o1||^2 + mean ||o2||^2 (the angular centre
loss: for unit z and c, ||z - c||^2 = 2 - 2 cos); SGD lr 1e-5, weight decay 5e-5, no momentum;
batch 64, 20 epochs; the network in eval mode (BatchNorm frozen); score = DN2 on the normalized
features (sum of the squared distances to the 2 nearest, = 2 - 2 cos each).

Augmentations (torchvision.transforms.v2 on each uint8 image, seeded): RandomResizedCrop(S,
scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, RandomGrayscale p 0.2, GaussianBlur
(sigma 0.1-2, kernel 23 px: the authors blur with PIL's radius = sigma, which needs no kernel
size; 23 covers +-5.5 sigma) with p 0.5, horizontal flip. S is the prepared image size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...backbones import normalize
from ...device import to_device
from ...params.schema import Param
from .base import ImageMethod, ImageSet, trained_params
from ..knn import dn2_scores

TEMPERATURE = 0.25


def mean_shifted_contrastive_loss(out_1: torch.Tensor, out_2: torch.Tensor, temp: float = TEMPERATURE) -> torch.Tensor:
    """The authors' contrastive_loss of the mean-shifted features of two views, (B, C) each."""
    out_1, out_2 = F.normalize(out_1, dim=-1), F.normalize(out_2, dim=-1)
    bs = out_1.size(0)
    out = torch.cat([out_1, out_2], dim=0)
    sim = torch.exp(out @ out.t() / temp)
    off_diagonal = ~torch.eye(2 * bs, dtype=torch.bool, device=out.device)
    sim = sim.masked_select(off_diagonal).view(2 * bs, -1)
    pos = torch.exp((out_1 * out_2).sum(dim=-1) / temp)
    pos = torch.cat([pos, pos], dim=0)
    return (-torch.log(pos / sim.sum(dim=-1))).mean()


def msc_loss(z_1: torch.Tensor, z_2: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Mean-shifted contrastive loss plus the angular centre loss, of normalized features z."""
    o_1, o_2 = z_1 - center, z_2 - center
    return mean_shifted_contrastive_loss(o_1, o_2) + (o_1 ** 2).sum(dim=1).mean() + (o_2 ** 2).sum(dim=1).mean()


def moco_v2(size: int):
    """The MoCo-v2 augmentation of one (3, S, S) uint8 image (module docstring)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5),
        v2.RandomHorizontalFlip(),
    ])


class MeanShifted(ImageMethod):
    name = "msc"
    PARAMS = trained_params(
        20, 64, 1e-5, "auto",
        weight_decay=Param(5e-5, float, low=0),
        k=Param(2, int, low=1, help="DN2 nearest training features"))
    views = 2

    def embed_normalized(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), dim=-1)

    def embed_all(self, data: ImageSet, key: str | None = None) -> np.ndarray:
        return F.normalize(torch.from_numpy(self.features(data, key)), dim=-1).numpy()

    def setup(self, train: ImageSet) -> None:
        feats = to_device(torch.from_numpy(self.train_features()), self.device)
        self.center = F.normalize(feats.mean(dim=0), dim=-1)
        self.optimizer = torch.optim.SGD(self.trainable_parameters(), lr=self.lr,
                                         weight_decay=self.params["weight_decay"])
        self.augment = moco_v2(train.image_size)

    def view(self, images: np.ndarray) -> torch.Tensor:
        """One augmented view of each image, as network input on self.device (the augmentations
        run on the CPU, drawn from torch's seeded global generator as before; the uint8 views
        are then moved)."""
        x = torch.from_numpy(np.ascontiguousarray(images).copy()).permute(0, 3, 1, 2)
        x = torch.stack([self.augment(im) for im in x])
        return normalize(to_device(x, self.device), self.backbone.mean, self.backbone.std)

    def step(self, train: ImageSet, idx: np.ndarray) -> float:
        images = train.images[idx]
        x_1, x_2 = self.view(images), self.view(images)
        self.optimizer.zero_grad()
        loss = msc_loss(self.embed_normalized(x_1), self.embed_normalized(x_2), self.center)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def scores(self, test: ImageSet) -> np.ndarray:
        return dn2_scores(self.train_features(), self.test_features(test), self.params["k"], self.device)
