"""The study's tables: one row per run and method (runs.csv), and one table per backbone family.

long_rows(runs, reg)       -> [dict]: run x method, every metric of metrics.json, costs, host, parameters
family_tables(rows, common) -> {family: {"csv": [dict], "md": str}}: per dataset a table in the seed's
    shape (rows backbone and init; per method image ROC-AUC with its 95 % DeLong interval, pixel ROC-AUC,
    AUPRO; CPU ms/image; trunk parameters), then AP, F1-max and the costs.
Parameters = the trunk that runs (the backbone cut after the deepest layer the run used); the full
model's count is the CSV's `full_params`.
"""
from __future__ import annotations

from functools import lru_cache

from .fmt import (COST_KEYS, IMAGE_METRICS, LOAD_MARK, METRIC_KEYS, NOT_APPLICABLE, PIXEL_METRICS, RANDOM_MARK,
                  f, init_kind, init_label, interval, is_image_level, md_table, metric_cell, num, params_str)
from .runs import LOAD_FRACTION, Run

OTHER = {"family": "other", "order": 10**6, "weights_offline": None}


def registry_info(names: list[str]) -> dict[str, dict]:
    """{name: {family, order, weights_offline}}; backbones outside the registry: family "other"."""
    from ..backbones import get_entry, registry, weights_offline

    order = {e["name"]: i for i, e in enumerate(registry())}
    out = {}
    for n in names:
        e = get_entry(n)
        if e is None:
            out[n] = dict(OTHER)
            continue
        try:
            offline = bool(weights_offline(e))
        except Exception:  # noqa: BLE001 - an unknown answer never stops the report
            offline = None
        out[n] = {"family": e["family"], "order": order.get(e["name"], 10**6), "weights_offline": offline}
    return out


@lru_cache(maxsize=None)
def param_counts(name: str, layers: tuple[str, ...]) -> tuple[int | None, int | None]:
    """(trunk, full) parameter counts; (None, None) where the backbone cannot be built here."""
    from ..backbones import param_counts as counts

    try:
        c = counts(name, list(layers))
        return c.get("trunk"), c.get("full")
    except Exception:  # noqa: BLE001 - outside the registry, or not buildable: an empty cell
        return None, None


def long_rows(runs: list[Run], reg: dict[str, dict]) -> list[dict]:
    rows = []
    method_order = {m: i for i, m in enumerate(dict.fromkeys(m for r in runs for m in r.methods))}
    for r in runs:
        info = reg.get(r.backbone, OTHER)
        trunk, full = param_counts(r.backbone, tuple(r.layers))
        for m in r.methods:
            mv = r.metrics[m]
            rows.append({
                "family": info["family"], "backbone": r.backbone, "init": init_label(r.init, r.backbone), "init_full": r.init,
                "random_init": init_kind(r.init) == "random", "dataset": r.dataset, "layers": ",".join(r.layers),
                "cache_mb": num(r.info.get("cache_mb")), "variant": r.variant, "method": m,
                "level": "image" if is_image_level(mv) else "pixel",
                **{k: num(mv.get(k)) for k in METRIC_KEYS + COST_KEYS},
                "trunk_params": trunk, "full_params": full,
                "device": r.device, "device_name": r.host.get("device_name"), "cpus": r.host.get("cpus"),
                "cpu_model": r.host.get("cpu_model"),
                "load_1m": num(r.host.get("load_1m")), "under_load": r.under_load,
                "source": r.label, "role": r.role, "rev": r.rev, "baseline": r.baseline or "",
                "timestamp": r.timestamp or "", "_order": info["order"], "_figures": mv, "_run": r.run_cell,
            })
    rows.sort(key=lambda x: (x["dataset"], x["_order"], x["backbone"], x["random_init"], x["init"], x["variant"],
                             x["role"] != "baseline", method_order[x["method"]]))
    return rows


