"""Prepared data: per category, fixed-size uint8 images, boolean masks and a sample table.

Layout of the prepared folder (what the extract and fit stages read):
  categories.json: [{category, train, test, defective}, ...]
  <category>/train_images.npy (N,S,S,3) uint8 · test_images.npy · test_masks.npy (M,S,S) bool
  <category>/samples.csv: split, index, file, label (0 good / 1 defect), defect type
With `validation` (threshold.source=validation) also each category's defect-free validation images
(MVTec AD 2's validation/good): <category>/validation_images.npy (V,S,S,3), samples.csv rows of
split "validation", and `validation` (V) in categories.json; without it nothing of that exists.
"""
from __future__ import annotations

import csv
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..files import write_json
from .images import MAX_IMAGE_PIXELS, load_image, load_mask, pixel_limit_from_param
from .layout import Category, shown


def prepare_dataset(categories: list[Category], out: Path, resize: int, crop: int,
                    max_pixels: int = MAX_IMAGE_PIXELS, validation: bool = False) -> list[dict]:
    """Every category into `out` (removed first), then categories.json. On any failure `out` is
    removed: a run leaves the whole prepared folder or none. Refused when no mask of any category
    marks a defect pixel inside the crop (every pixel metric would be undefined), and, with
    `validation`, before anything is touched, when a category has no validation image."""
    bare = next((c for c in categories if not c.validation), None) if validation else None
    if bare is not None:
        raise UserError(f"`threshold.source` = validation needs the dataset's defect-free validation images "
                        f"(MVTec AD 2: <object>/validation/good) and category {bare.name} has none: calibrate on "
                        f"a hold-out of train/good instead: -S threshold.source=holdout -S threshold.holdout=0.1")
    try:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"cannot write the prepared data to {shown(out)} ({e.strerror}): check the folder's "
                        f"permissions and free disk.") from None
    try:
        with pixel_limit_from_param():
            summary = [prepare_category(c, out / c.name, resize, crop, max_pixels, validation) for c in categories]
        if not any(load_prepared(out / c.name, "test_masks").any() for c in categories):
            raise UserError(f"no mask of {', '.join(c.name for c in categories)} marks a defect pixel inside the "
                            f"{crop}x{crop} center crop: every pixel metric would be undefined. Check the masks "
                            f"(e.g. {shown(_first_mask(categories))}) against the mask rule (docs/datasets.md) "
                            f"and `data.crop`.")
        write_json(out / "categories.json", summary)
    except OSError as e:   # reading a file fails as a UserError (images.py): this is writing
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(f"cannot write the prepared data to {shown(out)} ({e.__class__.__name__}: {e}): check "
                        f"free disk and permissions.") from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return summary


def _first_mask(categories: list[Category]) -> Path | str:
    return next((s.mask for c in categories for s in c.test if s.mask is not None), "(none)")


def prepare_category(cat: Category, out: Path, resize: int, crop: int, max_pixels: int = MAX_IMAGE_PIXELS,
                     validation: bool = False) -> dict:
    """Writes into a temporary folder and renames it at the end: a half-written category never exists."""
    if crop > resize:
        raise UserError(f"`data.crop` ({crop}) is larger than `data.resize` ({resize}): crop must be <= resize.")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        summary = _write_category(cat, tmp, resize, crop, max_pixels)
        if validation:
            summary["validation"] = _write_validation(cat, tmp, resize, crop, max_pixels)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return summary


def _write_category(cat: Category, tmp: Path, resize: int, crop: int, max_pixels: int) -> dict:
    rows = []
    train = np.lib.format.open_memmap(tmp / "train_images.npy", "w+", np.uint8, (len(cat.train), crop, crop, 3))
    n = len(cat.test)
    test = np.lib.format.open_memmap(tmp / "test_images.npy", "w+", np.uint8, (n, crop, crop, 3))
    masks = np.lib.format.open_memmap(tmp / "test_masks.npy", "w+", np.bool_, (n, crop, crop))
    blank, full = [], []   # defect images whose mask marks no pixel / every pixel inside the crop

    def test_sample(s):
        image, size = load_image(s.image, resize, crop, max_pixels)
        return image, load_mask(s.mask, size, s.image, resize, crop, max_pixels)

    # PIL decodes and resizes without the GIL: threads use every core; map keeps the order, and
    # the first bad file (in order) raises its UserError here
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda p: load_image(p, resize, crop, max_pixels)[0], cat.train)
        for i, (p, image) in enumerate(tqdm(zip(cat.train, loaded), total=len(cat.train),
                                            desc=f"prepare {cat.name} train", unit="img", leave=False)):
            train[i] = image
            rows.append(("train", i, str(p), 0, "good"))
        loaded = pool.map(test_sample, cat.test)
        for i, (s, (image, mask)) in enumerate(tqdm(zip(cat.test, loaded), total=n,
                                                    desc=f"prepare {cat.name} test", unit="img", leave=False)):
            test[i], masks[i] = image, mask
            rows.append(("test", i, str(s.image), int(s.defect != "good"), s.defect))
            if s.mask is not None:
                (blank if not mask.any() else full if mask.all() else []).append(s.mask)
    labels = [r[3] for r in rows if r[0] == "test"]
    if 0 not in labels or 1 not in labels:
        where = f", e.g. in {shown(cat.test[0].image.parent)}" if cat.test else ""
        raise UserError(f"category {cat.name}: the test set needs both defect-free and defective images "
                        f"for ROC-AUC (found {sum(labels)} defective of {len(labels)}{where}).")
    _note_masks(cat.name, blank, full, sum(labels))
    for a in (train, test, masks):
        a.flush()
    del train, test, masks
    with open(tmp / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "index", "file", "label", "defect"])
        w.writerows(rows)
    return {"category": cat.name, "train": len(cat.train), "test": n, "defective": int(sum(labels))}


def _write_validation(cat: Category, tmp: Path, resize: int, crop: int, max_pixels: int) -> int:
    """validation_images.npy and samples.csv's "validation" rows (label 0, "good"); returns V."""
    images = np.lib.format.open_memmap(tmp / "validation_images.npy", "w+", np.uint8,
                                       (len(cat.validation), crop, crop, 3))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda p: load_image(p, resize, crop, max_pixels)[0], cat.validation)
        for i, image in enumerate(tqdm(loaded, total=len(cat.validation), desc=f"prepare {cat.name} validation",
                                       unit="img", leave=False)):
            images[i] = image
    images.flush()
    del images
    with open(tmp / "samples.csv", "a", newline="") as f:
        csv.writer(f).writerows(("validation", i, str(p), 0, "good") for i, p in enumerate(cat.validation))
    return len(cat.validation)


def _note_masks(name: str, blank: list[Path], full: list[Path], defective: int) -> None:
    if blank:
        print(f"note: category {name}: {len(blank)} of {defective} defect masks mark no pixel inside the crop "
              f"(e.g. {shown(blank[0])}); those images still count as defective.", file=sys.stderr)
    if full:
        print(f"warning: category {name}: {len(full)} defect masks mark every pixel of the crop as defect "
              f"(e.g. {shown(full[0])}): is the mask inverted (defect must be the bright or non-zero value)?",
              file=sys.stderr)


def read_samples(category_dir: Path) -> list[dict]:
    with open(category_dir / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_prepared(category_dir: Path, split: str, mmap: bool = True) -> np.ndarray:
    return np.load(category_dir / f"{split}.npy", mmap_mode="r" if mmap else None)
