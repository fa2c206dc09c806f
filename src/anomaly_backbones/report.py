"""`python -m anomaly_backbones report [--out reports] [--overlays N]`: every finished run, in tables and plots.

Sources (nothing is re-run, nothing is applied to the workspace):
  * `dvc exp show --json --all-commits`: params, metrics/metrics.json and metrics/speed.json of every finished experiment
    (queued, running and failed ones are listed as skipped) and of the workspace. The workspace is
    left out when its metrics/metrics.json was produced by other params than params.yaml holds (a run
    in progress, or params edited since), and when it is the same run as an experiment.
  * per-category results (appendix): the workspace's metrics/per_category.csv; for experiments the
    same file at the experiment's commit through `dvc.api.read(path, rev=...)`, i.e. from the local
    DVC cache or the default remote (after `dvc exp pull`, both hold it).
  * anomaly-map overlays: the workspace only (data/prepared + outputs/<method>/<category>.npz).

Writes into --out (default reports/):
  README.md                        index of everything below
  runs.csv                         one row per run x method (long format)
  tables/<family>.md|.csv          per backbone family: rows = backbone and init, columns = image and
                                   pixel ROC-AUC per method, ms/image, peak MB, parameters
  per_category.md|.csv             appendix: per-category ROC-AUC of every run where it is available
  pareto.csv, pareto_<dataset>.png image ROC-AUC vs CPU ms/image with the Pareto front
  latency.csv                      batch-1 deployment latency per run (metrics/latency.json), also a table
                                   in README.md
  overlays/<method>_<category>.png image | ground truth | heat map, a few test images per category
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

METRICS_FILE = "metrics/metrics.json"   # run + ROC-AUC
SPEED_FILE = "metrics/speed.json"       # ms/image, fit_s, peak_mb per method (older runs kept them in METRICS_FILE)
LATENCY_FILE = "metrics/latency.json"   # batch-1 deployment latency (the latency stage)
PER_CATEGORY_FILE = "metrics/per_category.csv"
PARAMS_FILE = "params.yaml"
METHOD_KEYS = ("image_auroc", "pixel_auroc", "ms_per_image", "fit_s", "peak_mb")
RANDOM_MARK = "†"
# computed parameter counts, shared by all reports of this user (building a model takes up to seconds)
PARAM_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomaly_backbones" / \
    "param_counts.json"


# --------------------------------------------------------------------------------------------- dvc

def dvc_env() -> dict:
    """The environment for dvc: this interpreter's bin folder first, so stages find `python`/`dvc`."""
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}


def dvc_exe() -> str:
    local = Path(sys.executable).parent / "dvc"
    if local.exists():
        return str(local)
    found = shutil.which("dvc")
    if not found:
        raise UserError("the `dvc` command was not found: install the requirements (make setup) "
                        "and put .venv/bin on PATH.")
    return found