def ms_cell(row: dict | None) -> str:
    """ms/image with the device where it is not the CPU, and the load mark."""
    if not row or row.get("ms_per_image") is None:
        return ""
    s = f(row["ms_per_image"], 1) + ("" if row["device"] == "cpu" else f" ({row['device']})")
    return s + (f" {LOAD_MARK}" if row["under_load"] else "")


def _bold_best(cells: list[str], values: list) -> list[str]:
    present = [f(v) for v in values if v is not None]
    best = max(present, default=None)
    if len(present) < 2:
        return cells
    return [c.replace(best, f"**{best}**", 1) if v is not None and f(v) == best else c for c, v in zip(cells, values)]


def _section(fam: str, ds: str, drows: list[dict], shared: list[str]) -> tuple[list[dict], str]:
    methods = list(dict.fromkeys(r["method"] for r in drows))
    keyed: dict[tuple, dict] = {}
    for r in drows:
        keyed.setdefault((r["backbone"], r["init"], r["variant"], r["source"]), {})[r["method"]] = r
    csv_rows, groups = [], list(keyed.values())
    for by_m in groups:
        a = next(iter(by_m.values()))
        row = {k: a[k] for k in ("backbone", "init", "random_init", "dataset", "variant", "layers",
                                 "trunk_params", "full_params", "cache_mb")}
        for m in methods:
            mr = by_m.get(m, {})
            row.update({f"{m}_{k}": mr.get(k) for k in METRIC_KEYS + ("ms_per_image", "fit_s")})
        row["peak_mb"] = max((v["peak_mb"] for v in by_m.values() if v.get("peak_mb") is not None), default=None)
        row.update({k: a[k] for k in ("device", "device_name", "cpus", "cpu_model", "load_1m", "under_load",
                                      "source", "role", "rev")})
        csv_rows.append(row)
    show_variant = any(a["variant"] for a in csv_rows)
    lead = lambda a: [a["backbone"], f"{a['init']} {RANDOM_MARK}" if a["random_init"] else a["init"]] + \
        ([a["variant"]] if show_variant else [])  # noqa: E731
    head = ["backbone", "init"] + (["variant"] if show_variant else [])
    # the seed's table: quality per method, cost, size
    cols: list[list[str]] = []
    header = list(head)
    for m in methods:
        rs = [by_m.get(m) or {} for by_m in groups]
        fig = [r.get("_figures", {}) for r in rs]
        cells = [metric_cell(x, "image_auroc") + (f" ({iv})" if (iv := interval(x.get("image_auroc_lo"),
                                                                               x.get("image_auroc_hi"))) else "")
                 for x in fig]
        cols.append(_bold_best(cells, [r.get("image_auroc") for r in rs]))
        header.append(f"{m} image ROC-AUC (95 % CI)")
        for key, title in (("pixel_auroc", "pixel ROC-AUC"), ("pixel_aupro", "AUPRO")):
            cols.append(_bold_best([metric_cell(x, key) for x in fig], [r.get(key) for r in rs]))
            header.append(f"{m} {title}")
    for m in methods:
        cols.append([ms_cell(by_m.get(m)) for by_m in groups])
        header.append("CPU ms/image" if len(methods) == 1 else f"{m} CPU ms/image")
    cols.append([params_str(a["trunk_params"]) for a in csv_rows])
    cols.append([a["_run"] for a in (next(iter(by_m.values())) for by_m in groups)])
    header += ["trunk parameters", "run"]
    main = [lead(a) + [c[i] for c in cols] for i, a in enumerate(csv_rows)]
    align = ["l"] * len(head) + ["r"] * (len(header) - len(head) - 1) + ["l"]
    # the other metrics and the costs
    header2, cols2 = list(head), []
    for m in methods:
        fig = [(by_m.get(m) or {}).get("_figures", {}) for by_m in groups]
        for key, title in IMAGE_METRICS[1:] + PIXEL_METRICS[1:3]:
            cols2.append([metric_cell(x, key) for x in fig])
            header2.append(f"{m} {title}")
        cols2.append([f((by_m.get(m) or {}).get("fit_s"), 1) for by_m in groups])
        header2.append(f"{m} fit s")
    cols2 += [[f(a["peak_mb"], 0) for a in csv_rows], [f(a["cache_mb"], 0) for a in csv_rows],
              [params_str(a["full_params"]) for a in csv_rows],
              [f"{f(a['load_1m'], 1)} / {a['cpus']}" if a["cpus"] else f(a["load_1m"], 1) for a in csv_rows]]
    header2 += ["peak MB", "cache MB", "full model parameters", "load / CPUs"]
    other = [lead(a) + [c[i] for c in cols2] for i, a in enumerate(csv_rows)]
    align2 = ["l"] * len(head) + ["r"] * (len(header2) - len(head))
    md = (f"## {fam} on `{ds}`\n\n"
          + (f"All runs here: {', '.join(f'`{c}`' for c in shared)} (params.yaml at HEAD differs).\n\n" if shared else "")
          + md_table(header, main, align) + "\n\n"
          + f"### {fam} on `{ds}`: AP, F1-max and costs\n\n" + md_table(header2, other, align2))
    return csv_rows, md


