"""`python -m anomaly_backbones show`: the runs the report compares, as one compact terminal table.

    run            backbone              init      layers        padim               patchcore
                                                                 img   pix   pro     img   pix   pro
    HEAD*          tf_efficientnet_lite0 imagenet  blocks.1/2/4  .978  .991  .912    ...

One line per run (the same runs as the report: HEAD's committed run marked *, the base branch's, the
experiments, the workspace), then per method image ROC-AUC, pixel ROC-AUC and AUPRO. It fits --width
columns (default: the terminal's, 120 when not a terminal): text columns are shortened with "…", and
methods that do not fit go to a second block of the same rows. Runs are only comparable within one
dataset: with runs on several, one block per dataset under a `dataset: <name>` line; `--dataset NAME`
shows that one only.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
from pathlib import Path

from ..dvc_client import require_project
from ..errors import UserError
from .fmt import NOT_APPLICABLE, init_kind, num
from .runs import Run, gather

METRICS = (("image_auroc", "img"), ("pixel_auroc", "pix"), ("pixel_aupro", "pro"))
CELL = 5
MIN_WIDTH = {"run": 6, "backbone": 8, "init": 4, "layers": 5}
SHRINK_ORDER = ("layers", "init", "run", "backbone")


def compact_layers(layers: list[str]) -> str:
    """["blocks.1", "blocks.2", "blocks.4"] -> "blocks.1/2/4"; names without a shared stem stay a list."""
    parts = [re.fullmatch(r"(.*?)(\d+)", x) for x in layers]
    if len(layers) > 1 and all(parts) and len({p.group(1) for p in parts}) == 1:
        return parts[0].group(1) + "/".join(p.group(2) for p in parts)
    return ",".join(layers)


def value_cell(figures: dict, key: str) -> str:
    if key not in figures:
        return ""
    v = num(figures[key])
    if v is None:
        return NOT_APPLICABLE
    s = f"{v:.3f}"
    return s[1:] if s.startswith("0.") else s


def _cut(s: str, w: int) -> str:
    return s if len(s) <= w else s[:max(w - 1, 0)] + "…"


def show_lines(runs: list[Run], width: int = 120) -> list[str]:
    """The table's lines, none longer than `width` (given width >= 40)."""
    text = [{"run": r.label + ("*" if r.role == "baseline" else ""), "backbone": r.backbone,
             "init": init_kind(r.init), "layers": compact_layers(r.layers)} for r in runs]
    cols = list(MIN_WIDTH)
    natural = {c: max([len(c)] + [len(t[c]) for t in text]) for c in cols}
    methods = list(dict.fromkeys(m for r in runs for m in r.methods))
    group = len(METRICS) * (CELL + 1) + 1   # a method's three cells and the gap before it
    fixed_min = sum(min(natural[c], MIN_WIDTH[c]) + 1 for c in cols)
    per_block = max(1, (width - fixed_min) // group)
    blocks = [methods[i:i + per_block] for i in range(0, len(methods), per_block)] or [[]]
    lines: list[str] = []
    for block in blocks:
        w = dict(natural)
        room = width - len(block) * group - sum(w[c] + 1 for c in cols)
        for c in SHRINK_ORDER:   # shorten text columns until the line fits
            if room >= 0:
                break
            cut = min(-room, w[c] - min(natural[c], MIN_WIDTH[c]))
            w[c] -= cut
            room += cut
        left = lambda vals: " ".join(_cut(v, w[c]).ljust(w[c]) for c, v in zip(cols, vals))  # noqa: E731
        head1 = left(cols) + "".join(" " + _cut(m, group - 1).ljust(group - 1) for m in block)
        head2 = left([""] * len(cols)) + "".join(
            " " + " ".join(short.rjust(CELL) for _, short in METRICS) + " " for _ in block)
        out = [head1.rstrip(), head2.rstrip()]
        for r, t in zip(runs, text):
            cells = "".join(" " + " ".join(value_cell(r.metrics.get(m) or {}, k).rjust(CELL) for k, _ in METRICS)
                            + " " for m in block)
            out.append((left([t[c] for c in cols]) + cells).rstrip())
        lines += (out if not lines else [""] + out)
    return lines


def dataset_blocks(runs: list[Run], width: int, dataset: str | None = None) -> list[str]:
    """show_lines per dataset (a `dataset: <name>` line above each when there are several), or only
    `dataset`'s runs; UserError for a dataset no run is on."""
    found = list(dict.fromkeys(r.dataset for r in runs))
    if dataset is not None:
        if dataset not in found:
            raise UserError(f"--dataset {dataset}: no finished run on it (runs are on: {', '.join(found) or 'none'})")
        found = [dataset]
    if not found:
        return ["no finished runs (`dvc repro` or `dvc exp run` make one)."]
    lines: list[str] = []
    for ds in found:
        block = show_lines([r for r in runs if r.dataset == ds], width)
        lines += ([""] if lines else []) + ([f"dataset: {ds}"] if len(found) > 1 or dataset else []) + block
    return lines


def parser_show() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones show",
                                 description="The runs the report compares (HEAD's committed run, the base "
                                             "branch's, the experiments, the workspace) in one compact table: "
                                             "image/pixel ROC-AUC and AUPRO per method.")
    ap.add_argument("-A", "--all-commits", action="store_true",
                    help="experiments on every commit (default: those of HEAD and the base branch)")
    ap.add_argument("--base", default=None, help="base branch (default: origin/HEAD, else main, else master)")
    ap.add_argument("--width", type=int, default=None,
                    help="line width (default: the terminal's; 120 when the output is not a terminal)")
    ap.add_argument("--dataset", default=None, help="only the runs on this dataset (default: every dataset, "
                                                    "one block each)")
    ap.add_argument("--repo", default=".", help="project root (default: the current folder)")
    return ap


def main_show(argv: list[str] | None = None) -> None:
    a = parser_show().parse_args(argv or [])
    root = Path(a.repo)
    require_project(root)
    width = a.width or (shutil.get_terminal_size((120, 24)).columns if sys.stdout.isatty() else 120)
    g = gather(root, all_commits=a.all_commits, base=a.base)
    print("\n".join(dataset_blocks(g.runs, max(width, 40), a.dataset)))
    print(textwrap.fill(f"* = baseline (HEAD's committed run). img/pix = image/pixel ROC-AUC, pro = AUPRO; "
                        f"{NOT_APPLICABLE} = not applicable, empty = not recorded.", max(width, 40)))
    if g.skipped:
        text = f"{len(g.skipped)} not shown (the report lists why): " + ", ".join(n for n, _ in g.skipped)
        print(textwrap.fill(text, max(width, 40)))
