"""`python -m anomaly_backbones backbones [--family F] [--json]`: list the registry.

One row per entry: layers, dim, d, parameters (trunk up to the deepest default layer, and the full
model), whether the default (imagenet) weights are on this machine, and how each named init was
pretrained (the registry's `pretraining`; the table lists those not supervised). Never touches the network.
Counts and weight locations come from registry_facts.yaml, so the listing imports no torch; where
that file was derived with other library versions they are computed (models built on the meta
device), which takes seconds per entry.
"""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from .registry import default_pretrained_key, families, pretraining, registry, stored_counts
from .weights import weights_offline


def _counts(entry: dict) -> dict[str, int]:
    stored = stored_counts(entry["name"], entry["layers"])
    if stored is not None:
        return stored
    from .counts import param_counts   # imports torch: only without stored counts

    return param_counts(entry["name"])


def parser_backbones() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones backbones",
                                 description="List the backbone registry: layers, dim, d, parameters (trunk up to "
                                             "the deepest default layer, full model), offline weights.")
    ap.add_argument("--family", help="only this family (e.g. resnet, efficientnet_lite)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return ap


def main_backbones(argv: list[str] | None = None) -> None:
    a = parser_backbones().parse_args(argv or [])
    entries = registry()
    if a.family:
        fams = families()
        if a.family not in fams:
            raise UserError(f"unknown --family {a.family!r}; valid families: {', '.join(fams)}")
        entries = [e for e in entries if e["family"] == a.family]
    rows = []
    for e in entries:
        counts = _counts(e)
        rows.append({
            "name": e["name"], "family": e["family"], "source": e["source"], "model": e["model"],
            "layers": e["layers"], "dim": e["dim"], "study_dim": e["study_dim"],
            "d": e["d"] if e["d"] not in (None, "all") else None,
            "params": counts["full"], "params_trunk": counts["trunk"], "imagenet": default_pretrained_key(e),
            "inits": {k: pretraining(e["name"], k) for k in e["inits"] if k != "random"},
            "weights_offline": weights_offline(e), "note": e["note"],
        })
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    head = ("name", "family", "dim", "d", "trunk", "full", "offline", "imagenet", "layers", "not supervised")
    table = [head] + [(r["name"], r["family"], str(r["dim"]), str(r["d"] if r["d"] is not None else "all"),
                       f"{r['params_trunk'] / 1e6:.1f}M", f"{r['params'] / 1e6:.1f}M",
                       "yes" if r["weights_offline"] else "no", r["imagenet"], ",".join(r["layers"]),
                       ",".join(f"{k}={v}" for k, v in r["inits"].items() if v != "supervised")) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    n_off = sum(r["weights_offline"] for r in rows)
    print(f"\n{len(rows)} backbones; default weights offline for {n_off}. trunk = parameters up to the deepest "
          f"of `layers`, full = the whole model. d 'all' = no reduction. Other timm/torchvision names also work "
          f"with explicit `layers`. d = PaDiM's d under `padim.d=auto` (the study's), used as stated for "
          f"the registry's `layers` (never above dim there; other layers: capped at their channels); PaDiM's "
          f"fit-and-score pass holds one chunk of d x d inverses, so d is never lowered for memory.")
