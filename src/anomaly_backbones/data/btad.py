"""BTAD, the beanTech Anomaly Detection dataset (Mishra et al., ISIE 2021), three products:

  <nn>/train/ok/*           defect-free training images      (nn: 01, 02, 03)
  <nn>/test/ok/*            defect-free test images
  <nn>/test/ko/*            defect images
  <nn>/ground_truth/ko/*    their masks, named like the image: `<stem>.png` or `<stem>.bmp`

Images and masks come as .bmp and .png (product 03's masks are .bmp); any image extension
and case is read. Masks in a `ground_truth/ok` folder are reported and not used.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, list_folders, list_images, pair_masks, shown

CATEGORIES = ["01", "02", "03"]
LAYOUT = "BTAD: <nn>/train/ok, <nn>/test/ok, <nn>/test/ko, <nn>/ground_truth/ko"


def load_btad(root: Path, categories: list[str] | None, scan: Scan) -> list[Category]:
    """`categories` None: the three products."""
    return [_product(root / c, scan) for c in categories or CATEGORIES]


def _product(c: Path, scan: Scan) -> Category:
    if not c.is_dir():
        raise UserError(f"product folder {shown(c)} does not exist: check `data.root` and `data.categories` "
                        f"(BTAD: {', '.join(CATEGORIES)}; quote them: -S 'data.categories=[\"01\"]').")
    train = list_images(c / "train" / "ok", scan, LAYOUT)
    if not train:
        raise UserError(f"product {c.name}: no training images in {shown(c / 'train' / 'ok')}.")
    for d in list_folders(c / "test", scan) if (c / "test").is_dir() else []:
        if d.name not in ("ok", "ko"):
            scan.skipped.append(d)
    good = [TestSample(p, None, "good") for p in list_images(c / "test" / "ok", scan, LAYOUT)]
    bad = list_images(c / "test" / "ko", scan, LAYOUT)
    if (c / "ground_truth" / "ok").is_dir():
        scan.good_masks += list_images(c / "ground_truth" / "ok", scan, LAYOUT)
    gt = c / "ground_truth" / "ko"
    return Category(c.name, train, good + pair_masks(bad, c / "test" / "ko", gt, "ko", scan, LAYOUT, "{stem}.png"))
