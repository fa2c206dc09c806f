"""VisA (Zou et al., ECCV 2022) with its official one-class split.

Layout of the archive: `<object>/Data/Images/{Normal,Anomaly}/*.JPG`, `<object>/Data/Masks/Anomaly/*.png`
and `split_csv/1cls.csv` with the columns object, split (train | test), label (normal | anomaly),
image, mask (paths relative to the root; the mask cell is empty for normal images). The CSV is the
split: images it does not list are not used. VisA's masks are label images (0 background, 1, 2...
for defects): the mask rule in `images.defect_pixels` reads them.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, shown

CATEGORIES = ["candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
              "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"]
SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ["object", "split", "label", "image", "mask"]


def load_visa(root: Path, categories: list[str] | None, scan: Scan) -> list[Category]:
    """`categories` None: the 12 VisA objects. Train images sorted by path; test images sorted by
    path, defect-free first."""
    table = root / SPLIT_CSV
    if not table.is_file():
        raise UserError(f"{shown(table)} is missing: VisA's one-class split ships in the VisA archive "
                        f"(`python -m anomaly_backbones download visa <dir>`); check `data.root`.")
    cats = {name: Category(name, []) for name in (categories or CATEGORIES)}
    listed: dict[Path, int] = {}
    try:
        with open(table, newline="", encoding="utf-8-sig") as f:    # -sig: a CSV saved by Excel starts with a BOM
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {shown(table)} as CSV ({e.__class__.__name__}: {e}).") from None
    if not rows or [c.strip().lower() for c in rows[0]] != COLUMNS:
        raise UserError(f"{shown(table)} must start with the header {','.join(COLUMNS)}, not "
                        f"{','.join(rows[0]) if rows else '(empty file)'!r}: is it VisA's split_csv/1cls.csv?")
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{shown(table)}, line {line}"
        if len(row) != len(COLUMNS):
            raise UserError(f"{where}: {len(row)} columns, expected {len(COLUMNS)} ({', '.join(COLUMNS)}).")
        obj, split, label, image, mask = (cell.strip() for cell in row)
        if obj not in cats:
            continue
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            raise UserError(f"{where}: split {split!r} / label {label!r}; expected train or test / normal or "
                            f"anomaly.")
        img = _file(root, image, where, "image")
        if img in listed:
            raise UserError(f"{where}: image {shown(img)} is already listed on line {listed[img]}: an image "
                            f"belongs to one split once.")
        listed[img] = line
        if label == "normal":
            if mask:
                scan.good_masks.append(root / mask)
            if split == "train":
                cats[obj].train.append(img)
            else:
                cats[obj].test.append(TestSample(img, None, "good"))
        elif split == "train":
            raise UserError(f"{where}: anomalous image {shown(img)} in the training split: the one-class "
                            f"training set must be defect-free. Use VisA's 1cls.csv.")
        elif not mask:
            raise UserError(f"{where}: anomalous image {shown(img)} has an empty mask cell: add its mask path "
                            f"(<object>/Data/Masks/Anomaly/<name>.png).")
        else:
            cats[obj].test.append(TestSample(img, _file(root, mask, where, "mask"), "anomaly"))
    for c in cats.values():
        if not c.train or not c.test:
            raise UserError(f"{shown(table)} lists no {'training' if not c.train else 'test'} image for object "
                            f"{c.name!r}: check `data.categories` (VisA: {', '.join(CATEGORIES)}) and the CSV.")
        c.train.sort()
        c.test.sort(key=lambda s: (s.mask is not None, s.image))
    return list(cats.values())


def _file(root: Path, rel: str, where: str, what: str) -> Path:
    p = root / rel.replace("\\", "/")
    if not p.is_file():
        raise UserError(f"{where}: {what} {shown(p)} does not exist: the VisA copy is incomplete (download it "
                        f"again) or the CSV does not belong to `data.root`.")
    return p
