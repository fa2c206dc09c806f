"""Prepared data: per category, fixed-size uint8 images, boolean masks and a sample table.

Layout of one category folder (what the extract and fit stages read):
  train_images.npy (N,S,S,3) uint8 · test_images.npy · test_masks.npy (M,S,S) bool
  samples.csv: split, index, file, label (0 good / 1 defect), defect type
"""
from __future__ import annotations

import csv
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from .datasets import Category
from .images import load_image, load_mask


def prepare_category(cat: Category, out: Path, resize: int, crop: int) -> dict:
    """Writes into a temporary folder and renames it at the end: a half-written category never exists."""
    if crop > resize:
        raise UserError(f"`data.crop` ({crop}) is larger than `data.resize` ({resize}): crop must be <= resize.")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    train = np.lib.format.open_memmap(tmp / "train_images.npy", "w+", np.uint8, (len(cat.train), crop, crop, 3))
    n = len(cat.test)
    test = np.lib.format.open_memmap(tmp / "test_images.npy", "w+", np.uint8, (n, crop, crop, 3))
    masks = np.lib.format.open_memmap(tmp / "test_masks.npy", "w+", np.bool_, (n, crop, crop))

    def test_sample(s):
        image, size = load_image(s.image, resize, crop)
        return image, load_mask(s.mask, size, s.image, resize, crop)

    # PIL decodes and resizes without the GIL: threads use every core; map keeps the order, and
    # the first bad file (in order) raises its UserError here
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        loaded = pool.map(lambda p: load_image(p, resize, crop)[0], cat.train)
        for i, (p, image) in enumerate(tqdm(zip(cat.train, loaded), total=len(cat.train),
                                            desc=f"prepare {cat.name} train", unit="img", leave=False)):
            train[i] = image
            rows.append(("train", i, str(p), 0, "good"))
        loaded = pool.map(test_sample, cat.test)
        for i, (s, (image, mask)) in enumerate(tqdm(zip(cat.test, loaded), total=n,
                                                    desc=f"prepare {cat.name} test", unit="img", leave=False)):
            test[i], masks[i] = image, mask
            rows.append(("test", i, str(s.image), int(s.defect != "good"), s.defect))
    labels = [r[3] for r in rows if r[0] == "test"]
    if 0 not in labels or 1 not in labels:
        raise UserError(f"category {cat.name}: the test set needs both defect-free and defective images "
                        f"for ROC-AUC (found {sum(labels)} defective of {len(labels)}).")
    for a in (train, test, masks):
        a.flush()
    del train, test, masks
    with open(tmp / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["split", "index", "file", "label", "defect"])
        w.writerows(rows)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"category": cat.name, "train": len(cat.train), "test": n, "defective": int(sum(labels))}


def read_samples(category_dir: Path) -> list[dict]:
    with open(category_dir / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_prepared(category_dir: Path, split: str, mmap: bool = True) -> np.ndarray:
    return np.load(category_dir / f"{split}.npy", mmap_mode="r" if mmap else None)
