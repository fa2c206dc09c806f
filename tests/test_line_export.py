"""End to end on a tiny pipeline run with a calibrated threshold: export each exportable method, then
check the exported model's ONNX Runtime (and, where the `openvino` package is installed, OpenVINO)
outputs against the pipeline's outputs/<method> (computed here from the files, not from export's own
check), the model card, predict's CSV and its bad inputs."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_backbones.params import set_params
from conftest import ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
METHODS = ["padim", "patchcore", "dn2", "spade", "ocsvm", "svdd"]
IMAGE_LEVEL = ("dn2", "ocsvm", "svdd")   # no map: the map output is the score everywhere


def sh(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The pipeline's stages (not DVC) on one tiny synthetic category, threshold.holdout 0.25."""
    dst = tmp_path_factory.mktemp("line") / "repo"
    dst.mkdir()
    for f in ("params.yaml", "stages"):
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, dst / f)
    (dst / "dvc.yaml").write_text("stages: {}\n")
    set_params(dst / "params.yaml", **{"synthetic.categories": ["disc"], "synthetic.n_train": 12,
                                       "synthetic.n_good_test": 4, "synthetic.n_defect_test": 4,
                                       "data.resize": 72, "data.crop": 64, "methods": METHODS,
                                       "threshold.holdout": 0.25, "patchcore.coreset_ratio": 0.25})
    for stage in ("01_generate", "02_prepare", "03_extract"):
        sh([sys.executable, f"stages/{stage}.py"], dst)
    for m in METHODS:
        sh([sys.executable, "stages/04_fit.py", m], dst)
    return dst


def openvino_or_none():
    try:
        import openvino
    except ImportError:
        return None
    return openvino


def test_export_reproduces_the_pipeline_on_onnx_runtime(run):
    """Every exportable method, on ONNX Runtime and (with --format all, where installed) OpenVINO's
    CPU plugin: the scores of outputs/<method> within 1e-4 relative, the maps within 1e-3 of the
    largest map value (they are float16 there), the decision = score > the card's threshold."""
    import onnxruntime as ort

    ov = openvino_or_none()
    r = sh([sys.executable, "-m", "anomaly_backbones", "export", "--repo", str(run)]
           + (["--format", "all"] if ov else []), run)
    images = np.load(run / "data/prepared/disc/test_images.npy")
    assert r.stdout.count(f"vs pipeline on {len(images)} test images") == len(METHODS), r.stdout
    for m in METHODS:
        folder = run / "models" / m / "disc"
        card = json.loads((folder / "model.json").read_text())
        res = json.loads((run / "outputs" / m / "results.json").read_text())["categories"]["disc"]
        assert card["threshold"] == res["threshold"] and card["threshold"]["image"]["n_held"] == 3
        assert card["backbone"] == "tf_efficientnet_lite0" and card["method"] == m and card["card_version"] == 1
        assert card["check_vs_pipeline"]["ok"] and (not ov or card["check_vs_pipeline_openvino"]["ok"])
        z = np.load(run / "outputs" / m / "disc.npz")
        sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in sess.get_outputs()] == ["map", "score", "decision"]
        runners = {"onnxruntime": lambda x: sess.run(None, {"image": x})}
        if ov:
            compiled = ov.Core().compile_model(str(folder / "openvino" / "model.xml"), "CPU",
                                               {"INFERENCE_PRECISION_HINT": "f32"})
            runners["openvino"] = lambda x, c=compiled: [c({"image": x})[c.output(k)] for k in range(3)]
        for runtime, run_model in runners.items():
            for i, image in enumerate(images):
                amap, score, decision = run_model(image.transpose(2, 0, 1)[None].copy())
                want = float(z["scores"][i])
                assert abs(float(score[0]) - want) <= 1e-4 * abs(want), (m, runtime, i, float(score[0]), want)
                assert bool(decision[0]) == (float(score[0]) > card["threshold"]["image"]["threshold"])
                if m in IMAGE_LEVEL:
                    assert "maps" not in z.files and np.all(amap[0] == score[0]), (m, runtime)
                else:
                    wmap = z["maps"][i].astype(np.float32)
                    assert np.abs(amap[0] - wmap).max() <= 1e-3 * np.abs(z["maps"].astype(np.float32)).max()


def test_export_without_threshold_says_how(run, tmp_path):
    other = tmp_path / "nothr"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("models"))
    res = json.loads((other / "outputs/padim/results.json").read_text())
    del res["categories"]["disc"]["threshold"]
    (other / "outputs/padim/results.json").write_text(json.dumps(res))
    r = sh([sys.executable, "-m", "anomaly_backbones", "export", "--method", "padim", "--repo", str(other)], other,
           check=False)
    assert r.returncode != 0 and "threshold.holdout=0.1" in r.stderr and "Traceback" not in r.stderr
    assert not (other / "models" / "padim" / "disc").exists()
    # a method without a deployable model: one line saying why, before any work
    r = sh([sys.executable, "-m", "anomaly_backbones", "export", "--method", "cflow", "--repo", str(other)], other,
           check=False)
    assert r.returncode != 0 and "whole test set" in r.stderr and "Traceback" not in r.stderr
    assert not (other / "models" / "cflow").exists()


