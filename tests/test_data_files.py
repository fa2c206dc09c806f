"""Folders as real users have them (issue 20): label masks, OS and notebook clutter, EXIF
orientation, huge images, masks for defect-free images, unreadable files; and the mask rule."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.data.images import defect_pixels, load_image, load_mask
from anomaly_backbones.data.prepare import load_prepared, prepare_dataset, read_samples
from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import roc_auc

from conftest import ROOT
from test_data_trees import one_line_naming


def _prepare(tree: Path, out: Path, **kw):
    cats = load_dataset("folder", tree, "all")
    return cats, prepare_dataset(cats, out, kw.pop("resize", 64), kw.pop("crop", 64), **kw)


def test_label_masks_0_1_give_the_same_pixels_as_0_255_and_a_finite_pixel_auroc(synthetic_tree, tmp_path):
    """Masks stored as label images (0 and 1) once gave all-empty masks and NaN pixel metrics."""
    _prepare(synthetic_tree, tmp_path / "a")
    for m in synthetic_tree.rglob("*_mask.png"):
        Image.fromarray((np.asarray(Image.open(m)) > 127).astype(np.uint8)).save(m)   # 0/255 -> 0/1
    _prepare(synthetic_tree, tmp_path / "b")
    for name in ("disc", "weave"):
        a, b = (load_prepared(tmp_path / x / name, "test_masks") for x in "ab")
        assert b.any() and np.array_equal(a, b)
        images = load_prepared(tmp_path / "b" / name, "test_images").astype(np.float32)
        score = np.abs(images - np.median(images, axis=0)).mean(axis=3)       # a crude anomaly map
        assert np.isfinite(roc_auc(b, score))


def _mask_file(tmp_path, name, array=None, mode=None, image=None):
    p = tmp_path / name
    (image if image is not None else Image.fromarray(array, mode)).save(p)
    return p


def test_the_mask_rule_for_each_kind_of_mask_file(tmp_path):
    """Which pixels count as defect: label images (max below half the range) -> non-zero;
    otherwise above half the range; color masks by their brightest channel, transparent = black."""
    def rule(p):
        return defect_pixels(Image.open(p)).tolist()

    row = lambda *v: np.array([v], np.uint8)  # noqa: E731
    assert rule(_mask_file(tmp_path, "label01.png", row(0, 1, 1, 0))) == [[False, True, True, False]]
    assert rule(_mask_file(tmp_path, "visa012.png", row(0, 1, 2, 0))) == [[False, True, True, False]]
    assert rule(_mask_file(tmp_path, "bin.png", row(0, 255, 0, 255))) == [[False, True, False, True]]
    # anti-aliased 0/255 edges count where more than half covered
    assert rule(_mask_file(tmp_path, "aa.png", row(0, 64, 127, 128, 200, 255))) == [[False, False, False, True, True, True]]
    u16 = lambda *v: np.array([v], np.uint16)  # noqa: E731
    assert rule(_mask_file(tmp_path, "b16.png", u16(0, 65535, 30000, 40000))) == [[False, True, False, True]]
    assert rule(_mask_file(tmp_path, "l16.png", u16(0, 1, 0, 2))) == [[False, True, False, True]]
    assert rule(_mask_file(tmp_path, "s16.png", u16(0, 255, 0, 255))) == [[False, True, False, True]]
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 1] = (255, 0, 0)        # a red annotation on black
    rgb[0, 2] = (90, 90, 90)       # dim: below half, beside a bright pixel
    rgb[0, 3] = (0, 200, 0)
    assert rule(_mask_file(tmp_path, "rgb.png", rgb)) == [[False, True, False, True]]
    dark = np.zeros((1, 3, 3), np.uint8)
    dark[0, 1] = (1, 0, 0)         # a label image saved as RGB
    assert rule(_mask_file(tmp_path, "dark.png", dark)) == [[False, True, False]]
    rgba = np.full((1, 3, 4), 255, np.uint8)
    rgba[0, 0, 3] = 0              # white but transparent: background
    assert rule(_mask_file(tmp_path, "rgba.png", rgba)) == [[False, True, True]]
    pal = Image.fromarray(row(0, 1, 0), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert rule(_mask_file(tmp_path, "pal.png", image=pal)) == [[False, True, False]]
    assert rule(_mask_file(tmp_path, "bilevel.png", image=Image.fromarray(row(0, 255, 0)).convert("1"))) == \
        [[False, True, False]]
    assert rule(_mask_file(tmp_path, "f.tif", np.array([[0.0, 1.0, 0.4, 0.6]], np.float32), "F")) == \
        [[False, True, False, True]]
    assert rule(_mask_file(tmp_path, "empty.png", row(0, 0, 0))) == [[False, False, False]]


def test_a_defect_image_with_an_empty_mask_still_counts_as_anomalous(synthetic_tree, tmp_path, capsys):
    m = synthetic_tree / "disc" / "ground_truth" / "dent" / "000_mask.png"
    Image.fromarray(np.zeros_like(np.asarray(Image.open(m)))).save(m)
    _prepare(synthetic_tree, tmp_path / "out")
    rows = [r for r in read_samples(tmp_path / "out" / "disc") if r["split"] == "test"]
    i = next(i for i, r in enumerate(rows) if r["file"].endswith("dent/000.png"))
    assert rows[i]["label"] == "1" and not load_prepared(tmp_path / "out" / "disc", "test_masks")[i].any()
    assert "defect masks mark no pixel inside the crop (e.g. " in capsys.readouterr().err


def test_all_masks_empty_is_an_error_not_nan_pixel_metrics(synthetic_tree, tmp_path):
    for m in synthetic_tree.rglob("*_mask.png"):
        Image.fromarray(np.zeros_like(np.asarray(Image.open(m)))).save(m)
    with pytest.raises(UserError) as e:
        _prepare(synthetic_tree, tmp_path / "out")
    one_line_naming(e, "_mask.png")
    assert "data.crop" in str(e.value) and not (tmp_path / "out").exists()


def test_hidden_and_system_entries_are_ignored_and_counted_in_one_line(synthetic_tree, tmp_path, capsys):
    clean = [(c.name, len(c.train), [(s.image.name, s.defect) for s in c.test])
             for c in load_dataset("folder", synthetic_tree, "all")]
    capsys.readouterr()
    disc = synthetic_tree / "disc"
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        "   # AppleDouble header: not an image
    (disc / "train" / "good" / "._000.png").write_bytes(junk)
    (disc / "test" / "dent" / "._001.png").write_bytes(junk)
    (disc / "ground_truth" / "dent" / "._001_mask.png").write_bytes(junk)
    (disc / "train" / "good" / ".DS_Store").write_bytes(b"\0Bud1")
    (disc / "test" / "good" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (disc / "test" / "good" / "desktop.ini").write_text("[.ShellClassInfo]")
    nb = disc / "test" / ".ipynb_checkpoints"                       # a notebook's folder among the defect types
    shutil.copytree(disc / "test" / "dent", nb)
    (disc / "train" / "good" / "@eaDir").mkdir()                    # a Synology NAS thumbnail folder
    (synthetic_tree / "__MACOSX").mkdir()
    assert [(c.name, len(c.train), [(s.image.name, s.defect) for s in c.test])
            for c in load_dataset("folder", synthetic_tree, "all")] == clean
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "hidden or system" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ignored 9 hidden or system files and folders"), err
    assert "._000.png" in notes[0] and "warning" not in err
    _prepare(synthetic_tree, tmp_path / "out")


def test_other_files_subfolders_and_broken_links_are_reported_in_one_warning(synthetic_tree, capsys):
    good = synthetic_tree / "disc" / "train" / "good"
    (good / "notes.txt").write_text("x")
    (good / "old").mkdir()
    (good / "gone.png").symlink_to(good / "nowhere.png")
    (good / "link.png").symlink_to(good / "000.png")               # a link to an image is read
    (cat,) = load_dataset("folder", synthetic_tree, ["disc"])
    assert good / "link.png" in cat.train and good / "gone.png" not in cat.train
    warns = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: skipped")]
    assert len(warns) == 1 and "skipped 3 entries" in warns[0] and "notes.txt" in warns[0], warns


def _rotated_jpeg(path: Path, upright: np.ndarray, orientation: int) -> None:
    """Store `upright` as a camera does: pixels rotated, with the EXIF tag that turns them back."""
    stored = Image.fromarray(upright).transpose(Image.ROTATE_90 if orientation == 6 else Image.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_to_images_and_masks(synthetic_tree, tmp_path, orientation):
    """A phone / camera JPEG stored rotated with an orientation tag, its mask drawn on the image as
    displayed: read upright, the mask belongs to it (once refused as "does not belong")."""
    disc = synthetic_tree / "disc"
    img = disc / "test" / "dent" / "000.png"
    upright = np.asarray(Image.open(img).convert("RGB").resize((96, 64)))
    mask = np.asarray(Image.open(disc / "ground_truth" / "dent" / "000_mask.png").resize((96, 64), Image.NEAREST))
    img.unlink()
    _rotated_jpeg(disc / "test" / "dent" / "000.jpg", upright, orientation)
    Image.fromarray(mask).save(disc / "ground_truth" / "dent" / "000_mask.png")
    got, size = load_image(disc / "test" / "dent" / "000.jpg", 64, 64)
    assert size == (96, 64)
    stored = Image.open(disc / "test" / "dent" / "000.jpg")
    assert stored.size == (64, 96)
    want = stored.convert("RGB").transpose(Image.ROTATE_270 if orientation == 6 else Image.ROTATE_90)
    assert np.array_equal(got, np.asarray(want.resize((64, 64), Image.BILINEAR)))
    m = load_mask(disc / "ground_truth" / "dent" / "000_mask.png", size, disc / "test" / "dent" / "000.jpg", 64, 64)
    assert m.any()
    # a mask stored rotated with the same tag is read upright too
    _rotated_jpeg(tmp_path / "m.jpg", np.repeat(mask[..., None], 3, 2), orientation)
    assert np.array_equal(load_mask(tmp_path / "m.jpg", size, tmp_path / "x.jpg", 64, 64), m)
    _prepare(synthetic_tree, tmp_path / "out")


def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG that declares w x h pixels in a few bytes (a decompression bomb as Pillow sees it)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_huge_image_is_one_line_naming_file_size_and_param(synthetic_tree, tmp_path):
    bomb = synthetic_tree / "disc" / "test" / "good" / "001.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(UserError) as e:
        _prepare(synthetic_tree, tmp_path / "out")
    msg = one_line_naming(e, "good/001.png")
    assert "20000x20000" in msg and "-S data.max_image_pixels=400000000" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError) as e:   # outside prepare Pillow's own limit stops it first: one line still
        load_image(bomb, 32, 32)
    one_line_naming(e, "good/001.png")
    assert "data.max_image_pixels" in str(e.value)
    # the param admits what it names: a 96x96 image against limits below and at its size
    (synthetic_tree / "disc" / "test" / "good" / "001.png").unlink()
    with pytest.raises(UserError, match="96x96"):
        _prepare(synthetic_tree, tmp_path / "out", max_pixels=96 * 96 - 1)
    _prepare(synthetic_tree, tmp_path / "out", max_pixels=96 * 96)   # (0 or a negative limit: the params schema)


def test_a_mask_for_a_defect_free_image_is_a_warning_naming_it(synthetic_tree, tmp_path, capsys):
    gt_good = synthetic_tree / "disc" / "ground_truth" / "good"
    gt_good.mkdir()
    shutil.copy(synthetic_tree / "disc" / "ground_truth" / "dent" / "000_mask.png", gt_good / "000_mask.png")
    _prepare(synthetic_tree, tmp_path / "out")
    err = capsys.readouterr().err
    assert "warning: 1 mask belongs to defect-free test images and is not used" in err and "good/000_mask.png" in err
    rows = read_samples(tmp_path / "out" / "disc")
    masks = load_prepared(tmp_path / "out" / "disc", "test_masks")
    assert not any(m.any() for r, m in zip([r for r in rows if r["split"] == "test"], masks) if r["label"] == "0")


def test_unreadable_files_and_folders_are_one_line(synthetic_tree):
    """Real permission bits, checked by an unprivileged process (root reads anything)."""
    work = Path(tempfile.mkdtemp(prefix="unreadable-", dir="/tmp"))
    try:
        tree = shutil.copytree(synthetic_tree, work / "tree")
        for d, _, _ in os.walk(work):
            os.chmod(d, 0o755)
        os.chmod(work, 0o755)
        (tree / "weave" / "train" / "good" / "002.png").chmod(0)
        (tree / "disc" / "test" / "dent").chmod(0)
        (work / "writable").mkdir(mode=0o777)
        os.chmod(work / "writable", 0o777)
        code = ("import sys; from pathlib import Path; from anomaly_backbones.runner import run;"
                "from anomaly_backbones.data.datasets import load_dataset as L;"
                "from anomaly_backbones.data.prepare import prepare_dataset as P;"
                f"run(lambda: P(L('folder', '{tree}', [sys.argv[1]]), Path('{work}', sys.argv[2]), 32, 32))")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if prefix and not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permission bits cannot be exercised")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
        for category, out, expect in (("weave", "writable/out", "cannot read image"),
                                      ("disc", "writable/out", "cannot list folder"),
                                      ("weave", "out", "cannot write the prepared data")):
            r = subprocess.run(prefix + [sys.executable, "-c", code, category, out], env=env, capture_output=True,
                               text=True, cwd=work)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            line = r.stderr.strip().splitlines()[-1]
            assert line.startswith(f"error: {expect}") and "ermission denied" in line, r.stderr
    finally:
        for d, _, _ in os.walk(work):
            os.chmod(d, 0o755)
        shutil.rmtree(work)


def test_the_prepare_stage_prints_one_error_line_without_traceback(synthetic_tree, tmp_path):
    """What a user sees from `dvc repro` / the stage script for a decompression-bomb-size image."""
    _png_header_only(synthetic_tree / "weave" / "train" / "good" / "003.png", 20000, 20000)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(dataset="folder", root=str(synthetic_tree))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "02_prepare.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weave/train/good/003.png is 20000x20000" in errors[0], r.stderr
    assert not (tmp_path / "data" / "prepared").exists()
