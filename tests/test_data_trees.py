"""Small generated trees in the exact layouts of VisA, BTAD and MPDD (with their quirks), and the
loaders read on them: the official split, mask pairing, and a one-line error naming the file for
each malformed tree. The tree builders are shared by the other tests/test_data_*.py modules."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_backbones.data import btad, visa
from anomaly_backbones.data.datasets import DATASETS, MPDD_CATEGORIES, load_dataset
from anomaly_backbones.data.prepare import load_prepared, prepare_dataset, read_samples
from anomaly_backbones.data.synthetic import DEFECTS, generate
from anomaly_backbones.errors import UserError

KINDS = sorted(DEFECTS)   # the synthetic generator's four kinds, cycled over a dataset's categories


def synth(work: Path, i: int, n_train: int, n_good: int, n_defect: int, size: int) -> Path:
    """An MVTec-layout category from the synthetic generator (kind and seed by index `i`)."""
    kind = KINDS[i % len(KINDS)]
    generate(work / str(i), seed=1024 + i, categories=(kind,), n_train=n_train, n_good_test=n_good,
             n_defect_test=n_defect, size=size)
    return work / str(i) / kind


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def _save(src: Path, dst: Path, size: tuple[int, int], mask_values: tuple[int, int] | None = None) -> None:
    """Copy an image (bilinear) or a 0/255 mask (nearest, written with `mask_values`) at `size`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(src)
    if mask_values is None:
        im.convert("RGB").resize(size, Image.BILINEAR).save(dst, **({"quality": 95} if dst.suffix.lower()
                                                                      in (".jpg", ".jpeg") else {}))
    else:
        m = np.asarray(im.resize(size, Image.NEAREST)) > 127
        Image.fromarray(np.where(m, mask_values[1], mask_values[0]).astype(np.uint8)).save(dst)


def make_visa(root: Path, objects=visa.CATEGORIES, n_train=3, n_good=2, n_defect=1, size=(72, 48)) -> Path:
    """VisA's layout: <object>/Data/Images/{Normal,Anomaly}/NNNN.JPG, label masks (0/1) in
    <object>/Data/Masks/Anomaly/NNNN.png, split_csv/1cls.csv (mask cell empty for normal rows)."""
    rows = [visa.COLUMNS]
    for i, obj in enumerate(objects):
        c = synth(root / ".work", i, n_train, n_good, n_defect, 64)
        for k, (split, src) in enumerate([("train", p) for p in _files(c / "train" / "good")] +
                                         [("test", p) for p in _files(c / "test" / "good")]):
            rel = f"{obj}/Data/Images/Normal/{k:04d}.JPG"
            _save(src, root / rel, size)
            rows.append([obj, split, "normal", rel, ""])
        defects = [p for d in sorted((c / "test").iterdir()) if d.name != "good" for p in _files(d)]
        for k, src in enumerate(defects):
            img, msk = f"{obj}/Data/Images/Anomaly/{k:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{k:03d}.png"
            _save(src, root / img, size)
            _save(c / "ground_truth" / src.parent.name / f"{src.stem}_mask.png", root / msk, size, (0, 1))
            rows.append([obj, "test", "anomaly", img, msk])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    shutil.rmtree(root / ".work")
    return root


# BTAD's extensions as they come: 01 images .bmp with .png masks, 02 .png/.png, 03 .bmp/.bmp
BTAD_EXTS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}


def make_btad(root: Path, products=tuple(btad.CATEGORIES), n_train=3, n_good=2, n_defect=1, size=(64, 64)) -> Path:
    """BTAD's layout: <nn>/train/ok, <nn>/test/{ok,ko}, <nn>/ground_truth/ko/<image stem>.<ext>
    (0/255 masks), and one upper-case extension per product."""
    for i, nn in enumerate(products):
        c = synth(root / ".work", i, n_train, n_good, n_defect, 64)
        ext, mext = BTAD_EXTS.get(nn, (".png", ".png"))
        for split, src_dir in (("train", c / "train" / "good"), ("test", c / "test" / "good")):
            for k, src in enumerate(_files(src_dir)):
                _save(src, root / nn / split / "ok" / f"{k:04d}{ext.upper() if k == 0 else ext}", size)
        defects = [p for d in sorted((c / "test").iterdir()) if d.name != "good" for p in _files(d)]
        for k, src in enumerate(defects):
            _save(src, root / nn / "test" / "ko" / f"{k:04d}{ext}", size)
            _save(c / "ground_truth" / src.parent.name / f"{src.stem}_mask.png",
                  root / nn / "ground_truth" / "ko" / f"{k:04d}{mext}", size, (0, 255))
    shutil.rmtree(root / ".work")
    return root


