"""Parameter counts of a backbone, and the registry facts stored from them.

    param_counts(name, layers=None) -> {"trunk": int, "full": int}

"full": every parameter of the model as load_backbone returns it (auxiliary heads removed).
"trunk": the parameters that the forward pass reads up to the deepest of `layers`, where the extract
stage stops (FeatureExtractor's early stop; the ONNX export's fx cut keeps the same ones): what a
deployed feature extractor has to hold. A model's size is a column of the study, and a classifier
head it never runs (VGG's 120M-parameter fully connected layers) must not count.

"Reads" is observed, not assumed from module names: a forward pass on the meta device (no memory,
no arithmetic) under a torch function mode that records every nn.Parameter an op receives, so a
parameter used by a parent module directly (ConvNeXt's layer scale) counts and a sub-module that
never runs does not. Models that cannot be built on the meta device are built on the CPU instead.

Counting a registry entry at its default layers needs no model: the counts are stored in
registry_facts.yaml, written by `python -m anomaly_backbones.backbones.counts` together with the
locations of each entry's default weights (weights.WeightSource.locations); a test recomputes both.
"""
from __future__ import annotations

import sys
import warnings
from importlib import resources

import torch
import yaml
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import UserError
from .architectures import Spec, build, resolve_name, seeded_build, spec_of, strip_aux
from .extractor import FeatureExtractor
from .loader import resolve_layers
from .registry import FACTS_FILE, library_versions, registry, stored_counts
from .tokens import token_maps
from .weights import default_source

TRACE_SIDE = 96   # input side of the tracing pass; Inception v3 needs >= 75 px. Which parameters run
                  # does not depend on it.


def param_counts(name: str, layers: list[str] | None = None) -> dict[str, int]:
    """{"trunk": parameters read up to the deepest of `layers`, "full": all parameters} of backbone
    `name` (registry or timm/torchvision name); layers None = the registry's default layers. A bad
    name or layer is a UserError, as in load_backbone and FeatureExtractor."""
    spec = resolve_name(name)
    layers = resolve_layers(name, "auto" if layers is None else layers)
    stored = stored_counts(spec.entry["name"], layers) if spec.entry is not None else None
    return stored if stored is not None else count_built(spec, layers)


def count_built(spec: Spec, layers: list[str]) -> dict[str, int]:
    """param_counts computed from a model: built on the meta device, or on the CPU (random init)
    where building or running it there fails (torchvision's RegNet computes its widths with tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = build(spec)
            strip_aux(model, spec.arch)
            return count_model(token_maps(model, spec.entry, spec.name), layers)
        except UserError:
            raise
        except Exception:  # noqa: BLE001 - meta tensors are unsupported somewhere in this model
            model = seeded_build(spec, 0)
            strip_aux(model, spec.arch)
            return count_model(token_maps(model, spec.entry, spec.name), layers)


def count_model(model: nn.Module, layers: list[str]) -> dict[str, int]:
    """{"trunk", "full"} of a built model (any device, meta included)."""
    return {"trunk": sum(p.numel() for p in trunk_parameters(model, layers)),
            "full": sum(p.numel() for p in model.parameters())}


class _ParameterReads(TorchFunctionMode):
    """Records every nn.Parameter passed to a torch function or tensor method while active."""

    def __init__(self):
        super().__init__()
        self.read: dict[int, nn.Parameter] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, nn.Parameter):
                self.read[id(t)] = t
        return func(*args, **kwargs)


def trunk_parameters(model: nn.Module, layers: list[str]) -> list[nn.Parameter]:
    """The distinct parameters read by one forward pass of a (1, 3, TRACE_SIDE, TRACE_SIDE) input,
    on the model's device, stopped where FeatureExtractor stops (all of `layers` produced)."""
    first = next(model.parameters(), None)
    step = getattr(model, "stride", (1, 1))[0]     # transformers (tokens.py): a whole number of patches
    side = -(-TRACE_SIDE // step) * step
    x = torch.zeros(1, 3, side, side, device=first.device if first is not None else "cpu")
    extractor = FeatureExtractor(model, layers)
    with _ParameterReads() as reads:
        extractor(x)
    return list(reads.read.values())


# ------------------------------------------------------------------------------- the stored facts

def derive_facts() -> dict:
    """registry_facts.yaml's content, computed: for every registry entry its counts at the default
    layers and the locations of its default weights, with the library versions they hold for."""
    out = {}
    for e in registry():
        counts = count_built(spec_of(e), e["layers"])
        source = default_source(e)
        out[e["name"]] = {"params_full": counts["full"], "params_trunk": counts["trunk"],
                          "trunk_layers": list(e["layers"]), "weights_key": source.key,
                          "weights_at": [loc.as_list() for loc in source.locations()]}
    return {"versions": library_versions(), "backbones": out}


HEADER = """\
# Derived from registry.yaml and the installed torch / torchvision / timm (`versions`); do not edit.
# Rewrite with `python -m anomaly_backbones.backbones.counts` after changing registry.yaml or a pin
# (tests/test_backbones.py recomputes every entry). Read by `python -m anomaly_backbones backbones`,
# param_counts and weights_offline; ignored (computed live) when `versions` differ from the installed ones.
#   params_full   parameters of the model as load_backbone returns it (aux heads removed)
#   params_trunk  parameters read up to the deepest of trunk_layers (counts.trunk_parameters)
#   weights_at    where the default (`imagenet`) weights weights_key may be cached: [cache, ref, files...]
"""


def write_facts() -> str:
    """Recompute the facts and write them next to registry.yaml (write, then rename). Returns the path."""
    from ..files import replacing

    path = str(resources.files("anomaly_backbones.backbones").joinpath(FACTS_FILE))
    data = derive_facts()
    flow = lambda obj: yaml.safe_dump(obj, sort_keys=False, default_flow_style=True, width=10**6).strip()  # noqa: E731
    lines = [f"versions: {flow(data['versions'])}", "backbones:"]
    lines += [f"  {name}: {flow(rec)}" for name, rec in data["backbones"].items()]   # one line per entry
    with replacing(path) as f:
        f.write(HEADER + "\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    print(f"wrote {write_facts()}", file=sys.stderr)
