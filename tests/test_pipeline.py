"""End to end: the DVC pipeline in a temporary clone, on tiny generated data and on real data."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomaly_backbones.dvc_client import exp_show
from anomaly_backbones.params import set_params as _set_params
from conftest import MTD_ROOT, ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def sh(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def set_params(clone: Path, **changes):
    _set_params(clone / "params.yaml", **changes)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clean clone with the working tree's pipeline files, committed, and tiny data params."""
    dst = tmp_path_factory.mktemp("clone") / "repo"
    sh(["git", "clone", "-q", str(ROOT), str(dst)], cwd=ROOT)
    for f in ("dvc.yaml", ".gitignore", ".dvc/config", "params.yaml", "stages", "src"):
        src = ROOT / f
        if src.is_dir():
            shutil.copytree(src, dst / f, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dst / f)
    set_params(dst, **{"synthetic.categories": ["disc", "weave"], "synthetic.n_train": 8,
                       "synthetic.n_good_test": 4, "synthetic.n_defect_test": 3,
                       "latency.runs": 0})   # the stage runs, its timing loop is tests/test_deploy.py's

    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny", "--allow-empty"], cwd=dst)
    return dst


@pytest.fixture(autouse=True)
def committed_params(request):
    """`dvc exp run -S` leaves its params in the workspace: each test starts from the clone's
    committed (tiny) params, so one test's experiment (the magnetic-tile anchor's 761 training
    images) never becomes the next test's data."""
    yield
    if "clone" in request.fixturenames:
        sh(["git", "checkout", "--", "params.yaml"], cwd=request.getfixturevalue("clone"))


