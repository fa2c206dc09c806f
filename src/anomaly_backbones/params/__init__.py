"""params.yaml: the file read, and checked against a full schema (the stages' groups here, the
methods' from their classes). The pipeline layer joins the two and resolves `auto`
(anomaly_backbones.pipeline.config: load_params, validate, resolve), so this package imports no
method, backbone or dataset module.

    p = read_params()                  # the YAML as written (a missing / broken file: UserError)
    p = check_params(p, groups)        # every group checked against its schema, defaults filled in

Messages name the param and what it must be (anomaly_backbones.params.schema).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from ..errors import UserError
from .groups import GROUPS, TOP
from .schema import Param, check_group, check_value, unknown_key

PARAMS_FILE = "params.yaml"

__all__ = ["PARAMS_FILE", "GROUPS", "TOP", "Param", "check_params", "read_params", "set_params"]


def read_params(path: str | Path = PARAMS_FILE):
    """The params file as written (anomaly_backbones.pipeline.config.load_params validates it)."""
    path = Path(path)
    try:
        p = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run stages from the project root.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    return p


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


def check_params(p, groups: dict[str, dict[str, Param]]) -> dict:
    """Every param checked against TOP and `groups` (type, range, allowed values, unknown keys
    with "did you mean"); returns a new mapping with defaults filled in and values converted."""
    if not isinstance(p, dict):
        raise UserError(f"{PARAMS_FILE} must be a mapping of params, not {type(p).__name__}")
    for k in p:
        if k not in TOP and k not in groups:
            raise unknown_key("", k, [*TOP, *groups])
    out = {k: check_value(k, spec, p.get(k, spec.default)) for k, spec in TOP.items()}
    for name, schema in groups.items():
        out[name] = check_group(name, schema, p.get(name))
    d = out["data"]
    if d["crop"] > d["resize"]:
        raise UserError(f"`data.crop` ({d['crop']}) must be <= `data.resize` ({d['resize']})")
    t = out["threshold"]
    if t["source"] == "validation" and t["holdout"] > 0:
        raise UserError(f"`threshold.source` = validation calibrates on the validation set and fits on all of "
                        f"train/good: set `threshold.holdout` to 0 (it is {t['holdout']:g}), e.g. -S threshold.holdout=0")
    return out
