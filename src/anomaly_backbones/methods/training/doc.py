"""DOC, joint optimization (Perera & Patel, IEEE TIP 2019, "Learning Deep Features for One-Class
Classification"): compactness on the target images plus descriptiveness (cross-entropy) on a
labelled reference set, one network shared by both.

As the authors' Caffe code (github.com/PramuPerera/DeepOneClass: joint2.prototxt,
solverdistance.prototxt, distance_layer.py, run.py, classifyImage.py), mapped onto the trunk:
- network: the trunk (trunk.py; the early stages frozen, as the authors freeze conv1-conv4 of
  AlexNet) and a new linear head to the reference classes (the authors' fc8: Gaussian init, std
  0.01, bias 0). The trunk's pooled features play the role of fc7: they are what scoring reads.
- each step: a batch of target (training) images and a batch of reference images (32 each);
  loss = cross-entropy of the head on the reference batch + `lambda` (0.1) x compactness of the
  head's output on the target batch; compactness is the authors' DistanceLayer forward:
  sum_i ||x_i - m_i||^2 / n^2, m_i the mean of the batch's other outputs. Its gradient here is
  autograd's, i.e. the true gradient of that value; the authors' hand-written backward is not
  (tests/test_training_losses.py measures the difference).
- Caffe SGD: lr 5e-5, momentum 0.9, weight decay 5e-4 on weights; biases at twice the lr and
  no decay (lr_mult 2, decay_mult 0); 700 iterations (run.py's --niter): `epochs: auto` = the
  fewest epochs over the target images holding 700 steps.
- score: the Euclidean distance of a test image's features to the nearest training image's
  (the authors' template matching, k = 1).
Not reproduced: Caffe's random 227 px crops and mirroring of 256 px images (the prepared centre
crops are used), AlexNet's dropout in fc6 / fc7 (the trunk has no dropout before its features).

The reference set (`doc.reference`) is a folder in ImageFolder layout: one sub-folder per class,
its images inside; read with the prepared images' resize and crop ratio (256 / 224), a batch at
a time, in a seeded order. Without one the stage stops before training.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...params.schema import Param
from .base import ImageMethod, ImageSet, trained_params
from ..knn import knn_scores

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
AUTHORS_ITERATIONS = 700


def doc_compactness(x: torch.Tensor) -> torch.Tensor:
    """The authors' DistanceLayer value: sum_i sum_j ((x_ij - m_ij) / n)^2 for (n, k) outputs x,
    m_i the mean of the other n - 1 rows."""
    n = x.shape[0]
    m = (x.sum(dim=0, keepdim=True) - x) / float(n - 1)
    return (((x - m) / float(n)) ** 2).sum()


def reference_files(folder: str) -> tuple[list[Path], list[int], list[str]]:
    """(image paths, class index of each, class names) of an ImageFolder-layout folder."""
    root = Path(folder)
    if folder == "none" or not root.is_dir():
        what = "is not set" if folder == "none" else f"{folder!r} is not a folder"
        raise UserError(f"`doc.reference` {what}: DOC needs a labelled reference set; set it to a folder "
                        f"with one sub-folder of images per class (ImageFolder layout, 2+ classes)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for i, c in enumerate(classes):
        found = sorted(f for f in (root / c).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [i] * len(found)
    if len([c for i, c in enumerate(classes) if i in set(labels)]) < 2:
        raise UserError(f"`doc.reference` {folder}: needs 2+ sub-folders (classes) with images "
                        f"({', '.join(IMAGE_SUFFIXES)}); found {len(set(labels))}")
    return files, labels, classes


class DOC(ImageMethod):
    name = "doc"
    PARAMS = trained_params(
        "auto", 32, 5e-5, "auto",
        reference=Param("none", str, help="ImageFolder-layout folder of labelled reference images"),
        momentum=Param(0.9, float, low=0, high=1),
        weight_decay=Param(5e-4, float, low=0),
        **{"lambda": Param(0.1, float, low=0, help="weight of the compactness loss")},
        prefix_cache=Param(True, bool, help="compute the frozen prefix once per image"))
    RESOLVES_AUTO = ("epochs",)   # from the training images: the authors' iterations (resolved_epochs)
    uses_prefix_cache = True
    def step_images(self, n_train: int) -> int:
        """A target batch (at most the training set) and a full reference batch per step."""
        return min(self.batch_size, n_train) + self.batch_size

    def preflight(self) -> None:
        reference_files(self.params["reference"])

    def resolved_epochs(self, n_train: int) -> int:
        if self.epochs != "auto":
            return self.epochs
        return math.ceil(AUTHORS_ITERATIONS / math.ceil(n_train / self.batch_size))

    def setup(self, train: ImageSet) -> None:
        self.files, self.labels, self.classes = reference_files(self.params["reference"])
        self.head = nn.Linear(self.trunk.dim, len(self.classes))
        nn.init.normal_(self.head.weight, std=0.01)   # on the CPU from the seeded generator, then moved
        nn.init.zeros_(self.head.bias)
        self.head.to(self.device)
        named = [*self.trunk.trainable(), *(("head." + n, p) for n, p in self.head.named_parameters())]
        weights = [p for n, p in named if not n.endswith("bias")]
        biases = [p for n, p in named if n.endswith("bias")]
        p = self.params
        self.optimizer = torch.optim.SGD([
            {"params": weights, "lr": self.lr, "weight_decay": p["weight_decay"]},
            {"params": biases, "lr": 2 * self.lr, "weight_decay": 0.0}], lr=self.lr, momentum=p["momentum"])
        self.reference_order: list[int] = []
        self.size = train.image_size

    def reference_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `batch_size` reference images (a new seeded permutation each pass) and labels."""
        from ...data.images import load_image

        idx = []
        while len(idx) < self.batch_size:
            if not self.reference_order:
                self.reference_order = torch.randperm(len(self.files), generator=self.generator).tolist()
            idx.append(self.reference_order.pop(0))
        resize = round(self.size * 256 / 224)
        images = np.stack([load_image(self.files[i], resize, self.size)[0] for i in idx])
        return self.inputs(images), torch.tensor([self.labels[i] for i in idx], device=self.device)

    def loss(self, target_out: torch.Tensor, ref_logits: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(ref_logits, ref_labels) + self.params["lambda"] * doc_compactness(target_out)

    def step(self, train: ImageSet, idx: np.ndarray) -> float:
        x_ref, y_ref = self.reference_batch()
        self.optimizer.zero_grad()
        loss = self.loss(self.head(self.embed(train, idx, "train")), self.head(self.trunk(x_ref)), y_ref)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())

    def scores(self, test: ImageSet) -> np.ndarray:
        return knn_scores(self.train_features(), self.test_features(test), 1, squared=False, device=self.device)
