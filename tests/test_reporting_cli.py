"""What the reporting commands read and write without running a pipeline: DVC's `exp show` parsed once
(dvc_client), the sweep's plan, the PR comment body, the GitHub workflow."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from anomaly_backbones.dvc_client import parse_exp_show, workspace_status
from anomaly_backbones.errors import UserError
from anomaly_backbones.pr_comment import MARKER, build_comment, parse_md_table, quality_summary
from anomaly_backbones.sweep import apply_overrides, experiment_states, parse_queue_status, plan_sweep, select_backbones
from conftest import ROOT

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





P = {"seed": 1, "backbone": "resnet18", "init": "random", "layers": "auto", "padim": {"d": "auto"}}
M = {"run": {"backbone": "resnet18", "init": "random:seed=1", "dataset": "synthetic", "seed": 1},
     "padim": {"image_auroc": 0.75, "pixel_auroc": 0.9}}
S = {"padim": {"ms_per_image": 100.0, "fit_s": 1.0, "peak_mb": 900.0}}


def _exp(name, rev, params, metrics, state=None, error=None):
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    return {"revs": [{"rev": rev, "name": name, "error": error, "experiments": None,
                      "data": {"rev": rev, "timestamp": "2026-11-28T18:28:58",
                               "params": {"params.yaml": {"data": params}},
                               "metrics": {"metrics/metrics.json": {"data": metrics},
                                           "metrics/speed.json": {"data": S}} if metrics else {}}}],
            "executor": executor, "name": name}


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




def test_parse_exp_show_reads_every_row_once():
    entries = parse_exp_show(SHOW)
    assert [(e.kind, e.name, e.state) for e in entries] == [
        ("workspace", "workspace", "success"), ("commit", "main", "success"), ("experiment", "done-one", "success"),
        ("experiment", "done-two", "success"), ("experiment", "broke", "failed"),
        ("experiment", "waiting", "queued")]
    ws, main, one = entries[:3]
    assert main.params["backbone"] == "x" and one.baseline == "b" * 40
    # metrics.json (quality) and speed.json (cost) stay two files; the workspace predates speed.json
    assert one.files["metrics/metrics.json"] == M and one.files["metrics/speed.json"] == S
    assert set(ws.files) == {"metrics/metrics.json"}
    # the sweep reads the same entries
    states = {e["name"]: e["state"] for e in experiment_states(entries)}
    assert states == {"done-one": "success", "done-two": "success", "broke": "failed", "waiting": "queued"}
    # DVC 2's dict format gives the same experiments
    dvc2 = {"workspace": {"baseline": {"data": SHOW[0]["data"]}},
            "b" * 40: {"baseline": {"data": SHOW[1]["data"]},
                       "1" * 40: {"data": SHOW[1]["experiments"][0]["revs"][0]["data"] | {"name": "done-one"}},
                       "3" * 40: {"data": {"name": "broke"}, "error": {"msg": "failed"}}}}
    got = [(e.kind, e.name, e.state) for e in parse_exp_show(dvc2)]
    assert got == [("workspace", "workspace", "success"), ("commit", "b" * 7, "success"),
                   ("experiment", "done-one", "success"), ("experiment", "broke", "failed")]
    with pytest.raises(ValueError):
        parse_exp_show("not json output")


def test_workspace_status():
    assert workspace_status({}) == (None, None)
    stale, _ = workspace_status({"aggregate": [{"changed outs": {"metrics/per_category.csv": "modified"}}]})
    assert stale and "aggregate" in stale
    stale, _ = workspace_status({"extract": [{"changed deps": {"params.yaml": {"backbone": "modified"}}}]})
    assert stale
    stale, note = workspace_status({"fit@padim": [{"changed deps": {"src/anomaly_backbones/methods": "modified"}}]})
    assert stale is None and "src/anomaly_backbones/methods" in note


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
    unread = exps + [{"name": "e4", "state": "success", "params": {}}]   # DVC busy: a finished one without params
    with pytest.raises(UserError, match="e4"):
        plan_sweep(base, ["resnet18", "resnet50"], "random", [], unread)
    assert parse_queue_status(QUEUE_STATUS) == {"piano-salt": "failed", "ready-bort": "running",
                                                "bushy-puku": "queued"}


def test_the_workflows_commands_exist_with_the_flags_it_passes():
    """Every command the PR workflow runs, against what runs it: each `make` target is one of the
    Makefile's rules (make -n), each `python -m anomaly_backbones <command> --flag` a flag of that
    command's argparse parser (its --help), and the comment posted is the file pr-comment wrote."""
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "pr-metrics.yml").read_text())
    assert "pull_request" in wf.get("on", wf.get(True))   # YAML 1.1 reads the key `on` as True
    runs = [s["run"].replace("\\\n", " ") for s in wf["jobs"]["metrics"]["steps"] if "run" in s]
    targets = [t for r in runs for t in re.findall(r"\bmake (\w+)", r)]
    assert targets
    for t in targets:
        r = subprocess.run(["make", "-n", t], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and "No rule" not in r.stderr, (t, r.stderr)
    calls = [m for r in runs for m in re.finditer(r"python -m anomaly_backbones ([\w-]+)((?: +--[\w-]+(?: +\S+)?)*)", r)]
    assert calls
    for m in calls:
        helptext = subprocess.run([sys.executable, "-m", "anomaly_backbones", m.group(1), "--help"], cwd=ROOT,
                                  capture_output=True, text=True)
        assert helptext.returncode == 0, helptext.stderr
        for flag in re.findall(r"--[\w-]+", m.group(2)):
            assert flag in helptext.stdout, (m.group(1), flag)
    out = re.search(r"--out (\S+)", " ".join(runs)).group(1)
    assert f"--body-file {out}" in " ".join(runs)




def test_the_top_level_usage_lists_every_commands_flags():
    """`python -m anomaly_backbones --help` against each command's own `--help` (its argparse
    parser): every command and every option it accepts appear in the top-level usage."""
    top = subprocess.run([sys.executable, "-m", "anomaly_backbones", "--help"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    for cmd in ("backbones", "show", "report", "sweep", "pr-comment", "download"):
        own = subprocess.run([sys.executable, "-m", "anomaly_backbones", cmd, "--help"], cwd=ROOT,
                             capture_output=True, text=True)
        assert own.returncode == 0, own.stderr
        line = next((x for x in top.splitlines() if x.strip().startswith(f"{cmd} ")), None)
        assert line is not None, cmd
        synopsis = own.stdout.split("\n\n")[0].replace("python -m anomaly_backbones", "")
        for flag in set(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", synopsis)):
            assert flag in line, (cmd, flag)
