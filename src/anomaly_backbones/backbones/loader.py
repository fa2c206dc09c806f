"""load_backbone: a `backbone` and an `init` param -> the model in eval mode, float32, on the CPU.

The name becomes an architecture (architectures.resolve_name), the init a plan (random, or a weight
source from weights.SOURCES), checked before any model is built so that a stage stops before it
writes anything. Plus the params that depend on the registry: resolve_layers, registry_d.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from torch import nn

from ..errors import UserError
from .architectures import Spec, default_norm, named_inits, resolve_name, seeded_build, strip_aux
from .checkpoints import CHECKPOINT_SUFFIXES
from .registry import get_entry
from .tokens import token_maps
from .weights import CheckpointFile, WeightSource, WeightsPlan, source_for


@dataclass
class Backbone:
    model: nn.Module
    name: str                  # registry name, or the timm/torchvision name as given
    init: str                  # resolved: "imagenet:<key>" | "random:seed=<n>" | "file:<abs path>"
    mean: tuple
    std: tuple
    entry: dict | None         # registry entry, None outside the registry
    source: str = ""           # timm | torchvision | in-project
    arch: str = ""             # constructor name in that source
    weights: str = field(default="")  # where the weights came from (enum / timm tag / url / file), for logs


@dataclass
class _InitPlan:
    recorded: str                          # Backbone.init
    seed: int
    source: WeightSource | None = None     # None: random init
    weights: WeightsPlan | None = None


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or s.startswith(("~", ".")) or s.lower().endswith(CHECKPOINT_SUFFIXES)
            or os.path.exists(s))


def _plan_init(spec: Spec, init, seed) -> _InitPlan:
    """Parse `init` and check its weights are loadable (local, or a reachable host): no model built."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"`seed` must be an integer, got {seed!r}")
    if init is None:
        init = "imagenet"
    if not isinstance(init, str) or not init.strip():
        raise UserError(f"`init` must be 'imagenet', 'random', a named weights variant or a checkpoint path; "
                        f"got {init!r}")
    s = init.strip()
    inits = named_inits(spec)
    named = [k for k in inits if k != "random"]

    m = re.fullmatch(r"random(?::(?:seed=)?(-?\d+))?", s)
    if m:
        seed = int(m.group(1)) if m.group(1) is not None else seed
        return _InitPlan(f"random:seed={seed}", seed)

    if s.startswith("file:") or _looks_like_path(s):
        source = CheckpointFile(spec.name, spec.arch, "file", s.removeprefix("file:"))
        plan = source.plan()
        return _InitPlan(plan.what, seed, source, plan)

    if s.lower() in ("imagenet", "pretrained", "default"):
        if not named:
            raise UserError(f"no pretrained weights are known for backbone {spec.name!r}. Fix: init=random, "
                            f"or init=<checkpoint file>.")
        key = named[0]
    else:
        want = s.split(":", 1)[1] if s.lower().startswith("imagenet:") else s
        exact = [k for k in named if k == want] or [k for k in named if k.lower() == want.lower()]
        if not exact:
            raise UserError(f"unknown init {init!r} for backbone {spec.name!r}. Fix: use imagenet (= {named[0] if named else 'none'}), "
                            f"random, one of the named weights {named} (also as imagenet:<name>), or a checkpoint "
                            f"file path.")
        key = exact[0]
    source = source_for(spec.name, spec.arch, key, inits[key])
    return _InitPlan(f"imagenet:{key}", seed, source, source.plan())


def load_backbone(name: str, init: str = "imagenet", seed: int = 1024) -> Backbone:
    """Build backbone `name` with initialization `init`; see the package docstring.

    random: built after torch.manual_seed(seed) (the caller's RNG state is left as it was). Weights:
    the source builds the model (seeded the same way) and loads them; the input normalization is the
    weights' own where they define one (torchvision, timm), else the registry's.
    """
    spec = resolve_name(name)
    plan = _plan_init(spec, init, seed)          # raises before any model is built
    mean, std = default_norm(spec)
    if plan.source is None:
        model, described = seeded_build(spec, plan.seed), plan.recorded
    else:
        model, norm = plan.source.load(spec, plan.weights, plan.seed)
        if norm is not None:
            mean, std = norm
        described = plan.weights.what
    strip_aux(model, spec.arch)
    model = token_maps(model, spec.entry, spec.name).float().cpu().eval()   # transformers: maps on the patch grid
    return Backbone(model=model, name=spec.name, init=plan.recorded, mean=tuple(mean), std=tuple(std),
                    entry=spec.entry, source=spec.source, arch=spec.arch, weights=described)


# ------------------------------------------------------------------------------------ layers and d

def resolve_layers(name: str, layers_param) -> list[str]:
    """`auto` -> the registry's default layers; a list (or one name / comma-separated names) -> list of str."""
    if isinstance(layers_param, str) and layers_param.strip().lower() == "auto":
        entry = get_entry(name)
        if entry is None:
            resolve_name(name)  # unknown names get the did-you-mean error
            raise UserError(f"backbone {name!r} is not in the registry, so `layers: auto` has no default. "
                            f"Fix: set `layers` to a list of module names of the model (e.g. [layer1, layer2, layer3] "
                            f"for ResNets); a wrong name is answered with the list of valid ones.")
        return list(entry["layers"])
    if isinstance(layers_param, str):
        out = [s.strip() for s in layers_param.split(",") if s.strip()]
    elif isinstance(layers_param, (list, tuple)):
        if not all(isinstance(x, str) and x.strip() for x in layers_param):
            raise UserError(f"`layers` must be 'auto' or a list of module names (strings), got {layers_param!r}")
        out = [x.strip() for x in layers_param]
    else:
        raise UserError(f"`layers` must be 'auto' or a list of module names, got {layers_param!r}")
    if not out:
        raise UserError("`layers` is empty. Fix: use 'auto' or list at least one module name.")
    dup = sorted({x for x in out if out.count(x) > 1})
    if dup:
        raise UserError(f"`layers` lists {dup} more than once. Fix: list each module once.")
    return out


def registry_d(name: str) -> int | None:
    """The registry's PaDiM d for backbone `name` (meant for its default layers); None = no
    reduction (registry d null or 'all') or `name` not in the registry."""
    entry = get_entry(name)
    d = None if entry is None else entry["d"]
    return None if d is None or d == "all" else int(d)
