"""params.yaml for the stages: read, validated in full before any stage works, resolved to
concrete values. Joins the stages' groups (anomaly_backbones.params) with every method's group
(declared on its class) and the dataset registry's checks; sits above both, so neither imports
the other.

    p = load_params()            # every group checked against the schema, defaults filled in
    r = resolve(p, shapes)       # every `auto` made concrete (layers, padim.d, patchcore.layers)

`shapes` is {layer: (C, H, W)} of the feature cache (its meta.json). Each method's group is
resolved by its class (Method.resolve_params); a method reads only concrete values.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path

from ..backbones import resolve_layers
from ..data.datasets import DATASETS, category_names
from ..data.synthetic import CATEGORIES
from ..errors import UserError
from ..methods import METHODS, get_method, method_schemas
from ..params import GROUPS, PARAMS_FILE, Param, check_params, read_params


def _synthetic_categories(v) -> str | None:
    bad = [c for c in v if c not in CATEGORIES]
    return (f"has unknown categories {bad} (known: {', '.join(CATEGORIES)})" if bad
            else GROUPS["synthetic"]["categories"].check(v))


def _dataset(v) -> str | None:
    if v in DATASETS:
        return None
    near = difflib.get_close_matches(str(v), DATASETS, n=1)
    return f"must be one of {', '.join(DATASETS)}{f' (did you mean {near[0]!r}?)' if near else ''}"


def schema_groups() -> dict[str, dict[str, Param]]:
    """Every group's schema: the stages' groups (with the dataset registry's checks) and one per
    registered method."""
    groups = copy.copy(GROUPS)
    groups["synthetic"] = {**GROUPS["synthetic"], "categories": dataclasses.replace(
        GROUPS["synthetic"]["categories"], check=_synthetic_categories)}
    groups["data"] = {**GROUPS["data"], "dataset": dataclasses.replace(GROUPS["data"]["dataset"], check=_dataset),
                      "real_iad_setting": dataclasses.replace(GROUPS["data"]["real_iad_setting"],
                                                              choices=DATASETS["real_iad"].settings)}
    return {**groups, **method_schemas()}


def validate(p) -> dict:
    """Every param checked (type, range, allowed values, unknown keys with "did you mean"), each
    listed method in the list its stage reads; returns a new mapping with defaults filled in and
    values converted."""
    out = check_params(p, schema_groups())
    for key, reads in (("methods", "features"), ("train_methods", "images")):
        other = "train_methods" if key == "methods" else "methods"
        for m in out[key]:
            if m not in METHODS:
                raise UserError(f"unknown method {m!r} in `{key}`; known: {', '.join(METHODS)}")
            if get_method(m).reads != reads:
                raise UserError(f"{m} {'trains the backbone' if reads == 'features' else 'reads the feature cache'}: "
                                f"list it in `{other}`, not `{key}`")
    category_names(out["data"]["categories"], out["data"]["dataset"])   # names, not paths; BTAD's numbers
    d = out["data"]
    if d["dataset"] != "real_iad" and d["real_iad_setting"] != GROUPS["data"]["real_iad_setting"].default:
        raise UserError(f"`data.real_iad_setting` ({d['real_iad_setting']}) applies to data.dataset=real_iad only "
                        f"(not {d['dataset']}): leave it at multi_view")
    return out


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """The params file, validated, with absent params filled from the schema's defaults."""
    return validate(read_params(path))


def resolve(p: dict, shapes: dict | None = None) -> dict:
    """Validated params -> a deep copy with `layers`, every method group and `cache_layers`
    concrete (`cache_layers`: what extract caches: `layers`, then what each method adds)."""
    r = copy.deepcopy(p)
    r["layers"] = resolve_layers(p["backbone"], p["layers"])
    shapes = None if shapes is None else {k: tuple(v) for k, v in shapes.items()}
    cache = list(r["layers"])
    for name in METHODS:
        cls = get_method(name)
        r[name] = cls.resolve_params(r[name], backbone=p["backbone"], layers=r["layers"], shapes=shapes)
        cache += [layer for layer in cls.cached_layers(r[name], r["layers"]) if layer not in cache]
    r["cache_layers"] = cache
    return r