def test_predict_csv_overlays_and_bad_inputs(run, tmp_path):
    from PIL import Image

    if not (run / "models/padim/disc/model.json").exists():
        sh([sys.executable, "-m", "anomaly_backbones", "export", "--method", "padim", "--repo", str(run)], run)
    imgs = tmp_path / "imgs"
    shutil.copytree(run / "data/synthetic/disc/test", imgs)
    gray = sorted(imgs.rglob("*.png"))[0]
    Image.open(gray).convert("L").save(imgs / "gray.png")
    (imgs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    r = sh([sys.executable, "-m", "anomaly_backbones", "predict", str(run / "models/padim/disc"), str(imgs),
            "--out", str(out), "--batch", "3"], run)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    n = len([p for p in imgs.rglob("*.png")])
    assert len(rows) == n and r.stdout.strip().splitlines()[-1].startswith(f"{n} images: ")
    bad = [x for x in rows if x["status"] == "unreadable"]
    assert [Path(x["file"]).name for x in bad] == ["broken.png"] and r.stderr.count("unreadable:") == 1
    assert "Traceback" not in r.stderr
    g = next(x for x in rows if x["file"].endswith("gray.png"))
    assert g["status"] == "ok" and g["decision"] in ("good", "defect")
    flagged = [x for x in rows if x["decision"] == "defect"]
    assert len(list((out / "overlays").glob("*.png"))) == len(flagged) > 0
    # predict's score for a test image = the pipeline's (same decoding as prepare, same model)
    samples = list(csv.DictReader(open(run / "data/prepared/disc/samples.csv")))
    test = [s for s in samples if s["split"] == "test"]
    z = np.load(run / "outputs/padim/disc.npz")["scores"]
    byname = {Path(x["file"]).parts[-2:]: float(x["score"]) for x in rows if x["status"] == "ok"}   # (defect, name)
    for i, s in enumerate(test):
        assert byname[Path(s["file"]).parts[-2:]] == pytest.approx(float(z[i]), rel=1e-4)
    # a model card from another version: one line, nothing written
    card = json.loads((run / "models/padim/disc/model.json").read_text())
    old = tmp_path / "old"
    shutil.copytree(run / "models/padim/disc", old)
    (old / "model.json").write_text(json.dumps({**card, "card_version": 0}))
    r = sh([sys.executable, "-m", "anomaly_backbones", "predict", str(old), str(imgs), "--out", str(tmp_path / "o2")],
           run, check=False)
    assert r.returncode != 0 and "another version" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2" / "predictions.csv").exists()


def test_exported_models_are_the_registrys_artifact(run, tmp_path):
    """dvc.yaml's `line-model` artifact, the flow docs/reporting.md gives: the exported models/ under
    `dvc add`, pushed to a (local) remote, a version tag; `dvc artifacts get` brings back the same
    bytes, and answers without the tag that it cannot find the artifact."""
    import yaml

    exported = run / "models"
    if not exported.exists():
        sh([sys.executable, "-m", "anomaly_backbones", "export", "--method", "padim", "--repo", str(run)], run)
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    sh(["git", "init", "-q"], repo)
    sh(["dvc", "init", "-q"], repo)
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["artifacts"]
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"artifacts": declared}))
    shutil.copytree(exported, repo / declared["line-model"]["path"])
    sh(["dvc", "remote", "add", "-d", "store", str(tmp_path / "store")], repo)
    sh(["dvc", "add", "models"], repo)
    sh(["git", "add", "-A"], repo)
    sh([*git, "commit", "-qm", "line model"], repo)
    sh(["dvc", "push"], repo)
    untagged = sh(["dvc", "artifacts", "get", str(repo), "line-model", "-o", str(tmp_path / "none")], tmp_path,
                  check=False)
    assert untagged.returncode != 0 and "Unable to find artifact 'line-model'" in untagged.stderr
    sh([*git, "tag", "-a", "line-model@v1.0.0", "-m", "line-model v1.0.0"], repo)
    sh(["dvc", "artifacts", "get", str(repo), "line-model", "-o", str(tmp_path / "got")], tmp_path)
    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(tmp_path / "got") for p in (tmp_path / "got").rglob("*")
                                     if p.is_file())
    for f in files:
        assert (tmp_path / "got" / f).read_bytes() == (exported / f).read_bytes(), f
