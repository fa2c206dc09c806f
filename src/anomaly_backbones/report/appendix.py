"""The per-category appendix and the deployment-latency table.

per_category_section(root, runs, order) -> (markdown, csv rows, runs covered, runs missing): every metric
    of metrics/per_category.csv per category, read at each run's revision (the workspace file, or
    `dvc.api.read` at the commit: the local DVC cache or the default remote).
latency_section(out, runs, order) -> the index's lines; writes latency.csv (metrics/latency.json per run).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .. import dvc_client as dvc
from ..dvc_client import LATENCY_FILE, PER_CATEGORY_FILE
from .fmt import (IMAGE_METRICS, LOAD_MARK, METRIC_KEYS, NOT_APPLICABLE, PIXEL_METRICS, RANDOM_MARK, f, init_kind,
                  init_label, md_table, num, write_csv)
from .runs import LOAD_FRACTION, Run, under_load


def _read_per_category(root: Path, run: Run) -> list[dict] | None:
    text = dvc.read_at(root, PER_CATEGORY_FILE, run.rev)
    return list(csv.DictReader(io.StringIO(text))) if text else None


def _cell(d: dict, key: str):
    """per_category.csv: an empty cell = not applicable; a missing column = not recorded."""
    if key not in d:
        return None, ""
    v = num(d[key])
    return v, (NOT_APPLICABLE if v is None else f(v))


def per_category_section(root: Path, runs: list[Run], order: dict[str, int] | None = None
                         ) -> tuple[str, list[dict], list[str], list[str]]:
    """Markdown, long CSV rows, runs covered, runs missing. order: backbone -> registry position."""
    order = order or {}
    rows, covered, missing = [], [], []
    for r in runs:
        data = _read_per_category(root, r)
        if data is None:
            missing.append(r.label)
            continue
        covered.append(r.label)
        for d in data:
            init = d.get("init") or r.init
            rows.append({"source": r.label, "rev": r.rev, "backbone": d.get("backbone") or r.backbone,
                         "init": init_label(init, d.get("backbone") or r.backbone),
                         "random_init": init_kind(init) == "random",
                         "variant": r.variant, "dataset": r.dataset, "method": d.get("method", ""),
                         "category": d.get("category", ""),
                         **{k: num(d.get(k)) for k in METRIC_KEYS if k in d},
                         **{k: num(d.get(k)) for k in ("fit_s", "predict_ms_per_image", "backbone_ms_per_image")},
                         "_raw": d})
    parts = ["# Appendix: per-category metrics", "",
             "Covers every run whose `metrics/per_category.csv` (a DVC-cached output of the `aggregate` stage) "
             "can be read at the run's revision: the workspace file, or `dvc.api.read(..., rev=<commit>)` from "
             "the local DVC cache or the default DVC remote. `dvc exp show` itself carries only the means. "
             f"{NOT_APPLICABLE} = not applicable (image-level method); an empty cell = not recorded by that run.", ""]
    if missing:
        parts += [f"Not available for: {', '.join(f'`{m}`' for m in missing)} (their cached outputs are in "
                  f"neither the local cache nor the default remote: `dvc exp pull <remote> <exp>` or `dvc pull` "
                  f"fetches them).", ""]
    for ds in sorted({x["dataset"] for x in rows}):
        for m in sorted({x["method"] for x in rows if x["dataset"] == ds}):
            sel = [x for x in rows if x["dataset"] == ds and x["method"] == m]
            cats = sorted({x["category"] for x in sel})
            keys = dict.fromkeys((x["backbone"], x["init"], x["random_init"], x["variant"], x["source"]) for x in sel)
            runs_order = sorted(keys, key=lambda k: (order.get(k[0], 10**6), k[0], k[2], k[1], k[3]))
            for metric, title in IMAGE_METRICS + PIXEL_METRICS:
                if not any(metric in x["_raw"] for x in sel):
                    continue
                header = ["backbone", "init"] + (["variant"] if any(k[3] for k in runs_order) else []) + cats + \
                         ["mean", "run"]
                table = []
                for bb, init, rnd, variant, source in runs_order:
                    mine = [x for x in sel if (x["backbone"], x["init"], x["random_init"], x["variant"],
                                               x["source"]) == (bb, init, rnd, variant, source)]
                    vals = {x["category"]: _cell(x["_raw"], metric) for x in mine}
                    got = [v for v, _ in vals.values() if v is not None]
                    cells = [bb, f"{init} {RANDOM_MARK}" if rnd else init] + ([variant] if "variant" in header else [])
                    cells += [vals.get(c, (None, ""))[1] for c in cats]
                    na = vals and all(s == NOT_APPLICABLE for _, s in vals.values())
                    cells += [NOT_APPLICABLE if na else (f(sum(got) / len(got)) if got else ""), source]
                    table.append(cells)
                align = ["l"] * (header.index(cats[0]) if cats else 2) + ["r"] * (len(cats) + 1) + ["l"]
                parts += [f"## {m} on `{ds}`: {title}", "", md_table(header, table, align), ""]
    if not rows:
        parts.append("_No per-category data available._")
    return "\n".join(parts).rstrip() + "\n", rows, covered, missing


LATENCY_SETTINGS = (("eager_1t", "eager, 1 thread"), ("eager_all", "eager, all threads"),
                    ("onnx_1t", "ONNX Runtime, 1 thread"), ("onnx_all", "ONNX Runtime, all threads"))


def latency_section(out: Path, runs: list[Run], order: dict[str, int]) -> list[str]:
    """The index's "Deployment latency (batch 1)" lines and latency.csv: one row per run that has
    metrics/latency.json with figures (not skipped, not failed)."""
    rows, notes = [], []
    for run in runs:
        lat = run.latency
        pad = (lat or {}).get("padim")
        if not isinstance(pad, dict):
            if isinstance(lat, dict) and lat.get("error"):   # untraceable backbone, model too large: a note
                size = f" (PaDiM model {lat['padim_model_mb']:,.0f} MB)" if lat.get("padim_model_mb") else ""
                notes.append(f"- {run.backbone} ({init_label(lat.get('init') or run.init)}), {run.run_cell}: "
                             f"no latency{size}: {lat['error']}")
            continue
        init = lat.get("init") or run.init
        backbone = lat.get("backbone") or run.backbone
        row = {"backbone": backbone, "init": init_label(init, backbone),
               "random_init": init_kind(init) == "random", "variant": run.variant,
               "dataset": run.dataset, "category": lat.get("category", ""), "image_size": lat.get("image_size")}
        for key, _ in LATENCY_SETTINGS:
            row[f"{key}_ms"], row[f"{key}_p90_ms"] = num(pad.get(f"{key}_ms")), num(pad.get(f"{key}_p90_ms"))
        row.update(onnx_mb=num(pad.get("onnx_mb")), onnx_trunk_mb=num(pad.get("onnx_trunk_mb")),
                   threads_all=pad.get("threads_all"),
                   load_1m=num(lat.get("load_1m")), under_load=under_load(lat.get("load_1m"), pad.get("threads_all")),
                   source=run.label, rev=run.rev, _run=run.run_cell)
        rows.append(row)
    rows.sort(key=lambda x: (order.get(x["backbone"], 10**6), x["backbone"], x["random_init"], x["init"], x["variant"]))
    write_csv(out / "latency.csv", rows)
    lines = ["## Deployment latency (batch 1)", ""]
    if not rows:
        return lines + [f"_No run has `{LATENCY_FILE}` (the `latency` stage)._", ""] + notes + ([""] if notes else [])
    show_variant = any(x["variant"] for x in rows)
    header = ["backbone", "init"] + (["variant"] if show_variant else []) + \
        [f"{label} ms" for _, label in LATENCY_SETTINGS] + ["ONNX MB (trunk)", "all threads", "load", "run"]
    table = []
    for x in rows:
        cells = [x["backbone"], f"{x['init']} {RANDOM_MARK}" if x["random_init"] else x["init"]]
        cells += [x["variant"]] if show_variant else []
        cells += [f"{f(x[f'{k}_ms'], 1)} ({f(x[f'{k}_p90_ms'], 1)})" if x[f"{k}_ms"] is not None else ""
                  for k, _ in LATENCY_SETTINGS]
        trunk = f" ({f(x['onnx_trunk_mb'], 1)})" if x["onnx_trunk_mb"] is not None else ""
        cells += [f(x["onnx_mb"], 1) + trunk, str(x["threads_all"] or ""),
                  f(x["load_1m"], 1) + (f" {LOAD_MARK}" if x["under_load"] else ""), x["_run"]]
        table.append(cells)
    align = ["l", "l"] + (["l"] if show_variant else []) + ["r"] * (len(LATENCY_SETTINGS) + 3) + ["l"]
    lines += [md_table(header, table, align), "",
              "PaDiM as one deployable model (`anomaly_backbones.deploy`): raw uint8 image -> backbone up to the "
              "deepest layer -> anomaly map and image score, one image at a time on the CPU. Median (p90) ms over "
              "`latency.runs` calls; all threads = as many threads as the run's process had CPUs (column `all "
              "threads`); load = the machine's 1-minute load average when the run was timed; "
              f"{LOAD_MARK} = above {LOAD_FRACTION:g} x `all threads`: other work competed for the CPUs "
              "(all-threads figures suffer most). Rows from different machines are not comparable. ONNX MB = "
              "model plus weights (mostly PaDiM's inverse covariances); in brackets the backbone trunk's share. "
              "Data: [latency.csv](latency.csv). "
              f"Runs without `{LATENCY_FILE}` are left out.", ""]
    return lines + notes + ([""] if notes else [])
