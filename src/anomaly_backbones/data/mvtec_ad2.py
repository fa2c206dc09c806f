"""MVTec AD 2 (Heckler-Kram, Neudeck, Scheler, König, Steger, arXiv 2503.21622, 2025).

Layout of the released archive (one folder per object):

  <object>/train/good/*.png                          defect-free training images
  <object>/validation/good/*.png                     defect-free validation images (threshold calibration)
  <object>/test_public/good/*.png                    defect-free test images, labelled
  <object>/test_public/bad/*.png                     defect images, labelled
  <object>/test_public/ground_truth/bad/*_mask.png   their masks
  <object>/test_private/*.png                        no public labels: the evaluation server's
  <object>/test_private_mixed/*.png                  test sets (read for prediction only)

The study's test set is `test_public` (the only labelled one). `validation/good` is kept on the
Category (`validation`): with `threshold.source=validation` it is prepared, extracted and scored
as the threshold's calibration set (the SegF1, metrics/threshold.py). `test_private(_mixed)`
(`unlabelled`) is kept for prediction and submission and enters no metric. Images are PNG; their file names carry the lighting condition
(`000_regular.png`, `..._overexposed`, `..._underexposed`, `..._shift_N`), kept as they are.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, list_folders, list_images, pair_masks, shown

CATEGORIES = ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]
LAYOUT = ("MVTec AD 2: <object>/train/good, <object>/validation/good, <object>/test_public/{good,bad}, "
          "<object>/test_public/ground_truth/bad/<stem>_mask.png")
UNLABELLED = ("test_private", "test_private_mixed")


def load_mvtec_ad2(root: Path, categories: list[str] | None, scan: Scan) -> list[Category]:
    """`categories` None: every folder of `root` that has train/good and test_public."""
    if categories is None:
        categories = [d.name for d in list_folders(root, scan)
                      if (d / "train" / "good").is_dir() and (d / "test_public").is_dir()]
        if not categories:
            raise UserError(f"no object in MVTec AD 2 layout under {shown(root)} (expected "
                            f"<object>/train/good and <object>/test_public). Check `data.root`.")
    return [_category(root / c, scan) for c in categories]


def _category(c: Path, scan: Scan) -> Category:
    if not c.is_dir():
        raise UserError(f"object folder {shown(c)} does not exist: check `data.root` and `data.categories` "
                        f"(MVTec AD 2 objects: {', '.join(CATEGORIES)}).")
    train = list_images(c / "train" / "good", scan, LAYOUT)
    if not train:
        raise UserError(f"object {c.name}: no training images in {shown(c / 'train' / 'good')}.")
    public = c / "test_public"
    cat = Category(c.name, train)
    cat.test += [TestSample(p, None, "good") for p in list_images(public / "good", scan, LAYOUT)]
    bad = list_images(public / "bad", scan, LAYOUT)
    gt = public / "ground_truth" / "bad"
    if bad and not gt.is_dir():
        raise UserError(f"object {c.name}: defect images in {shown(public / 'bad')} but no mask folder "
                        f"{shown(gt)} ({LAYOUT}).")
    cat.test += pair_masks(bad, public / "bad", gt, "bad", scan, LAYOUT)
    if (c / "validation" / "good").is_dir():
        cat.validation = list_images(c / "validation" / "good", scan, LAYOUT)
    for name in UNLABELLED:
        if (c / name).is_dir():
            cat.unlabelled += list_images(c / name, scan, LAYOUT)
    return cat
