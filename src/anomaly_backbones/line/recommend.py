"""`python -m anomaly_backbones recommend`: which configuration to deploy, and is it really better
than the runner-up?

Over the finished runs of ONE dataset (report.runs.gather: HEAD's committed run, experiments, the
workspace), every run x method is a candidate. Budgets drop candidates (`--max-ms` CPU or named-device
ms/image as the run timed it, `--max-mb` trunk weights in float32 MB, `--max-peak-mb` the stages' peak
memory); the rest are ranked by the metric (mean over categories; image ROC-AUC by default). The
best is then compared with every other candidate by DeLong's paired test on the same test images
(metrics.paired; per category and pooled over categories), and the runner-up's verdict is said
plainly. The test is always on image ROC-AUC (DeLong is a test of ROC-AUC): for another ranking
metric it still says whether the two detect defective images distinguishably.

recommend(cands, load) does the work on Candidate objects and a score loader (tests pass their
own); main_recommend wires gather and line.scores.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..dvc_client import require_project
from ..errors import UserError
from ..metrics.paired import delong_paired, pooled, verdict

METRICS = {"image_auroc": "image ROC-AUC", "pixel_aupro": "pixel AUPRO", "image_auroc_lo": "image ROC-AUC lower bound",
           "threshold_image_f1": "image F1 at the calibrated threshold", "pixel_auroc": "pixel ROC-AUC"}


@dataclass
class Candidate:
    """One run x method. value: the ranking metric; costs may be None (not recorded)."""
    name: str                 # "<run label>:<method>"
    run: str                  # run label
    rev: str
    method: str
    backbone: str
    init: str
    dataset: str
    value: float | None
    ms: float | None = None
    device: str = "cpu"
    model_mb: float | None = None
    peak_mb: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "run", "rev", "method", "backbone", "init", "dataset",
                                              "value", "ms", "device", "model_mb", "peak_mb")}


Loader = Callable[[Candidate], "dict[str, tuple[list, np.ndarray]] | None"]


def budget_reason(c: Candidate, max_ms=None, device="cpu", max_mb=None, max_peak_mb=None) -> str | None:
    """Why c is outside the budgets (None: inside). An unrecorded cost is outside a budget on it."""
    if c.value is None:
        return "metric not recorded"
    if max_ms is not None:
        if c.device.split(":")[0] != device.split(":")[0]:
            return f"timed on {c.device}, budget is for {device}"
        if c.ms is None or c.ms > max_ms:
            return f"{c.ms} ms/image > {max_ms}" if c.ms is not None else "no ms/image recorded"
    if max_mb is not None and (c.model_mb is None or c.model_mb > max_mb):
        return f"model {c.model_mb} MB > {max_mb}" if c.model_mb is not None else "model size unknown"
    if max_peak_mb is not None and (c.peak_mb is None or c.peak_mb > max_peak_mb):
        return f"peak {c.peak_mb} MB > {max_peak_mb}" if c.peak_mb is not None else "no peak memory recorded"
    return None


def paired_test(a: dict, b: dict) -> dict:
    """DeLong paired test of two runs' {category: (rows, scores)}: per category and pooled.
    Raises UserError where the test images differ (another split)."""
    cats = sorted(set(a) & set(b))
    if not cats or set(a) != set(b):
        raise UserError(f"the two runs have other categories ({sorted(a)} vs {sorted(b)}): not the same test set")
    per = {}
    for c in cats:
        (rows_a, sa), (rows_b, sb) = a[c], b[c]
        if rows_a != rows_b:
            raise UserError(f"category {c}: the two runs' test images differ (another split or data.root): "
                            f"a paired test needs the same images")
        per[c] = delong_paired(np.array([lab for _, lab in rows_a]), sa, sb)
    return {"per_category": {c: r.as_dict() for c, r in per.items()}, "pooled": pooled(list(per.values())).as_dict(),
            "_pooled": pooled(list(per.values()))}


def recommend(cands: list[Candidate], load: Loader, metric: str = "image_auroc", max_ms=None, device="cpu",
              max_mb=None, max_peak_mb=None) -> dict:
    """The answer as a JSON-able dict: best, runner_up, comparisons (best vs each other kept
    candidate, runner-up first), excluded (name -> why), and `answer`, one plain sentence."""
    excluded, kept = {}, []
    for c in cands:
        why = budget_reason(c, max_ms, device, max_mb, max_peak_mb)
        if why:
            excluded[c.name] = why
        else:
            kept.append(c)
    kept.sort(key=lambda c: (-c.value, c.ms if c.ms is not None else float("inf"), c.name))
    out = {"metric": metric, "metric_name": METRICS.get(metric, metric),
           "budgets": {"max_ms": max_ms, "device": device, "max_mb": max_mb, "max_peak_mb": max_peak_mb},
           "dataset": cands[0].dataset if cands else None, "candidates": [c.as_dict() for c in kept],
           "excluded": excluded, "best": None, "runner_up": None, "comparisons": [], "answer": ""}
    if not kept:
        out["answer"] = "no configuration fits the budgets" if cands else "no finished runs"
        return out
    best = kept[0]
    out["best"] = best.as_dict()
    # the verdict is DeLong's on image ROC-AUC whatever the ranking: say so where they differ, or a
    # verdict could read as contradicting the ranking (the AU-PRO's best "worse" by image ROC-AUC)
    tested = "" if metric in ("image_auroc", "image_auroc_lo") else \
        f"by image ROC-AUC (DeLong; {out['metric_name']} has no paired test here): "
    scores_best = load(best)
    for c in kept[1:]:
        entry = {"other": c.name, "test": None, "verdict": None}
        other = load(c) if scores_best is not None else None
        if scores_best is None or other is None:
            entry["verdict"] = "per-image scores not readable at the run's revision (`dvc exp pull` / `dvc pull`)"
        else:
            try:
                t = paired_test(scores_best, other)
                entry["verdict"] = tested + verdict(t.pop("_pooled"), best.name, c.name)
                entry["test"] = t
            except UserError as e:
                entry["verdict"] = str(e)
        out["comparisons"].append(entry)
    if len(kept) > 1:
        out["runner_up"] = kept[1].as_dict()
        first = out["comparisons"][0]
        out["answer"] = (f"deploy {best.name} ({out['metric_name']} {best.value:.4f}); runner-up {kept[1].name} "
                         f"({kept[1].value:.4f}): {first['verdict']}")
    else:
        out["answer"] = f"deploy {best.name} ({out['metric_name']} {best.value:.4f}); no runner-up within the budgets"
    return out


# ------------------------------------------------------------------------------- runs -> candidates

def candidates_from_runs(runs, metric: str) -> list[Candidate]:
    """Every run x method of the (already filtered) runs."""
    from ..report.fmt import num
    from ..report.tables import param_counts

    out = []
    for r in runs:
        trunk, _ = param_counts(r.backbone, tuple(r.layers))
        for m in r.methods:
            fig = r.metrics[m]
            out.append(Candidate(name=f"{r.label}:{m}", run=r.label, rev=r.rev, method=m, backbone=r.backbone,
                                 init=r.init, dataset=r.dataset, value=num(fig.get(metric)), ms=num(fig.get("ms_per_image")),
                                 device=r.device, model_mb=None if trunk is None else round(trunk * 4 / 1e6, 1),
                                 peak_mb=num(fig.get("peak_mb"))))
    return out


def choose_dataset(runs, dataset: str | None) -> str:
    found = sorted({r.dataset for r in runs})
    if dataset is not None:
        if dataset not in found:
            raise UserError(f"--dataset {dataset}: no finished run on it (runs are on: {', '.join(found) or 'none'})")
        return dataset
    if len(found) > 1:
        counts = ", ".join(f"{d} ({sum(r.dataset == d for r in runs)} runs)" for d in found)
        raise UserError(f"runs on several datasets ({counts}): runs are compared within one; pass --dataset NAME")
    if not found:
        raise UserError("no finished runs: `dvc repro` or `dvc exp run` make one")
    return found[0]


def dvc_loader(root: Path) -> Loader:
    from .scores import run_categories, run_scores

    cache: dict = {}

    def load(c: Candidate):
        key = (c.rev, c.method)
        if key not in cache:
            cats = run_categories(root, c.rev)
            cache[key] = None if cats is None else run_scores(root, c.rev, c.method, cats)
        return cache[key]
    return load


def recommendation_for(root: Path, runs, dataset: str, metric: str = "image_auroc") -> dict:
    """The report's recommendation for one dataset (no budgets)."""
    sel = [r for r in runs if r.dataset == dataset]
    return recommend(candidates_from_runs(sel, metric), dvc_loader(Path(root)), metric)


