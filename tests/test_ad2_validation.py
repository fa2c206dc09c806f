"""MVTec AD 2's SegF1: the threshold calibrated on validation/good (`threshold.source=validation`),
by the quantile rule or the dataset paper's mean + 3 std (`threshold.pixel_rule=mean3std`).

The streaming mean and standard deviation against numpy's on the concatenated maps; the pipeline's
stages end to end on a generated MVTec AD 2 tree, each threshold and SegF1 recomputed here with numpy
from the validation maps of the fitted method; the default run (holdout 0) untouched; bad input in
one line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anomaly_backbones.data.layout import Category
from anomaly_backbones.data.prepare import prepare_dataset
from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics.threshold import mean_std, pixel_mean3std
from anomaly_backbones.params import GROUPS, check_params, set_params
from conftest import ROOT

ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_streaming_mean_std_is_numpys_on_the_concatenation():
    """Maps of different sizes far from zero (a sum of squares would cancel), one empty."""
    rng = np.random.default_rng(3)
    maps = [rng.normal(5e3, 1e-2, size=s).astype(np.float32) for s in [(4, 4), (0, 5), (9, 9), (31, 17)]]
    flat = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    mean, std, n = mean_std(maps)
    assert n == flat.size and mean == pytest.approx(flat.mean(), rel=1e-15)
    assert std == pytest.approx(flat.std(), rel=1e-9)
    stack = rng.gamma(2.0, size=(6, 8, 8)).astype(np.float32)     # an (N, H, W) array, as the fit gives
    c = pixel_mean3std(stack)
    t = np.float32(stack.astype(np.float64).mean() + 3 * stack.astype(np.float64).std())
    assert c["threshold"] == float(t) and c["rule"] == "mean3std"
    assert c["n_held"] == stack.size and c["n_flagged"] == np.count_nonzero(stack > t)
    assert np.isnan(mean_std([])[0])
    with pytest.raises(UserError, match="zero calibration pixels"):
        pixel_mean3std(np.zeros((0, 4, 4), np.float32))


def test_validation_asked_without_a_validation_set_is_one_line(tmp_path):
    cats = [Category("disc", [tmp_path / "a.png"])]           # no validation images (as every synthetic category)
    with pytest.raises(UserError, match=r"`threshold.source` = validation .* category disc has none.*"
                                        r"-S threshold.source=holdout") as e:
        prepare_dataset(cats, tmp_path / "prepared", 64, 64, validation=True)
    assert "\n" not in str(e.value) and not (tmp_path / "prepared").exists()
    p = {"threshold": {"source": "validation", "holdout": 0.1}}
    with pytest.raises(UserError, match=r"set `threshold.holdout` to 0") as e:
        check_params(p, GROUPS)
    assert "\n" not in str(e.value)


def test_fit_split_reads_the_validation_split_or_says_how(tmp_path):
    from anomaly_backbones.features import FeatureSet
    from anomaly_backbones.holdout import fit_split

    meta = {"layers": ["l1"], "image_size": 16, "n_train": 5, "n_test": 4, "shapes": {"l1": [8, 4, 4]}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    p = {"seed": 1, "threshold": {"holdout": 0.0, "source": "validation"}}
    with pytest.raises(UserError, match=r"has no validation split: re-run prepare and extract"):
        fit_split(FeatureSet(tmp_path, "train"), p)
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "n_validation": 3}))
    train = FeatureSet(tmp_path, "train")
    fit, held = fit_split(train, p)
    assert fit is train and held.split == "validation" and len(held) == 3


def sh(args, cwd, check=True):
    r = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def workspace(dst: Path, **params) -> Path:
    dst.mkdir(parents=True)
    for f in ("params.yaml", "stages"):
        (shutil.copytree if (ROOT / f).is_dir() else shutil.copy)(ROOT / f, dst / f)
    (dst / "dvc.yaml").write_text("stages: {}\n")
    set_params(dst / "params.yaml", **params)
    return dst


@pytest.mark.slow
def test_validation_on_the_synthetic_dataset_stage_says_so_in_one_line(tmp_path):
    ws = workspace(tmp_path / "ws", **{"synthetic.categories": ["disc"], "synthetic.n_train": 4,
                                       "synthetic.n_good_test": 2, "synthetic.n_defect_test": 2,
                                       "threshold.source": "validation"})
    sh([sys.executable, "stages/01_generate.py"], ws)
    r = sh([sys.executable, "stages/02_prepare.py"], ws, check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr and len(lines) == 1
    assert "threshold.source" in lines[0] and "threshold.holdout=0.1" in lines[0]
    assert not (ws / "data" / "prepared").exists()


def run_stages(ws: Path, method: str, prepare: bool = True) -> None:
    stages = ("02_prepare", "03_extract") if prepare else ()
    for stage in stages:
        sh([sys.executable, f"stages/{stage}.py"], ws)
    sh([sys.executable, "stages/04_fit.py", method], ws)
    sh([sys.executable, "stages/06_aggregate.py"], ws)


def seg_f1(masks: np.ndarray, maps: np.ndarray, t: float) -> float:
    flagged, m = maps > np.float32(t), masks.astype(bool)
    tp, fp, fn = (np.count_nonzero(flagged & m), np.count_nonzero(flagged & ~m), np.count_nonzero(~flagged & m))
    return 2 * tp / (2 * tp + fp + fn)


@pytest.mark.slow
def test_segf1_on_validation_good_end_to_end(tmp_path):
    """Default, then threshold.source=validation with the quantile rule, then with mean3std: the
    stages (not DVC) on one generated MVTec AD 2 object, PaDiM."""
    from test_data_ad2_realiad import make_mvtec_ad2

    from anomaly_backbones.features import FeatureSet
    from anomaly_backbones.pipeline.config import load_params
    from anomaly_backbones.pipeline.fit import fit_predict

    ad2 = make_mvtec_ad2(tmp_path / "ad2", objects=("can",))   # 6 train, 2 validation, 13 test images
    ws = workspace(tmp_path / "ws", **{"data.dataset": "mvtec_ad2", "data.root": str(ad2), "data.categories": ["can"],
                                       "data.resize": 64, "data.crop": 64, "methods": ["padim"]})
    prepared, features, out = ws / "data" / "prepared", ws / "data" / "features", ws / "outputs" / "padim"

    def snapshot():
        files = [*(prepared / "can").iterdir(), *(features / "can").rglob("*.npy")]
        return {str(f.relative_to(ws)): f.read_bytes() for f in files if f.is_file()}

    # the default: no validation split anywhere, no threshold in results.json or metrics.json
    run_stages(ws, "padim")
    default = json.loads((out / "results.json").read_text())["categories"]["can"]
    default_metrics = json.loads((ws / "metrics" / "metrics.json").read_text())
    default_files = snapshot()
    assert "threshold" not in default and not any("threshold" in k for k in default_metrics["padim"])
    assert not any("validation" in k for k in default_files)
    assert "validation" not in json.loads((prepared / "categories.json").read_text())[0]

    # validation/good as the calibration set, the quantile rule
    set_params(ws / "params.yaml", **{"threshold.source": "validation"})
    run_stages(ws, "padim")
    assert json.loads((prepared / "categories.json").read_text())[0]["validation"] == 2
    files = snapshot()
    for k, v in default_files.items():   # train, test and their features: the same bytes as the default run's
        assert files[k] == v or k.endswith("samples.csv"), k
    csv = files["data/prepared/can/samples.csv"]   # the default's rows, then the validation rows
    assert csv.startswith(default_files["data/prepared/can/samples.csv"])
    assert [r.split(b",")[0] for r in csv.splitlines()[-2:]] == [b"validation", b"validation"]
    res = json.loads((out / "results.json").read_text())["categories"]["can"]
    th = res.pop("threshold")
    for k in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro", "pixel_aupro@0.05"):   # all of train fitted
        assert res[k] == default[k], k

    # recomputed here: the fitted method's scores and maps of validation/good and test
    p = load_params(ws / "params.yaml")
    train, test = FeatureSet(features / "can", "train"), FeatureSet(features / "can", "test")
    val = FeatureSet(features / "can", "validation")
    assert len(train) == 6 and len(val) == 2
    s = fit_predict("padim", p, train, test, held=val)
    with np.load(out / "can.npz") as z:
        assert np.array_equal(z["scores"], s.scores.astype(np.float32))
    masks = np.load(prepared / "can" / "test_masks.npy")
    assert th["source"] == "validation" and th["image"]["n_held"] == 2
    assert th["image"]["threshold"] == float(np.sort(s.held_scores.astype(np.float32))[-1])   # floor(0.01 * 2) = 0: the max
    flat = np.sort(s.held_maps.astype(np.float32).ravel())[::-1]
    j = int(np.floor(0.01 * flat.size))                          # at most j pixels above: the (j + 1)-th largest
    assert th["pixel"]["n_held"] == 2 * 64 * 64 and th["pixel"]["threshold"] == float(flat[j])
    assert "rule" not in th["pixel"]
    assert th["pixel"]["test"]["f1"] == pytest.approx(seg_f1(masks, s.maps, flat[j]), rel=1e-12)
    m = json.loads((ws / "metrics" / "metrics.json").read_text())["padim"]
    assert m["threshold_pixel_f1"] == round(th["pixel"]["test"]["f1"], 6)

    # MVTec AD 2's rule: the validation pixels' mean + 3 std (numpy on the concatenated maps)
    set_params(ws / "params.yaml", **{"threshold.pixel_rule": "mean3std"})
    run_stages(ws, "padim", prepare=False)
    th3 = json.loads((out / "results.json").read_text())["categories"]["can"]["threshold"]
    v = s.held_maps.astype(np.float64).ravel()
    assert th3["pixel"]["rule"] == "mean3std" and th3["pixel"]["mean"] == pytest.approx(v.mean(), rel=1e-12)
    assert th3["pixel"]["std"] == pytest.approx(v.std(), rel=1e-9)
    t = np.float32(v.mean() + 3 * v.std())
    assert abs(th3["pixel"]["threshold"] - float(t)) <= float(np.spacing(t))   # the same float32, or its neighbour
    assert th3["pixel"]["threshold"] != th["pixel"]["threshold"] and th3["image"] == th["image"]
    segf1 = seg_f1(masks, s.maps, th3["pixel"]["threshold"])
    assert 0.0 < segf1 < 1.0 and th3["pixel"]["test"]["f1"] == pytest.approx(segf1, rel=1e-12)
    m = json.loads((ws / "metrics" / "metrics.json").read_text())["padim"]
    assert m["threshold_pixel_f1"] == round(segf1, 6)
