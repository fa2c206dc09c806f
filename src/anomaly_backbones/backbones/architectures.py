"""Which architecture a backbone name means, and how to construct it.

`resolve_name` turns a `backbone` param into a Spec: a registry entry, or any model timm or
torchvision can build (optionally prefixed `timm:` / `torchvision:`), else a did-you-mean UserError.
`named_inits` lists the pretrained weights a Spec can take, in the registry's format. `build` /
`seeded_build` construct the architecture; `strip_aux` removes auxiliary heads.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UserError
from .registry import get_entry, names as registry_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision models whose ImageNet weights need specific constructor arguments; the same arguments
# are used for every init so that random / file / imagenet give the same architecture and input norm.
TV_KWARGS = {
    "googlenet": dict(transform_input=True, aux_logits=True, init_weights=True),
    "inception_v3": dict(transform_input=True, aux_logits=True, init_weights=True),
}
AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


@dataclass
class Spec:
    """A resolved backbone name: `name` as recorded, `source` (timm | torchvision | in-project) and
    `arch` (the constructor in it), the registry `entry` (None outside it), a timm `tag` from the name."""

    name: str
    source: str
    arch: str
    entry: dict | None
    tag: str | None = None


def spec_of(entry: dict) -> Spec:
    """The Spec of a registry entry."""
    return Spec(entry["name"], entry["source"], entry["model"], entry)


# ------------------------------------------------------------------------------------------- names

def _tv_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    import timm

    return list(timm.list_models())


def _suggest(name: str, limit: int = 6) -> list[str]:
    pool = list(dict.fromkeys(registry_names() + _tv_names() + _timm_names()))
    norm = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    by_norm: dict[str, list[str]] = {}
    for p in pool:
        by_norm.setdefault(norm(p), []).append(p)
    out = difflib.get_close_matches(name.lower(), pool, n=limit, cutoff=0.6)
    for m in difflib.get_close_matches(norm(name), list(by_norm), n=limit, cutoff=0.7):
        out += by_norm[m]
    reg = set(registry_names())
    out = list(dict.fromkeys(out))
    out.sort(key=lambda s: (s not in reg,))  # registry names first, otherwise similarity order
    return out[:limit]


def _unknown(name: str) -> UserError:
    sugg = _suggest(name)
    hint = f" Did you mean: {', '.join(sugg)}?" if sugg else ""
    return UserError(f"unknown backbone {name!r} in `backbone`: not in the registry and neither timm nor "
                     f"torchvision can build it.{hint} (`python -m anomaly_backbones backbones` lists the registry; "
                     f"prefix timm:/torchvision: to pick a library.)")


def resolve_name(name) -> Spec:
    """The Spec of a `backbone` param; an unknown name is a UserError with close matches."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"`backbone` must be a model name (string), got {name!r}")
    name = name.strip()
    entry = get_entry(name)
    if entry is not None:
        return spec_of(entry)
    forced = None
    m = re.match(r"^(timm|torchvision|tv)[:/](.+)$", name)
    if m:
        forced, name = ("torchvision" if m.group(1) == "tv" else m.group(1)), m.group(2)
    if forced in (None, "torchvision") and name in _tv_names():
        return Spec(name if forced is None else f"torchvision:{name}", "torchvision", name, None)
    if forced in (None, "timm"):
        import timm

        base, _, tag = name.partition(".")
        if base in _timm_names() or timm.is_model(base):
            return Spec(name if forced is None else f"timm:{name}", "timm", base, None, tag or None)
    raise _unknown(name)


# ------------------------------------------------------------------------------------------- inits