def family_tables(rows: list[dict], common: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """{family: {"csv": [dict rows], "md": markdown}} with one section per dataset. common: per dataset,
    the params all its runs share that differ from params.yaml at HEAD (printed under the heading)."""
    common = common or {}
    out = {}
    for fam in dict.fromkeys(r["family"] for r in sorted(rows, key=lambda r: r["_order"])):
        frows = [r for r in rows if r["family"] == fam]
        csv_rows, parts = [], []
        for ds in sorted({r["dataset"] for r in frows}):
            c, md = _section(fam, ds, [r for r in frows if r["dataset"] == ds], common.get(ds, []))
            csv_rows += c
            parts.append(md)
        out[fam] = {"csv": csv_rows, "md": "\n\n".join(parts)}
    return out


TABLE_NOTE = (
    "Columns: means over categories (`metrics/metrics.json`). Image ROC-AUC with its 95 % DeLong interval "
    "(lo-hi) where the run recorded it; AUPRO = per-region overlap integrated to FPR 0.3. "
    f"{NOT_APPLICABLE} = not applicable (an image-level method has no anomaly map); an empty cell = not "
    "recorded by that run (older runs). CPU ms/image = backbone forward + method scoring per test image "
    "(`metrics/speed.json`; another device is named in the cell); "
    f"{LOAD_MARK} = measured under load: the machine's 1-minute load average exceeded {LOAD_FRACTION:g} x its "
    "CPUs (speed.json `host`), so the timing is inflated by other work. Trunk parameters = the backbone up to "
    "the deepest layer the run used (the full model's count is in the second table and the CSV). Bold = best "
    "in the column. `run` = HEAD's committed run (baseline), the base branch's, an experiment (`dvc exp show`) "
    "or the workspace.")


def random_footnote(rows: list[dict], reg: dict[str, dict]) -> str:
    rnd = sorted({r["backbone"] for r in rows if r["random_init"]})
    if not rnd:
        return ""
    missing = [b for b in rnd if reg.get(b, {}).get("weights_offline") is False]
    chosen = [b for b in rnd if b not in missing]
    text = (f"{RANDOM_MARK} **random init**: these rows use seeded random weights (`init=random`), not ImageNet "
            f"features; they measure the architecture alone and are not comparable with pretrained rows.")
    if missing:
        text += (f" The ImageNet weights of {', '.join(f'`{b}`' for b in missing)} were unavailable offline on "
                 f"the machine that made this report (no internet; see README, \"Weights offline\").")
    if chosen:
        text += (f" For {', '.join(f'`{b}`' for b in chosen)} pretrained weights are available offline: "
                 f"random init was chosen explicitly.")
    return text
