"""The deployable scorer: equal to PaDiM.predict, ONNX Runtime equal to eager, clear export errors,
and the latency stage writing the file dvc.yaml declares. Real computations on a tiny project:
tf_efficientnet_lite0 (offline ImageNet weights) on 64 px images."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from anomaly_backbones.backbones import Backbone, FeatureExtractor, load_backbone, normalize, resolve_layers
from anomaly_backbones.deploy import PadimScorer, check_onnx, export_onnx, onnx_files, ort_session, trunk
from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet, FeatureWriter
from anomaly_backbones.methods.padim import PaDiM
from conftest import ROOT

BACKBONE, SIZE, CAT = "tf_efficientnet_lite0", 64, "disc"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """data/prepared/<CAT> (uint8 images) and data/features/<CAT> written the way the extract stage
    writes them (normalize, FeatureExtractor on the batch, FeatureWriter)."""
    root = tmp_path_factory.mktemp("deploy")
    bb = load_backbone(BACKBONE, "imagenet", 1024)
    layers = resolve_layers(BACKBONE, "auto")
    rng = np.random.default_rng(0)
    base = rng.integers(90, 160, size=(1, SIZE, SIZE, 3))
    splits = {"train": np.clip(base + rng.integers(-20, 20, size=(8, SIZE, SIZE, 3)), 0, 255).astype(np.uint8),
              "test": np.clip(base + rng.integers(-20, 20, size=(3, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)}
    splits["test"][0, 20:30, 36:50] = 250                       # a bright defect
    prepared = root / "data" / "prepared" / CAT
    prepared.mkdir(parents=True)
    w = FeatureWriter(root / "data" / "features" / CAT,
                      {"backbone": bb.name, "init": bb.init, "layers": layers, "image_size": SIZE, "ms_per_image": 1.0})
    ext = FeatureExtractor(bb.model, layers)
    for split, images in splits.items():
        np.save(prepared / f"{split}_images.npy", images)
        feats = ext(normalize(torch.from_numpy(images).permute(0, 3, 1, 2), bb.mean, bb.std))
        w.open(split, len(images), {k: tuple(v.shape[1:]) for k, v in feats.items()})
        w.write(split, feats)
    w.close()
    (root / "data" / "prepared" / "categories.json").write_text(json.dumps([{"category": CAT}]))
    padim = PaDiM({"d": 40}, layers, seed=1024)
    padim.fit(FeatureSet(root / "data" / "features" / CAT, "train"))
    return {"root": root, "bb": bb, "padim": padim, "test": splits["test"],
            "scorer": PadimScorer(bb, padim, SIZE)}


def _batch(images, i):
    return torch.from_numpy(np.ascontiguousarray(images[i:i + 1])).permute(0, 3, 1, 2).contiguous()


def test_scorer_reproduces_padim_predict(project):
    padim, scorer = project["padim"], project["scorer"]
    assert sum(len(c) for c in padim.channels.values()) == padim.d == 40   # R_d keeps 40 of 176 channels
    scores, maps = padim.predict(FeatureSet(project["root"] / "data" / "features" / CAT, "test"))
    assert scores.argmax() == 0
    with torch.inference_mode():
        for i in range(len(project["test"])):
            got_map, got_score = scorer(_batch(project["test"], i))
            assert got_map.shape == (1, SIZE, SIZE) and got_score.shape == (1,)
            np.testing.assert_allclose(got_map[0].numpy(), maps[i], rtol=1e-4, atol=1e-4 * maps.max())
            np.testing.assert_allclose(got_score.numpy(), scores[i:i + 1], rtol=1e-4)
        x = _batch(project["test"], 0)   # already normalized float input gives the same result
        np.testing.assert_array_equal(scorer(normalize(x, project["bb"].mean, project["bb"].std))[1], scorer(x)[1])


def test_onnx_runtime_matches_eager(project, tmp_path):
    scorer = project["scorer"]
    path = export_onnx(scorer, tmp_path / "padim.onnx", BACKBONE)
    files = onnx_files(path)
    assert files[0] == path and len(files) == 2 and files[1].stat().st_size > project["padim"].inv_cov.numel() * 4
    sess = ort_session(path, 1)
    for i in range(len(project["test"])):
        x = _batch(project["test"], i)
        with torch.inference_mode():
            want_map, want_score = scorer(x)
        got_map, got_score = sess.run(None, {"image": x.numpy()})
        scale = float(want_map.abs().max())
        np.testing.assert_allclose(got_map, want_map.numpy(), rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(got_score, want_score.numpy(), rtol=1e-4)
    check_onnx(scorer, path, _batch(project["test"], 1), BACKBONE)   # the stage's own guard passes


class _Svd(nn.Module):
    """A layer whose op ONNX has no equivalent of (singular values)."""

    def forward(self, x):
        return x * torch.linalg.svdvals(x.mean(1)).mean()


class _Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x    # data-dependent Python control flow: not traceable


def _toy_scorer(tmp_path, mid: nn.Module):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), mid, nn.Conv2d(4, 4, 3, stride=2, padding=1))
    bb = Backbone(model=model.eval(), name="toynet", init="random:seed=0", mean=(0.5,) * 3, std=(0.5,) * 3,
                  entry=None)
    rng = np.random.default_rng(0)
    fs = FeatureWriter(tmp_path / "c", {"backbone": "toynet", "init": "random", "layers": ["0", "2"],
                                        "image_size": 16, "ms_per_image": 1.0})
    with torch.inference_mode():
        feats = FeatureExtractor(model, ["0", "2"])(torch.from_numpy(rng.normal(size=(4, 3, 16, 16))).float())
    fs.open("train", 4, {k: tuple(v.shape[1:]) for k, v in feats.items()})
    fs.write("train", feats)
    fs.close()
    padim = PaDiM({"d": 5}, ["0", "2"], seed=0)
    padim.fit(FeatureSet(tmp_path / "c", "train"))
    return bb, padim


def test_unexportable_op_is_a_user_error_naming_the_backbone(tmp_path):
    bb, padim = _toy_scorer(tmp_path, _Svd())
    scorer = PadimScorer(bb, padim, 16)                    # traces and runs eagerly...
    scorer(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(UserError, match="backbone .toynet. does not export to ONNX: .*_linalg_svd"):
        export_onnx(scorer, tmp_path / "x.onnx", bb.name)  # ...but does not export


def test_untraceable_backbone_is_a_user_error_naming_it(tmp_path):
    bb, padim = _toy_scorer(tmp_path, _Branchy())
    with pytest.raises(UserError, match="backbone 'toynet' cannot be traced"):
        trunk(bb.model, ["0", "2"], bb.name)


def test_latency_stage_writes_the_declared_metrics_file(project):
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "metrics/latency.json" in dvc["metrics"]
    assert {"metrics/latency.json": {"cache": False}} in dvc["stages"]["latency"]["outs"]
    assert "!/metrics/latency.json" in (ROOT / ".gitignore").read_text().splitlines()
    root = project["root"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"], params["init"], params["layers"] = BACKBONE, "imagenet", "auto"
    params["padim"]["d"], params["latency"] = 40, {"runs": 2, "warmup": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.rmtree(root / "metrics", ignore_errors=True)
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "05_latency.py")], cwd=root, capture_output=True,
                       text=True, env=os.environ)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((root / "metrics" / "latency.json").read_text())
    assert out["backbone"] == BACKBONE and out["category"] == CAT and out["image_size"] == SIZE
    assert out["load_1m"] >= 0
    keys = {f"{e}_{t}{q}_ms" for e in ("eager", "onnx") for t in ("1t", "all") for q in ("", "_p90")}
    assert set(out["padim"]) == keys | {"onnx_mb", "onnx_trunk_mb", "threads_all"}
    assert 0 < out["padim"]["onnx_trunk_mb"] < out["padim"]["onnx_mb"]
    assert all(out["padim"][k] > 0 for k in keys) and out["padim"]["threads_all"] >= 1
    assert out["padim"]["onnx_mb"] > project["padim"].inv_cov.numel() * 4 / 2**20
    assert not list(root.rglob("*.onnx*"))   # the export is measured, not left behind


def test_latency_runs_zero_skips_the_measurement(project):
    root = project["root"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["backbone"], params["init"], params["layers"] = BACKBONE, "imagenet", "auto"
    params["latency"] = {"runs": 0, "warmup": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "05_latency.py")], cwd=root, capture_output=True,
                       text=True, env=os.environ)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads((root / "metrics" / "latency.json").read_text())
    assert out["skipped"] == "latency.runs is 0" and "padim" not in out
