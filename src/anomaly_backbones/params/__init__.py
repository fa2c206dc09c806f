"""params.yaml: read once and validated in full before any stage works; resolved to concrete values.

    p = load_params()            # every group checked against the schema, defaults filled in
    r = resolve(p, shapes)       # every `auto` made concrete (layers, padim.d, patchcore.layers)

Messages name the param and what it must be (anomaly_backbones.params.schema).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from .groups import GROUPS, TOP
from .resolve import resolve
from .schema import Param, check_group, check_value, unknown_key

PARAMS_FILE = "params.yaml"

__all__ = ["PARAMS_FILE", "Param", "load_params", "resolve", "schema_groups", "set_params", "validate"]


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """The params file, validated, with absent params filled from the schema's defaults."""
    path = Path(path)
    try:
        p = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run stages from the project root.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    return validate(p)


def set_params(path: str | Path, **changes) -> None:
    """Write dotted-key changes into a params file (what `dvc exp run -S` does), for scripts and tests."""
    path = Path(path)
    p = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node = p
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value
    path.write_text(yaml.safe_dump(p, sort_keys=False))


def schema_groups() -> dict[str, dict[str, Param]]:
    """Every group's schema: the stages' groups and one per registered method."""
    from ..methods import METHODS

    return {**GROUPS, **{name: info.params for name, info in METHODS.items()}}


def validate(p) -> dict:
    """Every param checked (type, range, allowed values, unknown keys with "did you mean");
    returns a new mapping with defaults filled in and values converted."""
    if not isinstance(p, dict):
        raise UserError(f"{PARAMS_FILE} must be a mapping of params, not {type(p).__name__}")
    groups = schema_groups()
    for k in p:
        if k not in TOP and k not in groups:
            raise unknown_key("", k, [*TOP, *groups])
    out = {k: check_value(k, spec, p.get(k, spec.default)) for k, spec in TOP.items()}
    for name, schema in groups.items():
        out[name] = check_group(name, schema, p.get(name))
    from ..methods import METHODS

    for key, reads in (("methods", "features"), ("train_methods", "images")):
        other = "train_methods" if key == "methods" else "methods"
        for m in out[key]:
            if m not in METHODS:
                raise UserError(f"unknown method {m!r} in `{key}`; known: {', '.join(METHODS)}")
            if METHODS[m].reads != reads:
                raise UserError(f"{m} {'trains the backbone' if reads == 'features' else 'reads the feature cache'}: "
                                f"list it in `{other}`, not `{key}`")
    d = out["data"]
    from ..data.datasets import category_names

    category_names(d["categories"], d["dataset"])   # names, not paths; BTAD's numbers
    if d["crop"] > d["resize"]:
        raise UserError(f"`data.crop` ({d['crop']}) must be <= `data.resize` ({d['resize']})")
    return out