def make_mpdd(root: Path, categories=MPDD_CATEGORIES, n_train=3, n_good=2, n_defect=1, size=64) -> Path:
    """MPDD's layout is MVTec's: <category>/{train/good, test/<type>, ground_truth/<type>/*_mask.png}."""
    for i, name in enumerate(categories):
        shutil.move(str(synth(root / ".work", i, n_train, n_good, n_defect, size)), str(root / name))
    shutil.rmtree(root / ".work")
    return root


def one_line_naming(e: pytest.ExceptionInfo, *names: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert any(n in msg for n in names), (names, msg)
    return msg


def test_visa_tree_official_split_label_masks_and_square_resize(tmp_path):
    root = make_visa(tmp_path / "visa", n_train=3, n_good=2, n_defect=1)
    cats = load_dataset("visa", root, "all")
    assert [c.name for c in cats] == visa.CATEGORIES
    candle = cats[0]
    assert len(candle.train) == 3 and all(p.parent.name == "Normal" and p.suffix == ".JPG" for p in candle.train)
    good = [s for s in candle.test if s.defect == "good"]
    bad = [s for s in candle.test if s.defect != "good"]
    assert len(good) == 2 and all(s.mask is None for s in good)
    assert len(bad) == 2 and all(s.mask.parent == root / "candle/Data/Masks/Anomaly" for s in bad)
    assert np.asarray(Image.open(bad[0].mask)).max() == 1     # VisA's masks are label images
    # prepare: 72x48 images resized to a 40x40 square (bilinear) and center-cropped to 32, masks likewise
    out = tmp_path / "prepared"
    prepare_dataset(cats[:1], out, resize=40, crop=32)
    train = load_prepared(out / "candle", "train_images")
    want = np.asarray(Image.open(candle.train[0]).convert("RGB").resize((40, 40), Image.BILINEAR))[4:36, 4:36]
    assert np.array_equal(train[0], want)
    masks = load_prepared(out / "candle", "test_masks")
    rows = [r for r in read_samples(out / "candle") if r["split"] == "test"]
    for r, m in zip(rows, masks):
        if r["label"] == "1":
            label = np.asarray(Image.open(r["file"].replace("Images", "Masks").replace(".JPG", ".png")))
            assert np.array_equal(m, np.asarray(Image.fromarray(label * 255).resize((40, 40), Image.NEAREST))[4:36, 4:36] > 0)
        else:
            assert not m.any()
    assert masks.any()


def test_visa_quirks_bom_crlf_blank_lines_subset_and_a_mask_for_a_normal_image(tmp_path, capsys):
    root = make_visa(tmp_path / "visa", objects=["candle", "pcb1"])
    table = root / "split_csv" / "1cls.csv"
    lines = table.read_text().splitlines()
    normal_test = next(i for i, s in enumerate(lines) if ",test,normal," in s and s.startswith("pcb1"))
    lines[normal_test] += "pcb1/Data/Masks/Anomaly/000.png"          # a mask given for a normal image
    table.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines[:3] + [""] + lines[3:]).encode() + b"\r\n")
    (cat,) = load_dataset("visa", root, ["pcb1"])
    assert cat.name == "pcb1" and len(cat.train) == 3 and len(cat.test) == 2 + 2
    err = capsys.readouterr().err
    assert "1 mask belongs to defect-free test images" in err and "pcb1/Data/Masks/Anomaly/000.png" in err


