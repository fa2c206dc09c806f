"""recommend on hand-made candidates and per-image scores: budgets, ranking, the paired verdict, a
split mismatch, the JSON shape; the PR comment colours only significant changes; show --dataset."""
import json

import numpy as np
import pytest

from anomaly_backbones.errors import UserError
from anomaly_backbones.line.recommend import Candidate, paired_test, recommend, text_lines
from anomaly_backbones.metrics.paired import delong_paired
from anomaly_backbones.pr_comment import build_comment

RNG = np.random.default_rng(7)
Y = np.r_[np.ones(60), np.zeros(60)].astype(int)
BASE = RNG.normal(size=120) + 1.0 * Y
ROWS = [(f"img{i}.png", int(t)) for i, t in enumerate(Y)]
SCORES = {"strong": BASE + 3 * Y, "a": BASE + 0.05 * RNG.normal(size=120), "b": BASE + 0.05 * RNG.normal(size=120)}


def cand(name, value, ms=10.0, model_mb=5.0):
    return Candidate(name=name, run=name, rev=name, method="padim", backbone=name, init="imagenet",
                     dataset="mtd", value=value, ms=ms, model_mb=model_mb, peak_mb=100.0)


def load(c):
    return {"cat": (ROWS, SCORES[c.name].astype(np.float32))}


def test_best_runner_up_and_budgets():
    cands = [cand("a", 0.80), cand("b", 0.79), cand("strong", 0.99, ms=50.0)]
    res = recommend(cands, load)
    assert res["best"]["name"] == "strong" and res["runner_up"]["name"] == "a"
    assert "significantly better" in res["answer"]
    t = res["comparisons"][0]["test"]["pooled"]
    ref = delong_paired(Y, SCORES["strong"], SCORES["a"])
    assert t["p"] == pytest.approx(ref.p) and t["diff"] == pytest.approx(ref.diff)
    json.dumps(res)                                           # JSON-able as it is
    res = recommend(cands, load, max_ms=20.0)                 # the strong one is too slow
    assert res["excluded"] == {"strong": "50.0 ms/image > 20.0"} and res["best"]["name"] == "a"
    assert "NOT distinguishable" in res["answer"]             # two near-identical scorers
    assert any("NOT distinguishable" in line for line in text_lines(res))
    assert recommend(cands, load, max_mb=1.0)["answer"] == "no configuration fits the budgets"
    other = cand("a", 0.8)
    other.device = "cuda:0"
    assert "timed on cuda:0" in recommend([other], load, max_ms=100.0)["excluded"]["a"]


def test_paired_test_refuses_another_split():
    a = {"cat": (ROWS, SCORES["a"])}
    b = {"cat": (ROWS[::-1], SCORES["b"])}
    with pytest.raises(UserError, match="test images differ"):
        paired_test(a, b)


def test_pr_comment_marks_only_significant_changes():
    md = ("| Path | Metric | main | workspace | Change |\n|---|---|---|---|---|\n"
          "| metrics/metrics.json | padim.image_auroc | 0.97801 | 0.97106 | -0.00695 |\n"
          "| metrics/metrics.json | padim.pixel_auroc | 0.99 | 0.98 | -0.01 |\n"
          "| metrics/metrics.json | spade.image_auroc | 0.90 | 0.80 | -0.1 |\n")
    paired = {"padim": {"diff": 0.00695, "lo": -0.018, "hi": 0.032, "p": 0.6, "significant": False},
              "spade": {"diff": 0.1, "lo": 0.05, "hi": 0.15, "p": 0.001, "significant": True}}
    body = build_comment(md, "", paired=paired)
    line = next(x for x in body.splitlines() if "padim.image_auroc" in x and x.startswith("- "))
    assert line.startswith("- ⚪") and "not significant" in line and "[-0.0320, +0.0180]" in line
    assert next(x for x in body.splitlines() if "spade.image_auroc" in x and x.startswith("- ")).startswith("- 🔴")
    assert "no paired test" in next(x for x in body.splitlines() if "padim.pixel_auroc" in x and x.startswith("- "))
    plain = build_comment(md, "")                             # no tests: coloured by sign, as before
    assert next(x for x in plain.splitlines() if "padim.image_auroc" in x and x.startswith("- ")).startswith("- 🔴")


def test_show_groups_and_filters_by_dataset():
    from anomaly_backbones.report.runs import Run
    from anomaly_backbones.report.show import dataset_blocks

    def run(label, ds):
        return Run(label=label, rev=label, kind="experiment", baseline=None, timestamp=None, params={},
                   metrics={"run": {"backbone": "tf_efficientnet_lite0", "init": "imagenet", "dataset": ds},
                            "padim": {"image_auroc": 0.9, "pixel_auroc": 0.9, "pixel_aupro": 0.8}})
    runs = [run("syn1", "synthetic"), run("tile", "mtd"), run("syn2", "synthetic")]
    lines = dataset_blocks(runs, 120)
    assert lines[0] == "dataset: synthetic" and "dataset: mtd" in lines
    assert lines.index("dataset: mtd") > max(i for i, x in enumerate(lines) if x.startswith("syn"))
    only = dataset_blocks(runs, 120, "mtd")
    assert only[0] == "dataset: mtd" and not any(x.startswith("syn") for x in only)
    with pytest.raises(UserError, match="no finished run on it"):
        dataset_blocks(runs, 120, "visa")


def test_verdict_names_image_auroc_when_ranking_by_another_metric():
    """Ranked by pixel AU-PRO, the best may be worse by image ROC-AUC: the verdict (DeLong's, on
    image ROC-AUC) must say what it tested, never read as contradicting the ranking."""
    cands = [cand("a", 0.90), cand("strong", 0.80)]           # AU-PRO values: "a" ranks first
    res = recommend(cands, load, metric="pixel_aupro")
    assert res["best"]["name"] == "a"
    v = res["comparisons"][0]["verdict"]
    assert v.startswith("by image ROC-AUC (DeLong; pixel AUPRO has no paired test here): ")
    assert "strong is significantly better than a" in v and v in res["answer"]
    plain = recommend([cand("a", 0.80), cand("strong", 0.99)], load)["comparisons"][0]["verdict"]
    assert plain.startswith("strong is significantly better")     # ranked by image ROC-AUC: no prefix