def text_lines(res: dict) -> list[str]:
    """The answer for a terminal or the report (Markdown-friendly lines)."""
    lines = [f"Recommendation on `{res['dataset']}` by {res['metric_name']}"
             + "".join(f", {k.replace('_', '-')} {v}" for k, v in res["budgets"].items()
                       if v is not None and k != "device") + ":", "", f"**{res['answer']}**", ""]
    for comp in res["comparisons"]:
        lines.append(f"- vs `{comp['other']}`: {comp['verdict']}")
        t = comp["test"]
        if t and len(t["per_category"]) > 1:
            for cat, r in t["per_category"].items():
                p = "n/a" if r["p"] is None else f"{r['p']:.3g}"
                lines.append(f"  - {cat}: {r['auc_a']:.4f} vs {r['auc_b']:.4f}, diff {r['diff']:+.4f}, p {p}"
                             + ("" if r["significant"] else " (not distinguishable)"))
    if res["excluded"]:
        lines += ["", "Outside the budgets: " + "; ".join(f"`{k}` ({v})" for k, v in res["excluded"].items())]
    lines += ["", "Paired test: DeLong et al. 1988 on image ROC-AUC, the same test images for both; pooled = "
              "the mean over categories (independent test sets); significant at p < 0.05."]
    return lines


