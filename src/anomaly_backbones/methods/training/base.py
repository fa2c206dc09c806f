"""ImageMethod: the shared part of every method that trains the backbone (`reads = "images"`).

    m = get_method("panda")(params, layers, seed, backbone=load_backbone(name, init, seed), device=dev)
    m.on_epoch = lambda epoch, values: ...     # optional: per-epoch loss (the stage logs it)
    m.fit(ImageSet(train_images))              # (N, S, S, 3) uint8 prepared images
    scores, None = m.predict(ImageSet(test_images))

A subclass defines `setup(train)` (centres, optimizer), `step(train, idx) -> float` (one
optimizer step on the images train.images[idx], returns its loss) and `scores(test) -> (N,)`;
`train_features()` gives the training features of the current weights (computed once per weight
state), `test_features(test)` a test set's. The loop here owns
what they share: seeding, the trunk and its frozen prefix, batches in a seeded random order
(like a shuffled DataLoader without drop_last), the progress bar, the memory guard, per-epoch
logging and, only when `test_curve` is set, the test ROC-AUC per epoch for a curve (reporting
only: training always runs `epochs` epochs and the last weights score; never used to pick one).

Device: fit moves the backbone's model to `self.device`; `inputs` moves a batch's uint8 pixels
there and normalizes them on the device (as the extractor does), so training, the prefix cache
and the features run there; features come back to the host (numpy) and the k-NN scores run on
the device again (methods/knn.py). Random choices (batch order, augmentations, new heads' init)
are drawn on the CPU as before, so on the CPU every move is a no-op and the results are the
same bits as before devices existed.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ...backbones import normalize
from ...device import synchronize, to_device
from ...resources import BASELINE_BYTES
from ...params.schema import Param
from ..base import Method
from .trunk import PrefixCache, Trunk, resolve_frozen

LIBS_BYTES = 0.2 * 2**30   # timm and torchvision loaded with the backbone


@dataclass
class ImageSet:
    """Prepared images of one split: (N, S, S, 3) uint8 (a read-only memory map is fine);
    labels (N,) 0/1 for a test set when a test curve is asked for."""
    images: np.ndarray
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def trained_params(epochs, batch_size: int, lr: float, frozen: str, **extra: Param) -> dict[str, Param]:
    """The params every method that trains the backbone has (defaults: its published recipe)."""
    return {
        "epochs": Param(epochs, int, low=0, special=("auto",) if epochs == "auto" else ()),
        "batch_size": Param(batch_size, int, low=1, help="training images per step (memory grows with it)"),
        "lr": Param(lr, float, low=0, low_open=True),
        **extra,
        "frozen_through": Param(frozen, str, help="auto (registry's 2nd layer; one layer: its first half) | none | a module name"),
        "test_curve": Param(False, bool, help="test ROC-AUC per epoch for the curve (never picks the epoch)"),
    }


class ImageMethod(Method):
    """Base of deep_svdd, panda, msc and doc (see the module docstring)."""

    level = "image"
    reads = "images"

    uses_prefix_cache = False   # True where no augmentation changes the frozen prefix's input

    def __init__(self, params: dict | None, layers: list[str], seed: int = 1024, backbone=None, device="cpu"):
        self.backbone = backbone
        self.on_epoch: Callable[[int, dict], None] | None = None
        self.losses: list[float] = []
        self.curve: list[float] = []
        self.forward_s = 0.0        # seconds in the network's forward pass in `features` (timings)
        super().__init__(params, layers, seed, device)

    def configure(self, p: dict) -> None:
        self.epochs, self.batch_size, self.lr = p["epochs"], p["batch_size"], p["lr"]
        self.test_curve = p["test_curve"]

    # -- the loop ----------------------------------------------------------------------
    def fit(self, train: ImageSet, test: ImageSet | None = None) -> None:
        if self.backbone is None:
            raise RuntimeError(f"{self.name}: construct with backbone=load_backbone(...) before fit")
        self.preflight()
        self.train_set, self._train_feats = train, None
        torch.manual_seed(self.seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        frozen = resolve_frozen(self.params["frozen_through"], self.backbone.name, self.name, self.backbone.model)
        self.backbone.model.to(self.device)   # in place (no-op on the CPU): the stage's backbone is this model
        self.trunk = Trunk(self.backbone.model, self.layers, frozen, train.image_size, self.name)
        self.prepare_trunk(train)
        self.guard(self.train_bytes(len(train), train.image_size),
                   f"{self.name} training ({len(train)} images of {train.image_size} px, "
                   f"{self.step_images(len(train))} images a step)",
                   f"lower `{self.name}.batch_size` (memory grows with it).")
        if self.uses_prefix_cache and frozen is not None and self.params.get("prefix_cache", False):
            self.cache_prefix(train, "train")
        self.setup(train)
        epochs = self.resolved_epochs(len(train))
        steps = math.ceil(len(train) / self.batch_size)
        with self.progress(epochs * steps, "train", "step") as bar:
            for epoch in range(epochs):
                self.begin_epoch(epoch)
                total = 0.0
                for idx in self.batches(len(train)):
                    total += self.step(train, idx) * len(idx)
                    self._train_feats = None   # the weights changed
                    bar.update(1)
                self.losses.append(total / len(train))
                bar.set_postfix(epoch=epoch + 1, loss=f"{self.losses[-1]:.4g}")
                values = {"loss": self.losses[-1]}
                if self.test_curve and test is not None and test.labels is not None:
                    from ...metrics import roc_auc

                    self.curve.append(roc_auc(test.labels, self.scores(test)))
                    values["test_image_auroc"] = self.curve[-1]
                self.end_epoch(epoch, train, test)
                if self.on_epoch is not None:
                    self.on_epoch(epoch, values)
        self.finish(train)

    def grid_scores(self, test: ImageSet):
        return self.scores(test), None

    # -- hooks for subclasses ----------------------------------------------------------
    def preflight(self) -> None:
        """Check the method's own inputs (files a param names) before any work: the stage calls
        it before loading the backbone, so a missing file stops it at once."""

    def prepare_trunk(self, train: ImageSet) -> None:
        """Change the trunk before training (e.g. freeze biases)."""

    def setup(self, train: ImageSet) -> None:
        raise NotImplementedError

    def step(self, train: ImageSet, idx: np.ndarray) -> float:
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> None:
        """Before each epoch (e.g. the learning-rate milestone)."""

    def end_epoch(self, epoch: int, train: ImageSet, test: ImageSet | None) -> None:
        """After each epoch (e.g. a PANDA-SES snapshot)."""

    def finish(self, train: ImageSet) -> None:
        """After training: the training features the k-NN scores read (Deep SVDD: its own)."""
        self.train_features()

    def scores(self, test: ImageSet) -> np.ndarray:
        raise NotImplementedError

    def resolved_epochs(self, n_train: int) -> int:
        return self.epochs

    # -- shared helpers ----------------------------------------------------------------
    def batches(self, n: int) -> list[np.ndarray]:
        """Indices of one epoch's batches: a seeded random order, the last batch may be short."""
        order = torch.randperm(n, generator=self.generator).numpy()
        return [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]

    def inputs(self, images: np.ndarray, idx=None) -> torch.Tensor:
        """(B, 3, S, S) float network input of images[idx] (all when idx is None), on self.device:
        the uint8 pixels are moved, then normalized there."""
        x = np.ascontiguousarray(images if idx is None else images[idx])
        x = to_device(torch.from_numpy(x.copy()), self.device).permute(0, 3, 1, 2)
        return normalize(x, self.backbone.mean, self.backbone.std)   # mean and std made on x's device

    def embed(self, data: ImageSet, idx: np.ndarray, key: str | None = None) -> torch.Tensor:
        """Trunk features (B, C) of data.images[idx], with autograd; from the prefix cache when
        `key` names a cached set."""
        prefix = self.trunk.prefix
        if key is not None and prefix is not None and key in prefix.store:
            with prefix.feeding(key, torch.from_numpy(np.asarray(idx))):
                return self.trunk(torch.zeros(len(idx), 3, 1, 1, device=self.device))
        return self.trunk(self.inputs(data.images, idx))

    def features(self, data: ImageSet, key: str | None = None) -> np.ndarray:
        """(N, C) float32 trunk features of every image, in order, without autograd (on the host)."""
        out = []
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(data), self.batch_size):
                out.append(self.embed(data, np.arange(s, min(s + self.batch_size, len(data))), key))
        synchronize(self.device)
        self.forward_s += time.perf_counter() - t
        return torch.cat(out).cpu().numpy()

    def cache_prefix(self, data: ImageSet, key: str) -> None:
        """Compute the frozen prefix's output for every image of `data` once (module trunk.py)."""
        if self.trunk.prefix is None:
            cache = PrefixCache(self.trunk)
            if not cache.check(self.inputs(data.images, np.arange(min(2, len(data))))):
                return
            self.trunk.prefix = cache
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(data), self.batch_size):
                self.trunk.prefix.add(key, self.inputs(data.images, np.arange(s, min(s + self.batch_size, len(data)))))
        synchronize(self.device)
        self.forward_s += time.perf_counter() - t

    def embed_all(self, data: ImageSet, key: str | None = None) -> np.ndarray:
        """The features the method scores with (Mean-Shifted: normalized)."""
        return self.features(data, key)

    def train_features(self) -> np.ndarray:
        """embed_all of the training set with the current weights, computed once per weight state."""
        if self._train_feats is None:
            self._train_feats = self.embed_all(self.train_set, "train")
        return self._train_feats

    def test_features(self, test: ImageSet) -> np.ndarray:
        """embed_all of a test set; with the prefix cache, its prefix is computed once per set."""
        if self.trunk.prefix is None or "train" not in self.trunk.prefix.store:
            return self.embed_all(test)
        if getattr(self, "_cached_test", None) is not test:
            self.trunk.prefix.store.pop("test", None)
            self.cache_prefix(test, "test")
            self._cached_test = test
        return self.embed_all(test, "test")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.trunk.trainable()]

    # -- memory ------------------------------------------------------------------------
    def train_bytes(self, n_train: int, image_size: int) -> float:
        """Peak RSS estimate of training: the model's weights with their gradients and optimizer
        state (4 copies), per image of a batch the activations autograd keeps (every output of
        the trainable modules up to the trunk's layer, twice: the tensor and its gradient), four
        times the largest activation (the working set of the frozen prefix) and the input, the
        prefix cache of train and test sets, and the training features."""
        t = self.trunk
        weights = sum(p.numel() for p in t.model.parameters()) * 4.0
        per_image = 4.0 * (2 * t.activation_elems + 4 * t.largest_elems + 6 * 3 * image_size ** 2)
        cache = 0.0
        if self.uses_prefix_cache and t.frozen_through is not None and self.params.get("prefix_cache", False):
            cache = 4.0 * t.elems[t.frozen_through] * 2 * n_train   # train and (about as many) test images
        return (BASELINE_BYTES + LIBS_BYTES + 4 * weights + self.step_images(n_train) * per_image + cache
                + 8.0 * n_train * t.dim)

    views = 1   # images per training example (Mean-Shifted: two augmented views)

    def step_images(self, n_train: int) -> int:
        """Images through the network in one training step: `views` per example of a batch, a
        batch being at most the training set (40 images never make a batch of 200)."""
        return self.views * min(self.batch_size, n_train)