def run_dvc(args: list[str], cwd: str | Path = ".", check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([dvc_exe(), *args], cwd=cwd, env=dvc_env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
        raise UserError(f"`dvc {' '.join(args)}` failed in {cwd}: " + " | ".join(msg[-5:]))
    return r


def parse_json_output(text: str):
    """JSON from a command's stdout that may carry warnings or progress lines before it."""
    text = text.strip()
    if not text:
        raise ValueError("empty output")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    dec = json.JSONDecoder()
    for m in re.finditer(r"^[\[{]", text, flags=re.M):
        try:
            return dec.raw_decode(text[m.start():])[0]
        except json.JSONDecodeError:
            continue
    raise ValueError(f"no JSON in output: {text[:200]!r}")


# ----------------------------------------------------------------------------------- exp show JSON

@dataclass
class Run:
    """One finished run: the workspace or an experiment."""
    label: str                      # "workspace" or the experiment name
    rev: str                        # commit sha, or "workspace"
    kind: str                       # "workspace" | "experiment"
    baseline: str | None            # the experiment's baseline commit (sha)
    timestamp: str | None
    params: dict
    metrics: dict
    variant: str = ""               # params (besides backbone and init) that set this run apart
    per_category: list[dict] | None = None
    latency: dict | None = None     # metrics/latency.json, when the run has one

    @property
    def info(self) -> dict:
        return self.metrics.get("run") or {}

    @property
    def backbone(self) -> str:
        return str(self.info.get("backbone") or self.params.get("backbone") or "?")

    @property
    def init(self) -> str:
        return str(self.info.get("init") or self.params.get("init") or "?")

    @property
    def dataset(self) -> str:
        return str(self.info.get("dataset") or (self.params.get("data") or {}).get("dataset") or "?")

    @property
    def methods(self) -> list[str]:
        return [k for k, v in self.metrics.items() if k != "run" and isinstance(v, dict) and "image_auroc" in v]


@dataclass
class Gathered:
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (name, why)
    notes: list[str] = field(default_factory=list)
    common: dict[str, list[str]] = field(default_factory=dict)  # dataset -> params all its runs share
    #                                                                 that differ from params.yaml at HEAD


def _file_data(section: dict | None, path: str) -> dict | None:
    """`{"params.yaml": {"data": {...}}}` -> the data; tolerant of missing files, errors and other keys."""
    if not isinstance(section, dict):
        return None
    entry = section.get(path)
    if entry is None:  # a path written differently (./metrics/metrics.json, Windows separators)
        norm = path.replace("\\", "/")
        for k, v in section.items():
            if str(k).replace("\\", "/").lstrip("./") == norm:
                entry = v
                break
    if not isinstance(entry, dict):
        return None
    data = entry.get("data", entry if "error" not in entry else None)
    return data if isinstance(data, dict) and data else None


def _is_success(executor) -> tuple[bool, str]:
    if not executor:
        return True, ""
    state = str((executor or {}).get("state") or "").lower()
    return state in ("success", ""), state or "unknown"


def parse_exp_show(data) -> tuple[list[dict], list[tuple[str, str]], dict[str, dict]]:
    """`dvc exp show --json` (DVC 3 list format; DVC 2 dict format also read) ->
    (records, skipped, baseline params by sha). A record: label, rev, kind, baseline, timestamp,
    params, metrics (only finished runs with metrics/metrics.json), latency (metrics/latency.json
    or None: runs older than the latency stage have none)."""
    records: list[dict] = []
    skipped: list[tuple[str, str]] = []
    baselines: dict[str, dict] = {}

    def record(label, rev, kind, baseline, d):
        params = _file_data(d.get("params"), PARAMS_FILE)
        metrics = _file_data(d.get("metrics"), METRICS_FILE)
        if not metrics:
            skipped.append((label, f"no {METRICS_FILE}"))
            return
        for method, figures in (_file_data(d.get("metrics"), SPEED_FILE) or {}).items():
            if isinstance(metrics.get(method), dict) and isinstance(figures, dict):
                metrics[method] = {**metrics[method], **figures}
        records.append({"label": label, "rev": rev, "kind": kind, "baseline": baseline,
                        "timestamp": d.get("timestamp"), "params": params or {}, "metrics": metrics,
                        "latency": _file_data(d.get("metrics"), LATENCY_FILE)})

    if isinstance(data, dict):  # DVC 2.x: {rev: {"baseline": {"data": ...}, exp_rev: {"data": ...}}}
        for rev, group in data.items():
            if not isinstance(group, dict):
                continue
            base = (group.get("baseline") or {}).get("data") or {}
            if rev == "workspace":
                record("workspace", "workspace", "workspace", None, base)
                continue
            baselines[rev] = _file_data(base.get("params"), PARAMS_FILE) or {}
            for exp_rev, e in group.items():
                if exp_rev == "baseline" or not isinstance(e, dict):
                    continue
                d = e.get("data") or {}
                name = d.get("name") or exp_rev[:7]
                ok, state = _is_success(d.get("executor"))
                status = str(d.get("status") or "").lower()
                if e.get("error") or not ok or status in ("queued", "running", "failed"):
                    skipped.append((name, state if not ok else (status or "failed")))
                    continue
                record(name, exp_rev, "experiment", rev, d)
        return records, skipped, baselines

    if not isinstance(data, list):
        raise ValueError(f"unexpected `dvc exp show --json` output: {type(data).__name__}")
    for b in data:
        if not isinstance(b, dict):
            continue
        rev = b.get("rev")
        d = b.get("data") or {}
        if rev == "workspace":
            if not b.get("error"):
                record("workspace", "workspace", "workspace", None, d)
            continue
        baselines[rev] = _file_data(d.get("params"), PARAMS_FILE) or {}
        for group in b.get("experiments") or []:
            if not isinstance(group, dict):
                continue
            revs = [r for r in (group.get("revs") or []) if isinstance(r, dict)]
            name = group.get("name") or (revs[0].get("name") if revs else None) or "?"
            ok, state = _is_success(group.get("executor"))
            if not ok:
                skipped.append((name, state))
                continue
            good = [r for r in revs if not r.get("error") and r.get("data")]
            if not good:
                skipped.append((name, "failed" if revs else "no revisions"))
                continue
            r = good[0]  # the newest revision of the experiment (checkpoints list more)
            record(r.get("name") or name, r.get("rev"), "experiment", rev, r["data"])
    return records, skipped, baselines


def _flatten(d, prefix="") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _fmt_value(v) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def _canonical(d) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def _stale_reason(rec: dict) -> str | None:
    """Why the workspace's metrics do not belong to its params.yaml (None when they do)."""
    p, info = rec["params"], rec["metrics"].get("run") or {}
    if not p or not info:
        return None
    checks = [("backbone", p.get("backbone"), info.get("backbone")),
              ("data.dataset", (p.get("data") or {}).get("dataset"), info.get("dataset")),
              ("seed", p.get("seed"), info.get("seed"))]
    for key, want, got in checks:
        if want is not None and got is not None and str(want).lower() != str(got).lower():
            return f"metrics/metrics.json is from {key}={got} but params.yaml has {key}={want}"
    init, got = str(p.get("init", "")), str(info.get("init", ""))
    kind = got.split(":", 1)[0]
    if init in ("imagenet", "random") and kind in ("imagenet", "random", "file") and kind != init:
        return f"metrics/metrics.json is from init={got} but params.yaml has init={init}"
    return None


def workspace_status(status: dict) -> tuple[str | None, str | None]:
    """`dvc status --json` -> (why the workspace metrics are stale, or None; a note, or None).

    Stale = some stage's outputs differ from dvc.lock, or its params changed: then metrics/metrics.json
    is not the result of params.yaml. Only code/data dependencies changed = the run is still the
    locked one (made with older code): included, with a note."""
    if not isinstance(status, dict) or not status:
        return None, None
    outs, params, deps = [], [], []
    for stage, changes in status.items():
        for ch in changes if isinstance(changes, list) else [changes]:
            if not isinstance(ch, dict):
                continue
            if ch.get("changed outs"):
                outs.append(stage)
            for dep, what in (ch.get("changed deps") or {}).items():
                (params if isinstance(what, dict) or str(dep).endswith(PARAMS_FILE) else deps).append(dep)
    if outs or params:
        return (f"`dvc status` reports changed {'outputs' if outs else 'params'} "
                f"({', '.join(dict.fromkeys(outs or params))}): the workspace metrics are not those of "
                f"params.yaml (a run in progress, or not reproduced since)"), None
    if deps:
        return None, f"dependencies changed since the workspace run: {', '.join(dict.fromkeys(deps))}"
    return None, None


def gather(root: str | Path = ".", all_commits: bool = True, exp_show_json=None,
           status_json=None) -> Gathered:
    """Finished experiments + the workspace, deduplicated, with a `variant` label per run."""
    root = Path(root)
    if exp_show_json is None:
        args = ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
        r = run_dvc(args, cwd=root)
        try:
            exp_show_json = parse_json_output(r.stdout)
        except ValueError as e:
            raise UserError(f"could not read `dvc exp show --json` output: {e}") from None
    records, skipped, baselines = parse_exp_show(exp_show_json)
    g = Gathered(skipped=list(skipped))
    ws_stale = ws_note = None
    if any(r["kind"] == "workspace" for r in records):
        if status_json is None:
            st = run_dvc(["status", "--json"], cwd=root, check=False)
            try:
                status_json = parse_json_output(st.stdout) if st.returncode == 0 else None
            except ValueError:
                status_json = None
            if status_json is None:
                g.notes.append("`dvc status` failed (" + (st.stderr.strip().splitlines() or ["?"])[-1] +
                               "): workspace checked against params.yaml only")
        ws_stale, ws_note = workspace_status(status_json or {})
        if ws_note:
            g.notes.append("workspace: " + ws_note)
    exps = [r for r in records if r["kind"] == "experiment"]
    ws = [r for r in records if r["kind"] == "workspace"]
    # the same params run twice (e.g. on two machines): keep the newest
    seen: dict[str, dict] = {}
    for r in sorted(exps, key=lambda r: r["timestamp"] or "", reverse=True):
        key = _canonical([r["params"], r["metrics"].get("run")])
        if key in seen:
            g.skipped.append((r["label"], f"same params as {seen[key]['label']} (newer)"))
            continue
        seen[key] = r
    kept = list(seen.values())
    for r in ws:
        why = ws_stale or _stale_reason(r)
        same = next((e for e in kept if _canonical([e["params"], e["metrics"]]) ==
                     _canonical([r["params"], r["metrics"]])), None)
        if why:
            g.skipped.append(("workspace", why))
        elif same is not None:
            g.skipped.append(("workspace", f"same run as experiment {same['label']}"))
        else:
            kept.insert(0, r)
    g.runs = [Run(label=r["label"], rev=r["rev"] or "?", kind=r["kind"], baseline=r["baseline"],
                  timestamp=r["timestamp"], params=r["params"], metrics=r["metrics"], latency=r["latency"])
              for r in kept]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    reference = baselines.get(head) or (next(iter(baselines.values())) if len(baselines) == 1 else None)
    for ds in sorted({r.dataset for r in g.runs}):  # variants are relative within one dataset's runs
        g.common[ds] = _set_variants([r for r in g.runs if r.dataset == ds], reference)
    return g


def _set_variants(runs: list[Run], reference: dict | None = None) -> list[str]:
    """variant = the params (other than backbone/init) that differ between runs, shown where a run's value
    differs from the reference (params.yaml at HEAD; the most common value where HEAD lacks the key).
    Returns the params all runs share but that differ from the reference ("k=v")."""
    flat = [_flatten({k: v for k, v in r.params.items() if k not in ("backbone", "init")}) for r in runs]
    ref = _flatten(reference) if reference else {}
    keys = sorted(set().union(*flat)) if flat else []
    base, common = {}, []
    for k in keys:
        vals = Counter(_canonical(f.get(k)) for f in flat)
        if len(vals) > 1:
            base[k] = _canonical(ref[k]) if k in ref else vals.most_common(1)[0][0]
        elif k in ref and _canonical(ref[k]) != next(iter(vals)) and k not in ("backbone", "init"):
            common.append(f"{k}={_fmt_value(flat[0].get(k))}")
    for r, f in zip(runs, flat):
        # a param a run does not have (older params.yaml without that group) sets nothing apart
        r.variant = ", ".join(f"{k}={_fmt_value(f[k])}" for k in base if k in f and _canonical(f[k]) != base[k])
    return common


# --------------------------------------------------------------------------------------- registry

def registry_info(names: list[str], cache_file: Path | None = PARAM_CACHE) -> dict[str, dict]:
    """{name: {family, order, params (count or None), weights_offline}}. Parameter counts are computed
    (the model built on the meta device, as `backbones --json` does) once and cached in cache_file,
    keyed by name, source and constructor."""
    from .backbones import get_entry, registry

    order = {e["name"]: i for i, e in enumerate(registry())}
    cache = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    out, changed = {}, False
    for n in names:
        e = get_entry(n)
        if e is None:
            out[n] = {"family": "other", "order": 10**6, "params": None, "weights_offline": None}
            continue
        key = f"{e['name']}|{e['source']}|{e['model']}"
        count = cache.get(key)
        if count is None:
            try:
                from .backbones.cli import count_params

                count = count_params(e)
                cache[key] = count
                changed = True
            except Exception:  # noqa: BLE001 - a missing count never stops the report
                count = None
        try:
            from .backbones import weights_offline

            offline = bool(weights_offline(e))
        except Exception:  # noqa: BLE001
            offline = None
        out[n] = {"family": e["family"], "order": order.get(e["name"], 10**6), "params": count,
                  "weights_offline": offline}
    if changed and cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(cache_file.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, cache_file)
        except OSError:  # a read-only home: counts are recomputed next time
            pass
    return out


# ------------------------------------------------------------------------------------------ tables

def init_kind(init: str) -> str:
    return str(init).split(":", 1)[0]


def init_label(init: str) -> str:
    """imagenet:in1k_pypi -> imagenet (in1k_pypi); random:seed=1024 -> random; file:/a/b.pth -> file b.pth."""
    kind, _, rest = str(init).partition(":")
    if kind == "random":
        return "random"
    if kind == "file":
        return f"file {Path(rest).name}"
    return f"{kind} ({rest})" if rest else kind


def long_rows(runs: list[Run], reg: dict[str, dict]) -> list[dict]:
    rows = []
    for r in runs:
        info = reg.get(r.backbone, {"family": "other", "order": 10**6, "params": None})
        for m in r.methods:
            mv = r.metrics[m]
            rows.append({
                "family": info["family"], "backbone": r.backbone, "init": init_label(r.init),
                "init_full": r.init, "random_init": init_kind(r.init) == "random", "dataset": r.dataset,
                "layers": r.info.get("layers", ""), "cache_mb": _num(r.info.get("cache_mb")), "variant": r.variant,
                "method": m,
                **{k: _num(mv.get(k)) for k in METHOD_KEYS},
                "params": info.get("params"), "source": r.label, "rev": r.rev, "baseline": r.baseline or "",
                "timestamp": r.timestamp or "", "_order": info["order"],
            })
    rows.sort(key=lambda x: (x["dataset"], x["_order"], x["backbone"], x["random_init"], x["init"], x["variant"],
                             x["method"]))
    return rows


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _f(v, nd=3) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def _params_str(n) -> str:
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


def family_tables(rows: list[dict], common: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """{family: {"csv": [dict rows], "md": markdown}} with one section per dataset. common: per dataset,
    the params all its runs share that differ from params.yaml at HEAD (printed under the heading)."""
    common = common or {}
    out = {}
    families = list(dict.fromkeys(r["family"] for r in sorted(rows, key=lambda r: r["_order"])))
    for fam in families:
        frows = [r for r in rows if r["family"] == fam]
        csv_rows, parts = [], []
        for ds in sorted({r["dataset"] for r in frows}):
            drows = [r for r in frows if r["dataset"] == ds]
            methods = list(dict.fromkeys(r["method"] for r in drows))
            keyed: dict[tuple, dict] = {}
            for r in drows:
                key = (r["backbone"], r["init"], r["variant"], r["source"])
                keyed.setdefault(key, {})[r["method"]] = r
            table_rows = []
            for (bb, init, variant, source), by_m in keyed.items():
                any_r = next(iter(by_m.values()))
                row = {"backbone": bb, "init": init, "random_init": any_r["random_init"], "dataset": ds,
                       "variant": variant, "layers": any_r["layers"], "params": any_r["params"],
                       "cache_mb": any_r["cache_mb"]}
                for m in methods:
                    mr = by_m.get(m, {})
                    row[f"{m}_image_auroc"] = mr.get("image_auroc")
                    row[f"{m}_pixel_auroc"] = mr.get("pixel_auroc")
                    row[f"{m}_ms_per_image"] = mr.get("ms_per_image")
                    row[f"{m}_fit_s"] = mr.get("fit_s")
                row["peak_mb"] = max((v["peak_mb"] for v in by_m.values() if v.get("peak_mb") is not None),
                                     default=None)
                row["source"], row["rev"] = source, any_r["rev"]
                table_rows.append(row)
            csv_rows += table_rows
            # markdown: best pretrained value per quality column in bold
            qcols = [f"{m}_{k}" for m in methods for k in ("image_auroc", "pixel_auroc")]
            best = {c: max((_f(t[c]) for t in table_rows if t[c] is not None), default=None) for c in qcols}
            show_variant = any(t["variant"] for t in table_rows)
            one = len(methods) == 1
            header = ["backbone", "init"] + (["variant"] if show_variant else [])
            for m in methods:
                header += [f"{m} image ROC-AUC", f"{m} pixel ROC-AUC"]
            header += ["ms/image"] if one else [f"{m} ms/image" for m in methods]
            header += ["peak MB", "cache MB", "parameters", "run"]
            md_rows = []
            for t in table_rows:
                cells = [t["backbone"], f"{t['init']} {RANDOM_MARK}" if t["random_init"] else t["init"]]
                if show_variant:
                    cells.append(t["variant"])
                for c in qcols:
                    s = _f(t[c])
                    cells.append(f"**{s}**" if s and len(table_rows) > 1 and s == best[c] else s)
                cells += [_f(t[f"{m}_ms_per_image"], 1) for m in methods]
                cells += [_f(t["peak_mb"], 0), _f(t["cache_mb"], 0), _params_str(t["params"]), t["source"]]
                md_rows.append(cells)
            align = ["l", "l"] + (["l"] if show_variant else []) + ["r"] * (len(header) - 3 - show_variant) + ["l"]
            shared = (f"All runs here: {', '.join(f'`{c}`' for c in common[ds])} (params.yaml at HEAD differs)."
                      "\n\n") if common.get(ds) else ""
            parts.append(f"## {fam} on `{ds}`\n\n" + shared + md_table(header, md_rows, align))
        out[fam] = {"csv": csv_rows, "md": "\n\n".join(parts)}
    return out


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


# ---------------------------------------------------------------------------------------- pareto

def pareto_front(cost, quality) -> list[bool]:
    """Non-dominated points when minimizing cost and maximizing quality. A point is dominated when
    another is at least as good in both and strictly better in one; equal points are both kept.
    Points with a missing (None/NaN) value are never on the front."""
    pts = [(_num(c), _num(q)) for c, q in zip(cost, quality)]
    out = []
    for i, (c, q) in enumerate(pts):
        if c is None or q is None:
            out.append(False)
            continue
        dominated = any(c2 is not None and q2 is not None and c2 <= c and q2 >= q and (c2 < c or q2 > q)
                        for j, (c2, q2) in enumerate(pts) if j != i)
        out.append(not dominated)
    return out


def pareto_rows(rows: list[dict]) -> list[dict]:
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        drows = [r for r in rows if r["dataset"] == ds]
        front = pareto_front([r["ms_per_image"] for r in drows], [r["image_auroc"] for r in drows])
        multi_m = len({r["method"] for r in drows}) > 1
        for r, f in zip(drows, front):
            label = f"{r['backbone']} ({'random' if r['random_init'] else init_kind(r['init_full'])})"
            if multi_m:
                label += f" {r['method']}"
            if r["variant"]:
                label += f" [{r['variant']}]"
            out.append({"label": label, "backbone": r["backbone"], "family": r["family"], "init": r["init"],
                        "random_init": r["random_init"], "method": r["method"], "dataset": ds,
                        "variant": r["variant"], "ms_per_image": r["ms_per_image"],
                        "image_auroc": r["image_auroc"], "pixel_auroc": r["pixel_auroc"],
                        "pareto_front": bool(f), "source": r["source"]})
    return out


def _place_labels(fig, ax, pts: list[dict]) -> None:
    """Annotate points, trying a few offsets per label so that labels do not overlap each other."""
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    placed = []
    offsets = [(6, 4, "left"), (6, -12, "left"), (-6, 4, "right"), (-6, -12, "right"), (6, 16, "left"),
               (6, -24, "left"), (-6, 16, "right"), (-6, -24, "right"), (6, 28, "left"), (6, -36, "left")]
    # front points first (they matter most), then from the top left
    for p in sorted(pts, key=lambda p: (not p["pareto_front"], -p["image_auroc"], p["ms_per_image"])):
        best = None
        for dx, dy, ha in offsets:
            t = ax.annotate(p["label"], (p["ms_per_image"], p["image_auroc"]), textcoords="offset points",
                            xytext=(dx, dy), ha=ha, fontsize=8, fontweight="bold" if p["pareto_front"] else "normal",
                            arrowprops=dict(arrowstyle="-", color="0.6", lw=0.5) if abs(dy) > 12 else None)
            bb = t.get_window_extent(renderer).expanded(1.02, 1.1)
            inside = ax.get_window_extent(renderer).contains(bb.x0, bb.y0) and \
                ax.get_window_extent(renderer).contains(bb.x1, bb.y1)
            if inside and not any(bb.overlaps(o) for o in placed):
                best = (t, bb)
                break
            t.remove()
        if best is None:  # every place taken: first choice anyway
            dx, dy, ha = offsets[0]
            t = ax.annotate(p["label"], (p["ms_per_image"], p["image_auroc"]), textcoords="offset points",
                            xytext=(dx, dy), ha=ha, fontsize=8, fontweight="bold" if p["pareto_front"] else "normal")
            best = (t, t.get_window_extent(renderer))
        placed.append(best[1])


def plot_pareto(prow: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in prow if p["ms_per_image"] is not None and p["image_auroc"] is not None]
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    fams = list(dict.fromkeys(p["family"] for p in pts))
    cmap = plt.get_cmap("tab10" if len(fams) <= 10 else "tab20")
    markers = dict(zip(dict.fromkeys(p["method"] for p in pts), "os^DvP*X"))
    for p in pts:
        color = cmap(fams.index(p["family"]) % cmap.N)
        ax.scatter(p["ms_per_image"], p["image_auroc"], s=60, marker=markers[p["method"]], zorder=3,
                   facecolors="white" if p["random_init"] else color, edgecolors=color, linewidths=1.8)
    front = sorted((p for p in pts if p["pareto_front"]), key=lambda p: (p["ms_per_image"], -p["image_auroc"]))
    if front:
        xs, ys = [front[0]["ms_per_image"]], [front[0]["image_auroc"]]
        for p in front[1:]:  # staircase: the best quality reachable at each latency
            xs += [p["ms_per_image"], p["ms_per_image"]]
            ys += [ys[-1], p["image_auroc"]]
        ax.plot(xs, ys, "-", color="0.3", lw=1.2, zorder=2, label="Pareto front")
    xs = [p["ms_per_image"] for p in pts]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 8:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if xs:
        lo, hi = min(xs), max(xs)
        pad = (hi - lo) * 0.25 if hi > lo else max(hi * 0.2, 1.0)
        ax.set_xlim(max(lo - pad * 0.3, 0) if ax.get_xscale() == "linear" else lo / 1.3,
                    hi + pad if ax.get_xscale() == "linear" else hi * 1.8)
    ys = [p["image_auroc"] for p in pts]
    if ys:
        ax.set_ylim(min(ys) - 0.03, min(1.0, max(ys)) + 0.03)
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i % cmap.N), label=f) for i, f in enumerate(fams)]
    handles += [plt.Line2D([], [], ls="", marker=mk, color="0.4", label=m) for m, mk in markers.items()
                if len(markers) > 1]
    handles += [plt.Line2D([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="0.3",
                           label="random init (hollow)")] if any(p["random_init"] for p in pts) else []
    handles += [plt.Line2D([], [], color="0.3", label="Pareto front")] if front else []
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("CPU ms / image (backbone forward + scoring)")
    ax.set_ylabel("image ROC-AUC")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    label_all = len(pts) <= 40
    _place_labels(fig, ax, [p for p in pts if label_all or p["pareto_front"]])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------- per category

def _read_per_category(root: Path, run: Run) -> list[dict] | None:
    if run.kind == "workspace":
        f = root / PER_CATEGORY_FILE
        text = f.read_text() if f.exists() else None
    else:
        try:
            import dvc.api

            text = dvc.api.read(PER_CATEGORY_FILE, repo=str(root), rev=run.rev)
        except Exception:  # noqa: BLE001 - not in the cache nor the remote: reported as missing
            text = None
    if not text:
        return None
    return list(csv.DictReader(io.StringIO(text)))


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
            rows.append({"source": r.label, "rev": r.rev, "backbone": d.get("backbone") or r.backbone,
                         "init": init_label(d.get("init") or r.init),
                         "random_init": init_kind(d.get("init") or r.init) == "random",
                         "variant": r.variant, "dataset": r.dataset, "method": d.get("method", ""),
                         "category": d.get("category", ""), "image_auroc": _num(d.get("image_auroc")),
                         "pixel_auroc": _num(d.get("pixel_auroc")), "fit_s": _num(d.get("fit_s")),
                         "predict_ms_per_image": _num(d.get("predict_ms_per_image")),
                         "backbone_ms_per_image": _num(d.get("backbone_ms_per_image"))})
    parts = ["# Appendix: per-category ROC-AUC", "",
             "Covers the workspace run (`metrics/per_category.csv`) and every experiment whose "
             "`metrics/per_category.csv` (a DVC-cached output of the `aggregate` stage) can be read at the "
             "experiment's commit with `dvc.api.read(..., rev=<exp>)`, i.e. from the local DVC cache or the "
             "default DVC remote. `dvc exp show` itself carries only the means of `metrics/metrics.json`.", ""]
    if missing:
        parts += [f"Not available for: {', '.join(f'`{m}`' for m in missing)} (their cached outputs are in "
                  f"neither the local cache nor the default remote: `dvc exp pull <remote> <exp>` fetches them).",
                  ""]
    for ds in sorted({x["dataset"] for x in rows}):
        for m in sorted({x["method"] for x in rows if x["dataset"] == ds}):
            sel = [x for x in rows if x["dataset"] == ds and x["method"] == m]
            cats = sorted({x["category"] for x in sel})
            keys = dict.fromkeys((x["backbone"], x["init"], x["random_init"], x["variant"], x["source"]) for x in sel)
            runs_order = sorted(keys, key=lambda k: (order.get(k[0], 10**6), k[0], k[2], k[1], k[3]))
            for metric, title in (("image_auroc", "image ROC-AUC"), ("pixel_auroc", "pixel ROC-AUC")):
                header = ["backbone", "init"] + (["variant"] if any(k[3] for k in runs_order) else []) + cats + \
                         ["mean", "run"]
                table = []
                for bb, init, rnd, variant, source in runs_order:
                    vals = {x["category"]: x[metric] for x in sel if (x["backbone"], x["init"], x["random_init"],
                                                                      x["variant"], x["source"]) ==
                            (bb, init, rnd, variant, source)}
                    got = [v for v in vals.values() if v is not None]
                    cells = [bb, f"{init} {RANDOM_MARK}" if rnd else init]
                    if "variant" in header:
                        cells.append(variant)
                    cells += [_f(vals.get(c)) for c in cats]
                    cells += [_f(sum(got) / len(got)) if got else "", source]
                    table.append(cells)
                align = ["l"] * (header.index(cats[0]) if cats else 2) + ["r"] * (len(cats) + 1) + ["l"]
                parts += [f"## {m} on `{ds}`: {title}", "", md_table(header, table, align), ""]
    if not rows:
        parts.append("_No per-category data available._")
    return "\n".join(parts).rstrip() + "\n", rows, covered, missing


# --------------------------------------------------------------------------------------- overlays

def pick_indices(labels: list[int], n: int) -> list[int]:
    """n test images: defective ones spread over the list, plus one defect-free image (when n >= 2)."""
    if n <= 0:
        return []
    bad = [i for i, lab in enumerate(labels) if lab == 1]
    good = [i for i, lab in enumerate(labels) if lab == 0]
    n_good = 1 if (n >= 2 and good) else 0
    n_bad = min(len(bad), n - n_good)
    pick = [bad[round(k * (len(bad) - 1) / max(1, n_bad - 1))] for k in range(n_bad)] if n_bad else []
    pick = list(dict.fromkeys(pick))
    pick += good[:n - len(pick)] if len(pick) < n else []
    return pick[:n]


def overlays(root: Path, out: Path, n: int) -> tuple[list[dict], list[str]]:
    """Image | ground truth | heat map for n test images per (method, category) of the workspace run."""
    import numpy as np

    notes: list[str] = []
    made: list[dict] = []
    if n <= 0:
        return made, notes
    prepared, outputs = root / "data" / "prepared", root / "outputs"
    if not (prepared / "categories.json").exists() or not outputs.is_dir():
        return made, ["the workspace has no `data/prepared` and `outputs/` (run `dvc repro`, or "
                      "`dvc exp apply <name>` to check out an experiment's outputs)"]
    cats = [c["category"] for c in json.loads((prepared / "categories.json").read_text())]
    stats_f = root / "data" / "features" / "stats.json"
    stats = json.loads(stats_f.read_text()) if stats_f.exists() else {}
    who = f"{stats.get('backbone', '?')}, init {init_label(stats.get('init', '?'))}"
    methods = sorted(p.parent.name for p in outputs.glob("*/results.json"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for m in methods:
        for cat in cats:
            npz = outputs / m / f"{cat}.npz"
            cdir = prepared / cat
            if not npz.exists() or not (cdir / "test_images.npy").exists():
                notes.append(f"{m}/{cat}: no outputs")
                continue
            with np.load(npz) as z:
                maps, scores = z["maps"], z["scores"]
            images = np.load(cdir / "test_images.npy", mmap_mode="r")
            masks = np.load(cdir / "test_masks.npy", mmap_mode="r")
            with open(cdir / "samples.csv", newline="") as f:
                test = [r for r in csv.DictReader(f) if r["split"] == "test"]
            if not (len(maps) == len(images) == len(masks) == len(test)):
                notes.append(f"{m}/{cat}: outputs ({len(maps)} maps) do not match data/prepared ({len(images)} "
                             f"test images): stale workspace, skipped")
                continue
            idx = pick_indices([int(r["label"]) for r in test], n)
            vmin, vmax = float(np.min(maps)), float(np.max(maps))
            fig, axes = plt.subplots(len(idx), 3, figsize=(8, 2.5 * len(idx) + 0.5), dpi=90, squeeze=False,
                                     layout="constrained")
            for row, i in enumerate(idx):
                img, gt = np.asarray(images[i]), np.asarray(masks[i])
                heat = np.asarray(maps[i], dtype=np.float32)
                a0, a1, a2 = axes[row]
                a0.imshow(img)
                a0.set_title(f"#{i} {test[i]['defect']}  score {float(scores[i]):.3g}", fontsize=8)
                a1.imshow(gt, cmap="gray", vmin=0, vmax=1)
                a1.set_title("ground truth", fontsize=8)
                a2.imshow(img)
                im = a2.imshow(heat, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
                if gt.any():
                    a2.contour(gt, levels=[0.5], colors="white", linewidths=0.8)
                a2.set_title("anomaly map (GT outline)", fontsize=8)
                for a in (a0, a1, a2):
                    a.set_xticks([])
                    a.set_yticks([])
            fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.8, label="anomaly score")
            fig.suptitle(f"{m} · {cat} · {who}  (heat scale shared over the category's test set)", fontsize=9)
            p = out / "overlays" / f"{m}_{cat}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(p)
            plt.close(fig)
            made.append({"method": m, "category": cat, "path": p})
    return made, notes


# ----------------------------------------------------------------------------- deployment latency

LATENCY_SETTINGS = (("eager_1t", "eager, 1 thread"), ("eager_all", "eager, all threads"),
                    ("onnx_1t", "ONNX Runtime, 1 thread"), ("onnx_all", "ONNX Runtime, all threads"))


def latency_section(out: Path, runs: list[Run], order: dict[str, int]) -> list[str]:
    """The index's "Deployment latency (batch 1)" lines and latency.csv: one row per run that has
    metrics/latency.json with figures (not skipped, not failed)."""
    rows = []
    for run in runs:
        lat = run.latency
        pad = (lat or {}).get("padim")
        if not isinstance(pad, dict):
            continue
        row = {"backbone": lat.get("backbone") or run.backbone, "init": init_label(lat.get("init") or run.init),
               "random_init": init_kind(lat.get("init") or run.init) == "random", "variant": run.variant,
               "dataset": run.dataset, "category": lat.get("category", ""), "image_size": lat.get("image_size")}
        for key, _ in LATENCY_SETTINGS:
            row[f"{key}_ms"], row[f"{key}_p90_ms"] = _num(pad.get(f"{key}_ms")), _num(pad.get(f"{key}_p90_ms"))
        row.update(onnx_mb=_num(pad.get("onnx_mb")), threads_all=pad.get("threads_all"),
                   load_1m=_num(lat.get("load_1m")), source=run.label, rev=run.rev)
        rows.append(row)
    rows.sort(key=lambda x: (order.get(x["backbone"], 10**6), x["backbone"], x["random_init"], x["init"], x["variant"]))
    _write_csv(out / "latency.csv", rows)
    lines = ["## Deployment latency (batch 1)", ""]
    if not rows:
        return lines + [f"_No run has `{LATENCY_FILE}` (the `latency` stage)._", ""]
    show_variant = any(x["variant"] for x in rows)
    header = ["backbone", "init"] + (["variant"] if show_variant else []) + \
        [f"{label} ms" for _, label in LATENCY_SETTINGS] + ["ONNX MB", "all threads", "load", "run"]
    table = []
    for x in rows:
        cells = [x["backbone"], f"{x['init']} {RANDOM_MARK}" if x["random_init"] else x["init"]]
        cells += [x["variant"]] if show_variant else []
        cells += [f"{_f(x[f'{k}_ms'], 1)} ({_f(x[f'{k}_p90_ms'], 1)})" if x[f"{k}_ms"] is not None else ""
                  for k, _ in LATENCY_SETTINGS]
        cells += [_f(x["onnx_mb"], 1), str(x["threads_all"] or ""), _f(x["load_1m"], 1), x["source"]]
        table.append(cells)
    align = ["l", "l"] + (["l"] if show_variant else []) + ["r"] * (len(LATENCY_SETTINGS) + 3) + ["l"]
    lines += [md_table(header, table, align), "",
              "PaDiM as one deployable model (`anomaly_backbones.deploy`): raw uint8 image -> backbone up to the "
              "deepest layer -> anomaly map and image score, one image at a time on the CPU. Median (p90) ms over "
              "`latency.runs` calls; all threads = as many threads as the run's process had CPUs (column `all "
              "threads`); load = the machine's 1-minute load average when the run was timed: above `all threads`, "
              "other work competed for the CPUs (all-threads figures suffer most). Rows from different machines "
              "are not comparable. ONNX MB = model plus weights (mostly PaDiM's inverse "
              f"covariances). Data: [latency.csv](latency.csv). Runs without `{LATENCY_FILE}` are left out.", ""]
    return lines


# ------------------------------------------------------------------------------------------ main

def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


def build_report(root: str | Path = ".", out: str | Path = "reports", n_overlays: int = 3,
                 all_commits: bool = True, exp_show_json=None) -> Path:
    root = Path(root).resolve()
    out = Path(out)
    out = out if out.is_absolute() else root / out
    g = gather(root, all_commits=all_commits, exp_show_json=exp_show_json)
    if out.exists():  # regenerate: no table or figure of an earlier report survives
        for p in ("tables", "overlays"):
            shutil.rmtree(out / p, ignore_errors=True)
        for f in out.glob("*.png"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    reg = registry_info(sorted({r.backbone for r in g.runs}))
    rows = long_rows(g.runs, reg)
    _write_csv(out / "runs.csv", rows)
    foot = random_footnote(rows, reg)

    fam = family_tables(rows, g.common)
    table_links = []
    for name, t in fam.items():
        md = f"# Backbone family: {name}\n\n" + t["md"] + "\n\n"
        md += ("Columns: ROC-AUC are means over categories (`metrics/metrics.json`); ms/image = backbone forward + "
               "method scoring per test image on the CPU (`metrics/speed.json`); peak MB = peak RSS of the "
               "extract/fit processes; cache MB = the feature cache on disk (`extract.dtype`: float16 halves it); "
               "parameters = the backbone as loaded (heads removed where the registry says so). Bold = best in "
               "the column. `run` = experiment name (`dvc exp show`) or workspace.\n")
        if foot and any(r["random_init"] for r in t["csv"]):
            md += "\n" + foot + "\n"
        (out / "tables").mkdir(parents=True, exist_ok=True)
        (out / "tables" / f"{_slug(name)}.md").write_text(md)
        _write_csv(out / "tables" / f"{_slug(name)}.csv", t["csv"])
        n_rnd = sum(r["random_init"] for r in t["csv"])
        n = len(t["csv"])
        table_links.append(f"- **{name}**: [table](tables/{_slug(name)}.md) · [CSV](tables/{_slug(name)}.csv) "
                           f"({n} row{'s' if n != 1 else ''}"
                           + (f", {n_rnd} random init {RANDOM_MARK}" if n_rnd else "") + ")")

    prow = pareto_rows(rows)
    _write_csv(out / "pareto.csv", prow)
    pngs = []
    for ds in sorted({p["dataset"] for p in prow}):
        path = out / f"pareto_{_slug(ds)}.png"
        plot_pareto([p for p in prow if p["dataset"] == ds], path,
                    f"image ROC-AUC vs CPU latency on {ds} ({sum(p['dataset'] == ds for p in prow)} points)")
        pngs.append((ds, path))

    pc_md, pc_rows, covered, missing = per_category_section(root, g.runs, {k: v["order"] for k, v in reg.items()})
    (out / "per_category.md").write_text(pc_md)
    _write_csv(out / "per_category.csv", pc_rows)

    made, notes = overlays(root, out, n_overlays)
    ws_why = [why for name, why in g.skipped if name == "workspace" and "dvc status" in why]
    if made and ws_why:
        notes.insert(0, "the workspace is not up to date (see \"Not included\"): the figures show what "
                        "`data/prepared` and `outputs/` hold now")

    lines = ["# Backbone study report", "",
             f"Generated by `python -m anomaly_backbones report` from `dvc exp show --json"
             f"{' --all-commits' if all_commits else ''}` in `{root}`: "
             f"{sum(r.kind == 'experiment' for r in g.runs)} finished experiment(s)"
             f"{' + the workspace' if any(r.kind == 'workspace' for r in g.runs) else ''}, "
             f"{len(rows)} backbone x method result(s).", ""]
    for ds, common in g.common.items():
        if common:
            lines += [f"All runs on `{ds}` differ from params.yaml at HEAD in: " + ", ".join(f"`{c}`" for c in common)
                      + ".", ""]
    lines += ["The `variant` column shows the params (besides backbone and init) that differ between the runs "
              "on one dataset.", ""]
    lines += ["## Tables per backbone family", ""] + (table_links or ["_No finished runs._"]) + [""]
    lines += ["All results in one file: [runs.csv](runs.csv) (one row per run and method, with the experiment's "
              "commit and baseline).", ""]
    if foot:
        lines += [foot, ""]
    lines += ["## Pareto: quality vs CPU latency", ""]
    for ds, p in pngs:
        lines += [f"![Pareto front on {ds}]({p.name})", ""]
    lines += ["Data: [pareto.csv](pareto.csv) (`pareto_front` marks the non-dominated points: no other run is both "
              "faster and better). Hollow markers = random init.", ""]
    lines += latency_section(out, g.runs, {k: v["order"] for k, v in reg.items()})
    lines += ["## Appendix", "",
              f"- [Per-category ROC-AUC](per_category.md) · [CSV](per_category.csv): "
              f"{len(covered)} of {len(g.runs)} run(s) covered"
              + (f"; missing: {', '.join(missing)}" if missing else "") + ".", ""]
    lines += ["## Anomaly maps (workspace run)", ""]
    if made:
        lines += [f"- [{d['method']} · {d['category']}](overlays/{d['path'].name})" for d in made]
        lines += ["", f"{n_overlays} test image(s) per category: image, ground truth, anomaly map (shared colour "
                  "scale per category, ground truth outlined in white).", ""]
    else:
        lines += ["_None._", ""]
    if notes:
        lines += ["Overlay notes: " + "; ".join(notes) + ".", ""]
    if g.notes:
        lines += ["Notes: " + "; ".join(g.notes) + ".", ""]
    if g.skipped:
        lines += ["## Not included", ""] + [f"- `{name}`: {why}" for name, why in g.skipped] + [""]
    (out / "README.md").write_text("\n".join(lines))
    return out


def main_report(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones report",
                                 description="Gather every finished DVC experiment and the workspace into "
                                             "Markdown/CSV tables per backbone family, a Pareto plot, a per-category "
                                             "appendix and anomaly-map overlays.")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--overlays", type=int, default=3, metavar="N",
                    help="test images per category in the overlay figures (0 = none; default 3)")
    ap.add_argument("--head-only", action="store_true",
                    help="only experiments based on HEAD (default: experiments on all commits)")
    ap.add_argument("--repo", default=".", help="project root (default: the current folder)")
    a = ap.parse_args(argv or [])
    root = Path(a.repo)
    if not (root / "dvc.yaml").exists():
        raise UserError(f"{root.resolve()} has no dvc.yaml: run the report from the project root or pass --repo.")
    out = build_report(root, a.out, a.overlays, all_commits=not a.head_only)
    print(f"report written to {out}/README.md")
    for line in (out / "README.md").read_text().splitlines():
        if line.startswith("- **") or line.startswith("- `"):
            print("  " + line[2:])
