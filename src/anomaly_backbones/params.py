"""params.yaml: read once, validated with messages that name the param and the fix."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import UserError

PARAMS_FILE = "params.yaml"


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    try:
        p = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: run stages from the project root.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    validate(p)
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


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise UserError(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate(p: dict) -> None:
    _expect(isinstance(p, dict), "params.yaml must be a mapping of params")
    _expect(_is_int(p.get("seed")), f"`seed` must be an integer, not {p.get('seed')!r}")
    _expect(isinstance(p.get("backbone"), str) and p["backbone"], "`backbone` must be a model name")
    _expect(isinstance(p.get("init"), str) and p["init"],
            "`init` must be imagenet, random, a named variant (e.g. IMAGENET1K_V2) or a checkpoint path")
    layers = p.get("layers")
    _expect(layers == "auto" or (isinstance(layers, list) and layers and all(isinstance(x, str) for x in layers)),
            f"`layers` must be auto or a non-empty list of layer names, e.g. -S 'layers=[layer1,layer2]', "
            f"not {layers!r}")
    d = p.get("data", {})
    _expect(isinstance(d, dict), "`data` must be a mapping")
    for k in ("resize", "crop"):
        _expect(_is_int(d.get(k)) and d[k] > 0, f"`data.{k}` must be a positive integer, not {d.get(k)!r}")
    _expect(d["crop"] <= d["resize"], f"`data.crop` ({d['crop']}) must be <= `data.resize` ({d['resize']})")
    methods = p.get("methods")
    _expect(isinstance(methods, list) and methods, f"`methods` must be a non-empty list, not {methods!r}")
    from .methods import METHODS

    for m in methods:
        _expect(m in METHODS, f"unknown method {m!r} in `methods`; known: {sorted(METHODS)}")
    pd = p.get("padim", {}).get("d", "auto")
    _expect(pd == "auto" or (_is_int(pd) and pd > 0), f"`padim.d` must be auto or a positive integer, not {pd!r}")
    ex = p.get("extract", {})
    _expect(ex.get("dtype", "float32") in ("float32", "float16"),
            f"`extract.dtype` must be float32 or float16, not {ex.get('dtype')!r}")
    _expect(_is_int(ex.get("batch_size", 32)) and ex.get("batch_size", 32) > 0,
            "`extract.batch_size` must be a positive integer")
    lat = p.get("latency", {})
    _expect(isinstance(lat, dict), "`latency` must be a mapping (runs, warmup)")
    _expect(_is_int(lat.get("runs", 10)) and lat.get("runs", 10) >= 0,
            f"`latency.runs` must be an integer >= 0 (0 skips the measurement), not {lat.get('runs')!r}")
    _expect(_is_int(lat.get("warmup", 2)) and lat.get("warmup", 2) >= 0,
            f"`latency.warmup` must be an integer >= 0, not {lat.get('warmup')!r}")
