"""The MVTec AD layout (MVTec AD, MPDD, the embedded synthetic data, any `folder`):

  <category>/train/good/*            defect-free training images
  <category>/test/good/*             defect-free test images
  <category>/test/<type>/*           defect images of one type
  <category>/ground_truth/<type>/*   their masks, `<image stem>_mask.png` (or `<image stem>.<ext>`)

A `ground_truth/good` folder is not part of the layout: its masks are reported and not used.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, list_folders, list_images, pair_masks, shown

LAYOUT = "MVTec: <category>/train/good, <category>/test/<type>, <category>/ground_truth/<type>"


def load_mvtec_layout(root: Path, categories: list[str] | None, scan: Scan) -> list[Category]:
    """`categories` None: every folder of `root` that has train/good."""
    if categories is None:
        categories = [d.name for d in list_folders(root, scan) if (d / "train" / "good").is_dir()]
        if not categories:
            raise UserError(f"no category in MVTec layout under {shown(root)} (expected <category>/train/good). "
                            f"Check `data.root`.")
    return [_category(root / c, scan) for c in categories]


def _category(c: Path, scan: Scan) -> Category:
    if not c.is_dir():
        raise UserError(f"category folder {shown(c)} does not exist: check `data.root` and `data.categories`.")
    train = list_images(c / "train" / "good", scan, LAYOUT)
    if not train:
        raise UserError(f"category {c.name}: no training images in {shown(c / 'train' / 'good')}; "
                        f"add defect-free images or drop the category from `data.categories`.")
    test_dir = c / "test"
    types = list_folders(test_dir, scan) if test_dir.is_dir() else []
    if not types:
        raise UserError(f"category {c.name}: no test folders in {shown(test_dir)} (expected test/good and "
                        f"test/<defect type>).")
    cat = Category(c.name, train)
    for t in types:
        images = list_images(t, scan, LAYOUT)
        if t.name == "good":
            cat.test += [TestSample(p, None, "good") for p in images]
        elif images:
            gt = c / "ground_truth" / t.name
            if not gt.is_dir():
                raise UserError(f"defect type {t.name!r} of category {c.name} has no mask folder {shown(gt)}: "
                                f"add its masks (<image stem>_mask.png) for pixel metrics.")
            cat.test += pair_masks(images, t, gt, t.name, scan, LAYOUT)
    if (c / "ground_truth" / "good").is_dir():
        scan.good_masks += list_images(c / "ground_truth" / "good", scan, LAYOUT)
    if not cat.test:
        raise UserError(f"category {c.name}: the test folders under {shown(test_dir)} hold no images.")
    return cat
