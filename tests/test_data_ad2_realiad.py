"""MVTec AD 2 and Real-IAD: generated trees in each dataset's exact layout, read by the loaders
(splits, masks, views), one-line errors naming the file, and the pipeline end to end on them
(`dvc exp run -S data.dataset=... -S data.root=...`), with a ViT (random init) on MVTec AD 2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_backbones.data import real_iad
from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import roc_auc
from test_data_trees import synth


def _copy(src: Path, dst: Path, suffix: str | None = None) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src)
    (im if im.mode == "L" else im.convert("RGB")).save(dst.with_suffix(suffix) if suffix else dst)


def make_mvtec_ad2(root: Path, objects=("can", "vial"), size=64) -> Path:
    """<object>/{train/good, validation/good, test_public/{good,bad}, test_public/ground_truth/bad,
    test_private, test_private_mixed}, file names with lighting conditions as released."""
    for i, obj in enumerate(objects):
        src = synth(root / "_src", i, n_train=8, n_good=5, n_defect=4, size=size)
        good = sorted((src / "train" / "good").glob("*.png"))
        for k, p in enumerate(good[:6]):
            _copy(p, root / obj / "train" / "good" / f"{k:03d}_regular.png")
        for k, p in enumerate(good[6:]):
            _copy(p, root / obj / "validation" / "good" / f"{k:03d}_regular.png")
        for k, p in enumerate(sorted((src / "test" / "good").glob("*.png"))):
            _copy(p, root / obj / "test_public" / "good" / f"{k:03d}_{'regular' if k % 2 else 'overexposed'}.png")
        defects = sorted(d for d in (src / "test").iterdir() if d.name != "good")
        k = 0
        for d in defects:
            for p in sorted(d.glob("*.png")):
                stem = f"{k:03d}_{'regular' if k % 2 else 'shift_1'}"
                _copy(p, root / obj / "test_public" / "bad" / f"{stem}.png")
                _copy(src / "ground_truth" / d.name / f"{p.stem}_mask.png",
                      root / obj / "test_public" / "ground_truth" / "bad" / f"{stem}_mask.png")
                if k < 2:
                    _copy(p, root / obj / "test_private" / f"{k:03d}_regular.png")
                    _copy(p, root / obj / "test_private_mixed" / f"{k:03d}_mixed.png")
                k += 1
    shutil.rmtree(root / "_src")
    return root


def make_real_iad(root: Path, objects=("audiojack", "pcb"), variant="realiad_256", size=64,
                  n_train=2, n_ok=2, n_ng=2, setting="multi_view", n_train_ng=0) -> Path:
    """realiad_<px>/<object>/{OK/<sample>, NG/<defect>/<sample>}/<object>_<id>_{OK,NG}_C<v>_<time>.jpg
    (+ .png masks), realiad_jsons/<setting's folder>/<object>.json. Each NG object shows its defect in
    views C1 and C3 only: its other views are OK images in the JSON. `n_train_ng` NG objects go to
    train after the OK ones (the FUIAD settings' contamination, labelled as in the release)."""
    for i, obj in enumerate(objects):
        src = synth(root / "_src", i, n_train=5 * (n_train + n_ok + n_ng + n_train_ng), n_good=1,
                    n_defect=2 * (n_ng + n_train_ng), size=size)
        good = iter(sorted((src / "train" / "good").glob("*.png")))
        defect_type = next(d for d in sorted((src / "test").iterdir()) if d.name != "good")
        bad = iter(sorted(defect_type.glob("*.png")))
        doc = {"meta": {"prefix": "", "normal_class": "OK", "pre_transform": None}, "train": [], "test": []}
        sid = 0
        for split, kind, n in (("train", "OK", n_train), ("train", "NG", n_train_ng), ("test", "OK", n_ok),
                               ("test", "NG", n_ng)):
            for _ in range(n):
                sid += 1
                folder = f"OK/S{sid:04d}" if kind == "OK" else f"NG/QS/S{sid:04d}"
                for v in range(1, 6):
                    rel = f"{folder}/{obj}_{sid:04d}_{kind}_C{v}_20231021{v:06d}.jpg"
                    shows = kind == "NG" and v in (1, 3)
                    p = next(bad) if shows else next(good)
                    _copy(p, root / variant / obj / rel)
                    entry = {"category": obj, "anomaly_class": "QS" if shows else "OK", "image_path": rel,
                             "mask_path": None}
                    if shows:
                        mask_rel = rel[:-4] + ".png"
                        _copy(src / "ground_truth" / defect_type.name / f"{p.stem}_mask.png",
                              root / variant / obj / mask_rel)
                        entry["mask_path"] = mask_rel
                    doc[split].append(entry)
        table = root / "realiad_jsons" / real_iad.SETTINGS[setting] / f"{obj}.json"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(json.dumps(doc))
    shutil.rmtree(root / "_src")
    return root


# ---------------------------------------------------------------------------------- MVTec AD 2

def test_mvtec_ad2_tree_public_test_scored_private_kept_apart(tmp_path):
    root = make_mvtec_ad2(tmp_path / "ad2")
    cats = load_dataset("mvtec_ad2", root, ["can", "vial"])
    for c in cats:
        assert len(c.train) == 6 and len(c.validation) == 2
        assert len(c.unlabelled) == 4 and all("test_private" in str(p) for p in c.unlabelled)
        good = [s for s in c.test if s.defect == "good"]
        bad = [s for s in c.test if s.defect == "bad"]
        assert len(good) == 5 and len(bad) == len(list((root / c.name / "test_public" / "bad").iterdir())) >= 4
        assert all(s.mask.name == f"{s.image.stem}_mask.png" and s.mask.parent.parts[-3:] ==
                   ("test_public", "ground_truth", "bad") for s in bad)
        assert not any("test_private" in str(s.image) or "validation" in str(s.image) for s in c.test)
    (root / "vial" / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png").unlink()
    with pytest.raises(UserError, match=r"001_regular\.png has no mask.*001_regular_mask\.png") as e:
        load_dataset("mvtec_ad2", root, ["vial"])
    assert "\n" not in str(e.value)


def test_mvtec_ad2_download_is_by_hand(tmp_path):
    from anomaly_backbones.download import download

    with pytest.raises(UserError, match=r"licence form.*mvtec-ad-2.*can/train/good"):
        download("mvtec_ad2", tmp_path / "ad2")


# ------------------------------------------------------------------------------------- Real-IAD

def test_real_iad_tree_split_views_and_objects(tmp_path):
    root = make_real_iad(tmp_path / "Real-IAD")
    for where in (root, root / "realiad_256"):     # the Real-IAD folder, or the variant itself
        cats = load_dataset("real_iad", where, ["audiojack", "pcb"])
        c = cats[0]
        assert len(c.train) == 2 * 5 and len(c.test) == 4 * 5
        views = [real_iad.view_of(s.image) for s in c.test]
        assert sorted(set(views)) == ["C1", "C2", "C3", "C4", "C5"] and views.count("C1") == 4
        bad = [s for s in c.test if s.defect != "good"]
        assert len(bad) == 2 * 2 and {real_iad.view_of(s.image) for s in bad} == {"C1", "C3"}
        assert all(s.mask.suffix == ".png" and s.mask.stem == s.image.stem for s in bad)
    # the object rule, by hand: an object is defective if any view is; its score is its views' max
    files = [str(s.image) for s in c.test]
    labels = np.array([int(s.defect != "good") for s in c.test])
    scores = np.arange(len(files), dtype=np.float32)[::-1].copy()   # later objects score lower
    objects, y, s = real_iad.object_scores(files, labels, scores)
    assert len(objects) == 4 and y == [0, 0, 1, 1]
    assert s == [float(scores[5 * k]) for k in range(4)]
    assert roc_auc(np.array(y), np.array(s)) == 0.0
    # a second variant: which one is meant must be said
    shutil.copytree(root / "realiad_256", root / "realiad_512")
    with pytest.raises(UserError, match="realiad_256, realiad_512"):
        load_dataset("real_iad", root, ["pcb"])
    table = root / "realiad_jsons" / "realiad_jsons" / "pcb.json"
    doc = json.loads(table.read_text())
    doc["test"][0]["image_path"] = "OK/S9999/missing.jpg"
    table.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"pcb\.json, test\[0\].*missing\.jpg does not exist"):
        load_dataset("real_iad", root / "realiad_512", ["pcb"])


def test_real_iad_fuiad_setting_keeps_the_json_split_defects_in_train(tmp_path, capsys):
    from anomaly_backbones.data.prepare import prepare_dataset

    root = make_real_iad(tmp_path / "Real-IAD", objects=("pcb",), setting="fuiad_0.2", n_train=3, n_train_ng=1)
    with pytest.raises(UserError) as e:             # the default setting's folder is not there
        load_dataset("real_iad", root, ["pcb"])
    assert "\n" not in str(e.value) and "realiad_jsons/realiad_jsons" in str(e.value) and "realiad_jsons.zip" in str(e.value)
    with pytest.raises(UserError, match=r"realiad_jsons_sv .*real_iad_setting=single_view.*realiad_jsons\.zip"):
        load_dataset("real_iad", root, ["pcb"], "single_view")
    (c,) = load_dataset("real_iad", root, ["pcb"], "fuiad_0.2")
    doc = json.loads((root / "realiad_jsons" / "realiad_jsons_fuiad_0.2" / "pcb.json").read_text())
    folder = root / "realiad_256" / "pcb"
    assert c.train == [folder / e["image_path"] for e in doc["train"]]            # the JSON's train, in order
    assert [s.image for s in c.test] == [folder / e["image_path"] for e in doc["test"]]
    assert sum(e["anomaly_class"] != "OK" for e in doc["train"]) == 2 and len(c.train) == 4 * 5
    assert "fuiad_0.2 pcb: 2 of 20 training images are defective, kept in train" in capsys.readouterr().err
    # the same JSON as the multi-view split: a defective training image is refused there
    shutil.copytree(root / "realiad_jsons" / "realiad_jsons_fuiad_0.2", root / "realiad_jsons" / "realiad_jsons")
    with pytest.raises(UserError, match=r"pcb\.json, train\[15\]: defective image .* in the training split"):
        load_dataset("real_iad", root, ["pcb"])
    summary = prepare_dataset([c], tmp_path / "prepared", 64, 64, 10**8)
    assert summary[0]["train"] == 20 and summary[0]["test"] == 4 * 5 and summary[0]["defective"] == 2 * 2


# ------------------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_pipeline_end_to_end_on_mvtec_ad2_with_a_vit_and_on_real_iad(tmp_path):
    from test_pipeline import sh, set_params
    from conftest import ROOT

    clone = tmp_path / "repo"
    sh(["git", "clone", "-q", str(ROOT), str(clone)], cwd=ROOT)
    for f in ("dvc.yaml", ".gitignore", ".dvc/config", "params.yaml", "stages", "src"):
        src = ROOT / f
        if src.is_dir():
            shutil.copytree(src, clone / f, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, clone / f)
    set_params(clone, **{"data.resize": 56, "data.crop": 56})
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "tiny", "--allow-empty"], cwd=clone)

    ad2 = make_mvtec_ad2(tmp_path / "ad2", objects=("can",))
    sh(["dvc", "exp", "run", "-S", "data.dataset=mvtec_ad2", "-S", f"data.root={ad2}", "-S", "data.categories=[can]",
        "-S", "backbone=vit_small_patch14_reg4_dinov2", "-S", "init=random", "-S", "methods=[padim,patchcore,dn2]"],
       cwd=clone)
    stats = json.loads((clone / "data" / "features" / "stats.json").read_text())
    assert stats["engine"] == "eager" and stats["last_stage"] == "blocks.pool"
    assert stats["tail_engine"] == "eager (second pass)"
    for method in ("padim", "patchcore"):
        r = json.loads((clone / "outputs" / method / "results.json").read_text())["categories"]["can"]
        assert 0.0 <= r["pixel_aupro"] <= 1.0 and 0.0 <= r["pixel_aupro@0.05"] <= 1.0
        assert r["pixel_aupro"] != r["pixel_aupro@0.05"]
    r = json.loads((clone / "outputs" / "dn2" / "results.json").read_text())["categories"]["can"]
    assert r["image_auroc"] is not None and r["pixel_aupro"] is None

    riad = make_real_iad(tmp_path / "Real-IAD", objects=("audiojack",))
    sh(["dvc", "exp", "run", "-S", "data.dataset=real_iad", "-S", f"data.root={riad}", "-S", "data.categories=[audiojack]",
        "-S", "backbone=tf_efficientnet_lite0", "-S", "init=imagenet", "-S", "methods=[padim]",
        "-S", "metrics.pro_fpr_limit=0.05"], cwd=clone)
    r = json.loads((clone / "outputs" / "padim" / "results.json").read_text())["categories"]["audiojack"]
    assert r["objects"] == 4 and set(r["views"]) == {"C1", "C2", "C3", "C4", "C5"}
    assert r["views"]["C2"] is None and r["views"]["C1"] is not None   # C2 never shows the defect
    assert r["object_auroc"] is not None and "pixel_aupro@0.3" not in r