def named_inits(spec: Spec) -> dict[str, str]:
    """{init key: how} in the registry's format (random first, then the default pretrained weights,
    then the others). Registry entries carry theirs; library models get the library's list."""
    if spec.entry is not None:
        return dict(spec.entry["inits"])
    inits = {"random": "seeded"}
    if spec.source == "torchvision":
        from torchvision.models import get_model_weights

        try:
            enum = get_model_weights(spec.arch)
        except Exception:  # noqa: BLE001 - model without weights
            return inits
        default = enum.DEFAULT.name if hasattr(enum, "DEFAULT") else next(iter(enum)).name
        for n in [default] + [w.name for w in enum if w.name != default]:
            inits[n] = f"torchvision:{enum.__name__}.{n}"
    elif spec.source == "timm":
        import timm

        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(spec.arch + ".*") if t.split(".", 1)[0] == spec.arch]
        cfg = timm.models.get_pretrained_cfg(spec.arch)
        default = spec.tag or (cfg.tag if cfg is not None and cfg.tag in tags else (tags[0] if tags else None))
        if spec.tag and spec.tag not in tags:
            raise UserError(f"timm has no pretrained tag {spec.tag!r} for {spec.arch}; known tags: {tags or 'none'}. "
                            f"Fix: use one of them (e.g. `backbone: {spec.arch}.{tags[0] if tags else '<tag>'}`).")
        if default:
            for t in [default] + [t for t in tags if t != default]:
                inits[t] = f"timm:{spec.arch}.{t}"
    return inits


def default_norm(spec: Spec) -> tuple[tuple, tuple]:
    """(mean, std) of the input for any init not bringing its own: the registry's, else the
    library's default weights', else ImageNet's."""
    if spec.entry is not None:
        return tuple(spec.entry["mean"]), tuple(spec.entry["std"])
    if spec.source == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(f"{spec.arch}.{spec.tag}" if spec.tag else spec.arch)
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    if spec.source == "torchvision":
        try:
            from torchvision.models import get_model_weights

            t = get_model_weights(spec.arch).DEFAULT.transforms()
            return tuple(float(x) for x in t.mean), tuple(float(x) for x in t.std)
        except Exception:  # noqa: BLE001 - no weights for this model
            pass
    return IMAGENET_MEAN, IMAGENET_STD


# ------------------------------------------------------------------------------------------- build

def build(spec: Spec, tv_weights=None, init_key: str | None = None) -> nn.Module:
    """Construct the architecture: random init (the current RNG state), or a torchvision weights
    enum member loaded by torchvision. Under `with torch.device("meta")` it allocates nothing.
    `init_key`: a named init whose weights need other timm constructor arguments (init_kwargs)."""
    if spec.source == "torchvision":
        from torchvision.models import get_model

        kw = dict(TV_KWARGS.get(spec.arch, {}))
        if tv_weights is not None:
            # torchvision sets these itself for its weights (refusing conflicting values, warning
            # about untrained aux heads); aux heads are stripped afterwards either way
            kw.pop("init_weights", None)
            kw.pop("aux_logits", None)
        return get_model(spec.arch, weights=tv_weights, **kw)
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, **timm_kwargs(spec, init_key))
    if spec.source == "in-project":
        from .ibn import MODELS

        return MODELS[spec.arch]()
    raise RuntimeError(f"unknown source {spec.source!r}")


def timm_kwargs(spec: Spec, init_key: str | None = None) -> dict:
    """Constructor arguments of a timm registry entry (`kwargs`, e.g. dynamic_img_size for ViTs),
    the same for every init so that random, file and pretrained give one architecture; plus, for
    `init_key`, the entry's `init_kwargs` of that init (weights trained with another head count)."""
    entry = spec.entry or {}
    return {**(entry.get("kwargs") or {}), **((entry.get("init_kwargs") or {}).get(init_key) or {})}


def seeded_build(spec: Spec, seed: int, tv_weights=None, init_key: str | None = None) -> nn.Module:
    """build() with torch.manual_seed(seed), leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(spec, tv_weights, init_key)


def strip_aux(model: nn.Module, arch: str) -> None:
    """Drop GoogLeNet / Inception v3 auxiliary heads (unused in eval; they only add parameters)."""
    for attr in AUX_HEADS.get(arch, ()):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if arch in AUX_HEADS:
        model.aux_logits = False


def strip_aux_absent_from(model: nn.Module, arch: str, sd: dict) -> None:
    """Drop the aux heads before a strict load of a state_dict that has none (saved from a loaded backbone)."""
    prefixes = tuple(a + "." for a in AUX_HEADS.get(arch, ()))
    if prefixes and not any(k.startswith(prefixes) for k in sd):
        strip_aux(model, arch)