def test_repro_writes_metrics_and_second_repro_is_a_noop(clone):
    sh(["dvc", "repro"], cwd=clone)
    m = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert set(m["padim"]) == {"image_auroc", "image_auroc_lo", "image_auroc_hi", "image_ap", "image_f1max",
                               "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}
    assert m["padim"]["image_auroc_lo"] <= m["padim"]["image_auroc"] <= m["padim"]["image_auroc_hi"]
    assert all(0 < v <= 1 for v in m["padim"].values())
    speed = json.loads((clone / "metrics" / "speed.json").read_text())
    assert set(speed["padim"]) == {"ms_per_image", "fit_s", "peak_mb"} and speed["padim"]["fit_s"] > 0
    assert speed["host"]["cpus"] >= 1 and speed["host"]["device"] == "cpu" and speed["host"]["load_1m"] >= 0
    assert 0.5 < m["padim"]["image_auroc"] <= 1.0 and 0.5 < m["padim"]["pixel_auroc"] <= 1.0
    assert m["run"]["backbone"] == "tf_efficientnet_lite0" and m["run"]["init"].startswith("imagenet")
    cache = sum(f.stat().st_size for f in (clone / "data" / "features").rglob("*.npy")) / 2**20
    assert m["run"]["feature_dtype"] == "float32" and abs(m["run"]["cache_mb"] - cache) < 0.1
    rows = (clone / "metrics" / "per_category.csv").read_text().splitlines()
    assert rows[0].startswith("method,category") and len(rows) == 3
    assert sorted(p.name for p in (clone / "metrics" / "roc").iterdir()) == ["padim_disc.csv", "padim_weave.csv"]
    again = sh(["dvc", "repro"], cwd=clone)
    assert "Running stage" not in again.stdout, again.stdout
    assert "Data and pipelines are up to date" in again.stdout


def test_changing_a_method_param_reuses_the_feature_cache(clone):
    """padim.d=20 as an experiment: only fit@padim (and aggregate) run, the metrics change, and
    DVC's own readers (metrics diff, exp show) report the file's new values and the param."""
    sh(["dvc", "repro"], cwd=clone)
    before = json.loads((clone / "metrics" / "metrics.json").read_text())
    r = sh(["dvc", "exp", "run", "-S", "padim.d=20"], cwd=clone)
    assert "Running stage 'extract'" not in r.stdout and "Running stage 'prepare'" not in r.stdout
    assert "Running stage 'fit@padim'" in r.stdout
    after = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert after["padim"]["pixel_auroc"] != before["padim"]["pixel_auroc"]   # another d, another model
    diff = json.loads(sh(["dvc", "metrics", "diff", "HEAD", "--json"], cwd=clone).stdout)
    assert diff["metrics/metrics.json"]["padim.pixel_auroc"]["new"] == after["padim"]["pixel_auroc"]
    exps = [e for e in exp_show(clone, all_commits=False) if e.kind == "experiment"]
    ran = [e for e in exps if e.params.get("padim", {}).get("d") == 20]
    assert ran and ran[0].files["metrics/metrics.json"]["padim"] == after["padim"]


def test_forced_reruns_give_bit_identical_metrics_and_leave_the_cache_intact(clone):
    """Determinism: re-running every stage from scratch reproduces metrics/metrics.json byte for byte
    (timings live in metrics/speed.json, which may differ). New outputs are committed by link (they
    share the cache object's inode: no copy of the feature cache), and re-running every stage never
    writes into a cached object: each object in .dvc/cache still hashes to its name afterwards."""
    import hashlib

    sh(["dvc", "repro"], cwd=clone)
    before = (clone / "metrics" / "metrics.json").read_bytes()
    shutil.rmtree(clone / ".dvc" / "cache")  # every output a new object again, as for a new backbone
    sh(["dvc", "repro", "--force"], cwd=clone)
    assert (clone / "metrics" / "metrics.json").read_bytes() == before
    cache = clone / ".dvc" / "cache" / "files" / "md5"
    objects = {f.stat().st_ino: f for f in cache.rglob("*") if f.is_file() and not f.name.endswith(".dir")}
    for out in ("data/prepared", "data/features", "outputs/padim"):
        for f in (clone / out).rglob("*"):
            assert not f.is_file() or f.stat().st_ino in objects, f"{f} is a copy, not a link into the cache"
    sh(["dvc", "repro", "--force"], cwd=clone)
    for f in objects.values():
        assert hashlib.md5(f.read_bytes()).hexdigest() == f.parent.name + f.name, f"cache object {f} changed"
    assert (clone / "metrics" / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("stage,changes,expect", [
    ("stages/03_extract.py", {"backbone": "resnet19"}, "did you mean"),
    ("stages/03_extract.py", {"layers": ["blocks.1", "blocks.9"]}, "blocks.9"),
    ("stages/02_prepare.py", {"data.crop": 300}, "data.crop"),
    ("stages/02_prepare.py", {"data.root": "/nonexistent/folder"}, "/nonexistent/folder"),
    ("stages/04_fit.py", {"padim.d": 100000}, "padim.d"),
    ("stages/02_prepare.py", {"seed": "x"}, "seed"),
    ("stages/02_prepare.py", {"padim.d": 0}, "padim.d"),
    ("stages/02_prepare.py", {"methods": ["padim", "fastflow"]}, "unknown method 'fastflow'"),
    ("stages/03_extract.py", {"init": "/nonexistent/weights.pth"}, "weights.pth"),
    ("stages/03_extract.py", {"extract.batch_size": 10**7}, "extract.batch_size"),  # the memory guard
])
def test_user_errors_are_one_clear_line_without_traceback(clone, tmp_path, stage, changes, expect):
    sh(["dvc", "repro"], cwd=clone)
    work = tmp_path / "w"
    shutil.copytree(clone, work, symlinks=True, ignore=shutil.ignore_patterns(".dvc"))
    set_params(work, **changes)
    args = [sys.executable, stage] + (["padim"] if "fit" in stage else [])
    r = sh(args, cwd=work, check=False)
    assert r.returncode == 2, r.stderr
    assert expect.lower() in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr


def test_fit_stage_checks_memory_before_fitting(clone, tmp_path, monkeypatch, capsys):
    """Short of memory, fit@<method> stops first, before any work, naming the param."""
    import runpy

    import anomaly_backbones.resources as resources

    sh(["dvc", "repro"], cwd=clone)
    work = tmp_path / "w"
    shutil.copytree(clone, work, symlinks=True, ignore=shutil.ignore_patterns(".dvc"))
    monkeypatch.chdir(work)
    monkeypatch.setattr(resources, "available_bytes", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["stages/04_fit.py", "padim"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path("stages/04_fit.py", run_name="__main__")
    assert e.value.code == 2
    assert "`data.crop`" in capsys.readouterr().err


@pytest.mark.skipif(not MTD_ROOT.exists(), reason="magnetic-tile dataset not present")
def test_magnetic_tile_matches_the_anomalib_anchor(clone):
    """anomalib 2.7 PadimModel, same split and weights, blocks.1/2/4, d=100: 0.918 / 0.770."""
    r = sh(["dvc", "exp", "run", "-S", "data.dataset=mtd", "-S", f"data.root={MTD_ROOT}", "-S", "padim.d=100",
            "-S", "layers=[blocks.1,blocks.2,blocks.4]"], cwd=clone)
    m = json.loads((clone / "metrics" / "metrics.json").read_text())["padim"]
    assert abs(m["image_auroc"] - 0.918) <= 0.01, r.stdout
    assert abs(m["pixel_auroc"] - 0.770) <= 0.01, r.stdout


@pytest.mark.parametrize("stage,out,written", [
    ("prepare", "data/prepared", "*.partial/*.npy"),
    ("extract", "data/features", "*/train/*.npy"),
    ("fit@padim", "outputs/padim", "*.npz"),
])
def test_killed_mid_write_leaves_nothing_trusted_and_rerun_matches(clone, stage, out, written):
    """SIGKILL the pipeline while a stage writes its outputs: DVC records nothing for the
    stage, and the next `dvc repro` completes with the same ROC-AUC as an undisturbed run."""
    import signal
    import time

    sh(["dvc", "repro"], cwd=clone)
    reference = json.loads((clone / "metrics" / "metrics.json").read_text())
    shutil.rmtree(clone / out)
    proc = subprocess.Popen(["dvc", "repro", "--force", "--downstream", stage], cwd=clone, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((clone / out).glob(written)):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    status = sh(["dvc", "status"], cwd=clone)
    assert stage in status.stdout, status.stdout
    sh(["dvc", "repro"], cwd=clone)
    after = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert after["padim"]["image_auroc"] == reference["padim"]["image_auroc"]
    assert after["padim"]["pixel_auroc"] == reference["padim"]["pixel_auroc"]


def test_a_train_stage_runs_through_dvc_and_keeps_its_curves(clone):
    """Every stage kind through DVC: `dvc exp run` with a train@ method (one epoch, the default
    batch_size of 200 on 8 training images: the guard sizes the batch that exists) on the
    embedded data lands its metrics in metrics.json and its training curves in DVC's cache, so
    `dvc plots show` draws them for the experiment, and the workspace is clean afterwards."""
    sh(["dvc", "repro"], cwd=clone)
    before = json.loads((clone / "metrics" / "metrics.json").read_text())
    r = sh(["dvc", "exp", "run", "-n", "svdd1", "-S", "train_methods=[deep_svdd]", "-S", "deep_svdd.epochs=1"],
           cwd=clone)
    assert "Running stage 'train@deep_svdd'" in r.stdout and "Running stage 'extract'" not in r.stdout
    m = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert 0 <= m["deep_svdd"]["image_auroc"] <= 1 and m["deep_svdd"]["pixel_auroc"] is None
    assert m["padim"] == before["padim"]
    curves = clone / "metrics" / "train" / "deep_svdd"
    losses = json.loads((curves / "metrics.json").read_text())
    assert all(losses[c]["loss"] >= 0 for c in ("disc", "weave")) and losses["step"] == 1
    tsv = sorted((curves / "plots" / "metrics").rglob("*.tsv"))
    assert [p.relative_to(curves / "plots" / "metrics").as_posix() for p in tsv] == ["disc/loss.tsv", "weave/loss.tsv"]
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["train@deep_svdd"]
    cached = {o["path"] for o in lock["outs"] if "md5" in o}
    assert {"metrics/train/deep_svdd/metrics.json", "metrics/train/deep_svdd/plots/metrics"} <= cached
    shutil.rmtree(curves)   # gone from the workspace: DVC still has them for the experiment
    shown = json.loads(sh(["dvc", "plots", "show", "--json", "--split"], cwd=clone).stdout)
    plots = {k: v for k, v in shown.get("data", shown).items() if "train/deep_svdd/plots/metrics" in k}
    assert plots and all('"loss"' in json.dumps(v) for v in plots.values()), shown
    shown = sh(["dvc", "exp", "show", "--json"], cwd=clone).stdout
    assert "svdd1" in shown and "deep_svdd" in shown
    sh(["dvc", "checkout"], cwd=clone)
    assert "train@deep_svdd" not in sh(["dvc", "status"], cwd=clone).stdout
