"""Anomaly detection methods: the registry (a list of names) and `get_method`.

Each name is a module, `methods/<name>.py` (or `methods/training/<name>.py` for a method that
trains the backbone), holding one `Method` subclass whose `name` is that name. Everything else
about a method is declared on its class, in its file (methods/base.py: the contract): its params
schema (`PARAMS`, its group in params.yaml), `level` (pixel | image), `reads` (features |
images), its memory estimates. Adding a method: one file, its name here, its group in params.yaml
(docs/architecture.md, "Adding a method").
"""
from __future__ import annotations

import importlib
import importlib.util

from ..errors import UserError

METHODS: list[str] = [
    "padim", "spade", "patchcore", "cflow",          # pixel level, on the feature cache (fit@<name>)
    "ocsvm", "svdd", "dn2",                          # image level, on pooled features (fit@<name>)
    "deep_svdd", "panda", "msc", "doc",              # image level, train the backbone (train@<name>)
]


def _module(name: str) -> str:
    """The module of a registered method: methods/<name>.py, else methods/training/<name>.py."""
    here = f"{__name__}.{name}"
    return here if importlib.util.find_spec(here) is not None else f"{__name__}.training.{name}"


def get_method(name: str):
    """The class registered as `name` (its module imported now). A module without exactly one
    Method subclass named `name` is a bug in the project (RuntimeError), never a silent default."""
    from .base import Method

    if name not in METHODS:
        raise UserError(f"unknown method {name!r} in `methods`; known: {', '.join(METHODS)}")
    module = importlib.import_module(_module(name))
    found = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Method)
             and c.__module__ == module.__name__ and c.__dict__.get("name") == name]
    if len(found) != 1:
        raise RuntimeError(f"{module.__name__} must define one Method subclass with name = {name!r} "
                           f"(found {len(found)})")
    return found[0]


def method_schemas() -> dict:
    """{name: params schema} of every registered method: each one's params.yaml group."""
    return {name: get_method(name).PARAMS for name in METHODS}
