"""What a sweep runs: params overrides (`-S key=value`), the backbones chosen, and the plan
against the experiments DVC already has (skip a finished or queued twin). Shared by the local
sweep (sweep.py) and the cluster engines (cluster/), which sit above it.
"""
from __future__ import annotations

import copy

import yaml

from .errors import UserError
from .dvc_client import PARAMS_FILE, Entry, canonical

AUTO_KEYS = ("layers", "padim.d")    # set to auto for a sweep unless given with -S


# ------------------------------------------------------------------------------------ overrides

def parse_override(text: str) -> tuple[str, str, object]:
    """`key=value` (DVC/Hydra -S syntax) -> (op, key, value); op is "set" or "del" (`~key`).
    The value is read as YAML (`[a,b]` a list, `80` an int); a `params.yaml:` prefix is dropped."""
    s = text.strip()
    if s.startswith("~"):
        key, value, op = s[1:].split("=", 1)[0], None, "del"
    else:
        if "=" not in s:
            raise UserError(f"-S {text!r}: expected key=value, e.g. -S padim.d=100 or -S 'layers=[layer1,layer2]'")
        key, raw = s.split("=", 1)
        key = key.lstrip("+")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        op = "set"
    if ":" in key:
        file, key = key.split(":", 1)
        if file and file != PARAMS_FILE:
            raise UserError(f"-S {text!r}: only {PARAMS_FILE} params can be swept")
    if not key:
        raise UserError(f"-S {text!r}: empty key")
    return op, key, value


def apply_overrides(params: dict, overrides: list[str]) -> dict:
    """A copy of params with the -S overrides applied (dotted keys create nested mappings)."""
    p = copy.deepcopy(params)
    for o in overrides:
        op, key, value = parse_override(o)
        node = p
        *parents, last = key.split(".")
        for k in parents:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        if op == "del":
            node.pop(last, None)
        else:
            node[last] = value
    return p


def _get(params: dict, dotted: str):
    node = params
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


# ------------------------------------------------------------------------------------ selection

def select_backbones(families: list[str] | None = None, backbones: list[str] | None = None,
                     all_: bool = False) -> list[str]:
    """Registry names in registry order; unknown family or name -> UserError listing the valid ones."""
    from .backbones import families as all_families, get_entry, registry

    entries = registry()
    names = [e["name"] for e in entries]
    if not (families or backbones or all_):
        raise UserError("say which backbones: --family F (repeatable), --backbones a,b,c or --all")
    chosen: list[str] = []
    if all_:
        chosen += names
    for f in families or []:
        fams = all_families()
        if f not in fams:
            raise UserError(f"unknown --family {f!r}; valid families: {', '.join(fams)}")
        chosen += [e["name"] for e in entries if e["family"] == f]
    for b in backbones or []:
        e = get_entry(b)
        if e is None:
            raise UserError(f"unknown backbone {b!r} (not in the registry); valid names: {', '.join(names)}")
        chosen.append(e["name"])
    pos = {n: i for i, n in enumerate(names)}
    return sorted(dict.fromkeys(chosen), key=pos.__getitem__)


# ------------------------------------------------------------------------------------ experiments

def experiment_states(entries: list[Entry]) -> list[dict]:
    """Every experiment of `dvc exp show` (dvc_client entries): {name, rev, state, params}; state is
    success, queued, running or failed (finished experiments without an executor count as success)."""
    return [{"name": e.name, "rev": e.rev, "state": e.state, "params": e.params}
            for e in entries if e.kind == "experiment"]


def plan_sweep(base_params: dict, backbones: list[str], init: str, overrides: list[str],
               experiments: list[dict]) -> list[dict]:
    """[{backbone, set: [-S values], params, skip: reason or None}] in the given backbone order."""
    unread = [e["name"] for e in experiments if e["state"] == "success" and not e["params"]]
    if unread:   # never run a finished experiment twice because DVC could not say what it was
        raise UserError(f"`dvc exp show` listed {len(unread)} finished experiment(s) without their params "
                        f"({', '.join(unread[:3])}{' ...' if len(unread) > 3 else ''}): DVC was busy (a queue "
                        f"worker starting or stopping?). Run the sweep again when `dvc queue status` shows no "
                        f"worker; if it persists, `dvc exp remove` those experiments.")
    given = {parse_override(o)[1] for o in overrides}
    extra = [f"{k}=auto" for k in AUTO_KEYS if k not in given and _get(base_params, k) not in (None, "auto")]
    by_params: dict[str, dict] = {}
    for e in experiments:
        if e["state"] in ("success", "queued", "running") and e["params"]:
            key = canonical(e["params"])
            if key not in by_params or e["state"] == "success":
                by_params[key] = e
    out = []
    for bb in backbones:
        sets = [f"backbone={bb}", f"init={init}"] + extra + list(overrides)
        params = apply_overrides(base_params, sets)
        hit = by_params.get(canonical(params))
        skip = None
        if hit is not None:
            skip = (f"finished as experiment {hit['name']}" if hit["state"] == "success"
                    else f"already {hit['state']} as experiment {hit['name']}")
        out.append({"backbone": bb, "set": sets, "params": params, "skip": skip})
    return out
