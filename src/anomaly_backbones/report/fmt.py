"""Cells, Markdown tables and CSV files: how every table of the report writes a value.

A metric cell is "" when the run did not record the key (runs older than the metric), "—" when the
run recorded it as null (not applicable: an image-level method has no pixel metrics), else the value.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

RANDOM_MARK = "†"
LOAD_MARK = "‡"
NOT_APPLICABLE = "—"
# the metrics of metrics/metrics.json, per method: (key, heading)
IMAGE_METRICS = (("image_auroc", "image ROC-AUC"), ("image_ap", "image AP"), ("image_f1max", "image F1-max"))
PIXEL_METRICS = (("pixel_auroc", "pixel ROC-AUC"), ("pixel_ap", "pixel AP"), ("pixel_f1max", "pixel F1-max"),
                 ("pixel_aupro", "AUPRO"))
INTERVAL_KEYS = ("image_auroc_lo", "image_auroc_hi")
METRIC_KEYS = tuple(k for k, _ in IMAGE_METRICS) + INTERVAL_KEYS + tuple(k for k, _ in PIXEL_METRICS)
COST_KEYS = ("ms_per_image", "fit_s", "peak_mb")


def num(v):
    """A float, or None for missing, null and NaN."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def f(v, nd=3) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def is_image_level(figures: dict) -> bool:
    """A method block whose pixel metrics are recorded as null: it has no anomaly map."""
    return "pixel_auroc" in figures and figures["pixel_auroc"] is None


def metric_cell(figures: dict, key: str, nd: int = 3) -> str:
    """"" = not recorded, "—" = not applicable (null), else the value."""
    if key not in figures:
        return ""
    v = num(figures[key])
    return NOT_APPLICABLE if v is None else f(v, nd)


def interval(lo, hi, nd: int = 3) -> str:
    lo, hi = num(lo), num(hi)
    return f"{lo:.{nd}f}-{hi:.{nd}f}" if lo is not None and hi is not None else ""


def init_kind(init: str) -> str:
    return str(init).split(":", 1)[0]


def init_label(init: str, backbone: str | None = None) -> str:
    """imagenet:in1k_pypi -> imagenet (in1k_pypi); random:seed=1024 -> random; file:/a/b.pth -> file b.pth.
    With the `backbone` of a registry entry, named weights say how they were pretrained:
    imagenet:dino -> self-supervised (dino), imagenet:IMAGENET1K_V1 -> supervised (IMAGENET1K_V1)
    (the registry's `pretraining`)."""
    kind, _, rest = str(init).partition(":")
    if kind == "random":
        return "random"
    if kind == "file":
        return f"file {Path(rest).name}"
    if backbone is not None and kind == "imagenet" and rest:
        from ..backbones.registry import pretraining

        kind = pretraining(backbone, rest) or kind
    return f"{kind} ({rest})" if rest else kind


def params_str(n) -> str:
    if not n:
        return ""
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}K"


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    align = align or ["l"] * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Columns = every key of every row (order of first appearance; keys starting with _ left out);
    None -> empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"