def parser_recommend() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones recommend",
                                 description="The configuration to deploy among the finished runs of one dataset, "
                                             "the runner-up, and DeLong's paired test between them.")
    ap.add_argument("--dataset", help="compare the runs on this dataset (required when runs cover several)")
    ap.add_argument("--metric", default="image_auroc", choices=sorted(METRICS), help="maximized (default image_auroc)")
    ap.add_argument("--max-ms", type=float, help="budget: ms per image as timed by the run, on --device")
    ap.add_argument("--device", default="cpu", help="the device --max-ms is for (default cpu)")
    ap.add_argument("--max-mb", type=float, help="budget: trunk weights in MB (float32)")
    ap.add_argument("--max-peak-mb", type=float, help="budget: the stages' peak memory in MB")
    ap.add_argument("--json", metavar="FILE", help="also write the answer as JSON to FILE ('-' = stdout only JSON)")
    ap.add_argument("-A", "--all-commits", action="store_true", help="experiments on every commit")
    ap.add_argument("--repo", default=".", help="project root (default: the current folder)")
    return ap


def main_recommend(argv: list[str] | None = None) -> None:
    from ..report.runs import gather

    a = parser_recommend().parse_args(argv or [])
    root = Path(a.repo)
    require_project(root)
    g = gather(root, all_commits=a.all_commits)
    ds = choose_dataset(g.runs, a.dataset)
    sel = [r for r in g.runs if r.dataset == ds]
    res = recommend(candidates_from_runs(sel, a.metric), dvc_loader(root.resolve()), a.metric, a.max_ms, a.device,
                    a.max_mb, a.max_peak_mb)
    if a.json == "-":
        sys.stdout.write(json.dumps(res, indent=2) + "\n")
        return
    if a.json:
        from ..files import write_json

        write_json(Path(a.json), res)
    print("\n".join(text_lines(res)))