@pytest.mark.parametrize("fault,names", [
    ("no csv", ["split_csv/1cls.csv"]),
    ("header", ["1cls.csv"]),
    ("empty anomaly mask", ["line", "Anomaly/000.JPG"]),
    ("missing image", ["Normal/0001.JPG"]),
    ("anomaly in train", ["line", "training split"]),
    ("listed twice", ["already listed on line"]),
    ("object absent", ["'pcb4'"]),
    ("short row", ["line 2: 4 columns"]),
])
def test_malformed_visa_trees_are_one_line_naming_the_file(tmp_path, fault, names):
    root = make_visa(tmp_path / "visa", objects=["candle"], n_train=2, n_good=1, n_defect=1)
    table = root / "split_csv" / "1cls.csv"
    lines = table.read_text().splitlines()
    anomaly = next(i for i, s in enumerate(lines) if ",anomaly," in s)
    if fault == "no csv":
        table.unlink()
    elif fault == "header":
        table.write_text("\n".join(["object,set,label,image_path,mask_path"] + lines[1:]))
    elif fault == "empty anomaly mask":
        lines[anomaly] = lines[anomaly].rsplit(",", 1)[0] + ","
    elif fault == "missing image":
        (root / "candle/Data/Images/Normal/0001.JPG").unlink()
    elif fault == "anomaly in train":
        lines[anomaly] = lines[anomaly].replace(",test,", ",train,")
    elif fault == "listed twice":
        lines.append(lines[1])
    elif fault == "short row":
        lines[1] = lines[1].rsplit(",", 1)[0]
    if fault not in ("no csv", "header"):
        table.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        load_dataset("visa", root, ["candle", "pcb4"] if fault == "object absent" else ["candle"])
    one_line_naming(e, *names)


def test_btad_tree_mixed_extensions_uppercase_and_numeric_categories(tmp_path, capsys):
    root = make_btad(tmp_path / "btad")
    cats = load_dataset("btad", root, "all")
    assert [c.name for c in cats] == ["01", "02", "03"]
    for c in cats:
        ext, mext = BTAD_EXTS[c.name]
        assert len(c.train) == 3 and c.train[0].suffix == ext.upper()
        bad = [s for s in c.test if s.defect != "good"]
        assert len(bad) == 2 and all(s.mask.suffix == mext and s.mask.stem == s.image.stem for s in bad)
    # YAML reads -S 'data.categories=[01,03]' as [1, 3]
    assert [c.name for c in load_dataset("btad", root, [1, 3])] == ["01", "03"]
    out = tmp_path / "prepared"
    summary = prepare_dataset(cats, out, resize=32, crop=32)
    assert [s["defective"] for s in summary] == [2, 2, 2]
    assert all(load_prepared(out / c.name, "test_masks").any() for c in cats)
    # a ground_truth/ok folder: reported, not used
    shutil.copytree(root / "02" / "ground_truth" / "ko", root / "02" / "ground_truth" / "ok")
    load_dataset("btad", root, ["02"])
    assert "2 masks belong to defect-free test images and are not used" in capsys.readouterr().err


@pytest.mark.parametrize("fault,names", [
    ("missing mask", ["0001.bmp", "has no mask"]),
    ("orphan mask", ["0009.bmp has no image"]),
    ("no train folder", ["03/train/ok"]),
    ("product absent", ["04"]),
])
def test_malformed_btad_trees_are_one_line_naming_the_file(tmp_path, fault, names):
    root = make_btad(tmp_path / "btad", products=("03",))
    gt = root / "03" / "ground_truth" / "ko"
    if fault == "missing mask":
        (gt / "0001.bmp").unlink()
    elif fault == "orphan mask":
        shutil.copy(gt / "0001.bmp", gt / "0009.bmp")
    elif fault == "no train folder":
        shutil.rmtree(root / "03" / "train")
    with pytest.raises(UserError) as e:
        load_dataset("btad", root, ["03", "04"] if fault == "product absent" else ["03"])
    one_line_naming(e, *names)


def test_mpdd_is_the_mvtec_layout_with_its_six_categories(tmp_path):
    root = make_mpdd(tmp_path / "mpdd")
    cats = load_dataset("mpdd", root, "all")
    assert [c.name for c in cats] == list(MPDD_CATEGORIES)
    assert all(s.mask.name == s.image.stem + "_mask.png" for c in cats for s in c.test if s.defect != "good")
    assert "Jezek" in DATASETS["mpdd"].cite and DATASETS["mpdd"].archive is None
    shutil.rmtree(root / "tubes" / "ground_truth")
    with pytest.raises(UserError) as e:
        load_dataset("mpdd", root, "all")
    one_line_naming(e, "tubes/ground_truth")
    shutil.rmtree(root / "tubes")
    with pytest.raises(UserError) as e:
        load_dataset("mpdd", root, "all")
    one_line_naming(e, "tubes")
