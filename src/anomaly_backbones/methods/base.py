"""What every anomaly detection method provides: the `Method` contract.

A method is one class in its own module (methods/<name>.py), registered by name in
`anomaly_backbones.methods.METHODS`, that declares everything about itself:

    class PaDiM(Method):
        name = "padim"                     # the registry name, the params group, the stage fit@padim
        level = "pixel"                    # "pixel" (anomaly maps) | "image" (scores only)
        reads = "features"                 # "features" (the cache) | "images" (trains the backbone)
        PARAMS = {"d": Param(...), ...}    # its params.yaml group: defaults and rules
        RESOLVES_AUTO = ()                 # params whose `auto` the method resolves itself
        def fit_bytes(...), predict_bytes(...)   # its peak-memory estimates, for `guard`

Use:

    m = Method(params, layers, seed, device)  # params: its group of params.yaml, resolved (no `auto`
                                         # but in RESOLVES_AUTO: UserError otherwise); unknown keys /
                                         # wrong types -> UserError, defaults filled;
                                         # device: a torch.device or its name (default cpu)
    m.fit(train)                         # train: FeatureSet (`reads = "features"`)
    scores, maps = m.predict(test)       # (N,) image scores; (N, S, S) float32 maps, or None

Kinds of method, by two class attributes:
- `level = "pixel"`: `grid_scores` returns per-position scores (N, h, w) on the feature grid;
  `predict` turns them into (N, S, S) maps (bilinear upsampling + Gaussian blur, `to_maps`) and,
  when the method gives no image scores of its own, takes each map's maximum.
  `level = "image"`: no map (`grid_scores` returns (scores, None)); the pixel metrics of such a
  method are "not applicable" (null in metrics.json, "—" in tables, never averaged).
- `reads = "features"`: fit/predict read the feature cache (FeatureSet; never the network).
  `reads = "images"`: the method trains the backbone on prepared images (its own stage,
  train@<name>; methods/training/base.py, ImageMethod). Its hooks, which the stage calls:
    m = Method(params, layers, seed, backbone=load_backbone(...), device=dev)
    m.preflight()                        # before any work: a file a param names is missing -> UserError
    m.on_epoch = fn                      # fn(epoch, {"loss": ..., ...}) after each epoch (DVCLive)
    m.fit(train, test)                   # train, test: ImageSet; test only for the per-epoch test
                                         # ROC-AUC curve (`test_curve`; never picks the epoch), else None
    m.predict(test)                      # (scores, None); m.forward_s: seconds of its forward passes
    m.collapsed                          # deep_svdd only: every training image maps to one point
    m.losses, m.curve, m.resolved_epochs(n_train)   # what results.json records

Params: `resolve_params` (classmethod) turns the group's `auto` values into concrete ones once,
for the whole pipeline (anomaly_backbones.pipeline.config.resolve); `cached_layers` says which
cached layers the method reads, so the extract stage caches them. An `auto` the method does not
resolve itself (RESOLVES_AUTO) reaching the constructor is a UserError: a silent default would
be a different method. Memory: `guard` stops a step before it allocates too much, from the
class's `fit_bytes` / `predict_bytes`.

Device: `self.device` (anomaly_backbones.device). One code path: a method reads the cache on the
host and moves what it computes on with `to_device(x, self.device)`, a no-op on the CPU (the same
bits as before devices existed); its outputs (scores, grids) come back as host arrays. `guard`
checks GPU free memory when the device is a GPU.

A new method: one file, its name in METHODS, its group in params.yaml; the ten-line example is
docs/architecture.md, "Adding a method" (tests/test_contract.py runs it as the fit stage does).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from tqdm import tqdm

from ..device import check_memory
from ..errors import UserError
from ..params.schema import Param, check_group
from .common import anomaly_maps, check_finite


def _layer_list(v) -> str | None:
    if isinstance(v, list) and len(set(v)) != len(v):
        return "lists a layer more than once"
    return None


# params several methods share
SIGMA = Param(4.0, float, low=0, help="Gaussian blur of the anomaly map (0: none)")
LAYERS = Param("auto", list, special=("auto",), check=_layer_list)


class Method:
    """Base class: params checked once, the predict tail shared (see the module docstring)."""

    name: ClassVar[str] = ""                 # the registry name, params group and `fit@<name>` stage
    level: ClassVar[str] = "pixel"           # "pixel" (anomaly maps) | "image" (scores only)
    reads: ClassVar[str] = "features"        # "features" (the cache) | "images" (trains the backbone)
    PARAMS: ClassVar[dict[str, Param]] = {}  # the params group's schema
    RESOLVES_AUTO: ClassVar[tuple[str, ...]] = ()   # params whose `auto` the method resolves itself
    deferred_fit_s: float = 0.0              # fitting done inside predict (PaDiM's one pass): seconds, so
                                             # the fit stage books them as fit, not as per-image cost

    def __init__(self, params: dict | None, layers: list[str], seed: int = 1024, device="cpu"):
        self.params = check_group(self.name, self.PARAMS, params)
        auto = [k for k, spec in self.PARAMS.items()
                if "auto" in spec.special and self.params[k] == "auto" and k not in self.RESOLVES_AUTO]
        if auto:
            raise UserError(f"{self.name}: {', '.join(f'`{self.name}.{k}`' for k in auto)} still `auto`: resolve "
                            f"the group first (anomaly_backbones.pipeline.config.resolve, or the class's "
                            f"resolve_params) or give a value")
        self.device = torch.device(device)
        if not layers:
            raise UserError(f"{self.name}: `layers` is empty; set the top-level `layers` param")
        self.layers = list(layers)
        self.seed = int(seed)
        self.label = self.name      # progress bars say "<label> <step>"; the stage adds backbone and category
        self.configure(self.params)

    def __init_subclass__(cls, **kwargs):
        """The contract's attributes checked where a method is declared: a wrong one is a bug."""
        super().__init_subclass__(**kwargs)
        if cls.level not in ("pixel", "image") or cls.reads not in ("features", "images"):
            raise TypeError(f"{cls.__name__}: level must be pixel | image and reads features | images")
        if not all(isinstance(v, Param) for v in cls.PARAMS.values()):
            raise TypeError(f"{cls.__name__}.PARAMS must map param names to Param")

    # -- params ------------------------------------------------------------------------
    def configure(self, p: dict) -> None:
        """Read the checked params into attributes; cross-param rules raise UserError here."""

    @classmethod
    def resolve_params(cls, group: dict, *, backbone: str, layers: list[str], shapes: dict | None) -> dict:
        """The group with every `auto` made concrete. `shapes` ({layer: (C, H, W)} of the feature
        cache) is None before extraction; values that need it stay as given until then."""
        return dict(group)

    @classmethod
    def cached_layers(cls, group: dict, layers: list[str]) -> list[str]:
        """Layers of the feature cache this method reads (the extract stage caches all of them)."""
        return list(layers)

    # -- fit and predict ---------------------------------------------------------------
    def fit(self, train) -> None:
        """Learn from the defect-free training split."""
        raise NotImplementedError

    def grid_scores(self, test) -> tuple[np.ndarray | None, np.ndarray | torch.Tensor | None]:
        """(image scores (N,) or None, per-position scores (N, h, w) or None).

        None scores: each image's score is the maximum of its anomaly map. None grid: an
        image-level method (then scores are required)."""
        raise NotImplementedError

    def to_maps(self, grid, size: int) -> np.ndarray:
        """(N, h, w) per-position scores -> (N, size, size) float32 anomaly maps."""
        return anomaly_maps(grid, size, self.params.get("sigma", 4.0))

    def predict(self, test) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) image scores and (N, S, S) float32 anomaly maps (None for image-level methods),
        both checked finite."""
        scores, grid = self.grid_scores(test)
        maps = None
        if grid is not None:
            maps = self.to_maps(grid, test.image_size)
            check_finite(maps, f"{self.name} anomaly maps")
            if scores is None:
                scores = maps.reshape(len(maps), -1).max(1)
        elif self.level != "image" or scores is None:
            raise RuntimeError(f"{self.name}: grid_scores returned no {'scores' if scores is None else 'grid'}")
        check_finite(scores, f"{self.name} image scores")
        return scores, maps

    def progress(self, total: int, step: str, unit: str = "it") -> tqdm:
        """A progress bar with ETA on stderr for a step longer than a few seconds, named
        "<label> <step>" (e.g. "patchcore tf_efficientnet_lite0 chip coreset"); it goes away when
        the step ends. Pure reporting: never changes a result."""
        return tqdm(total=total, desc=f"{self.label} {step}", unit=unit, leave=False, mininterval=1.0,
                    dynamic_ncols=True)

    # -- memory ------------------------------------------------------------------------
    def guard(self, estimate: float, what: str, fix: str) -> None:
        """Stop before a step whose estimated peak exceeds the memory available (`fix`: the param
        that lowers it): RSS against MemAvailable on the CPU, device memory against the GPU's free
        memory on a GPU (the same estimate: the method's working arrays live on its device)."""
        check_memory(estimate, what, fix, self.device)
