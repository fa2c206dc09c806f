"""Dataset layouts -> a list of categories, each with train and test samples.

Supported: `mvtec` (the 15 MVTec AD categories), `folder` (any MVTec-layout folder; the
embedded synthetic data is one), and `mtd` (Magnetic Tile Defects, Huang et al., "Saliency
of magnetic tile surface defects", with the DifferNet/PatchCore split). Loading validates
the layout and pairs every defect image with its mask, naming any file that breaks it.
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}

MVTEC_CATEGORIES = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper"]
MVTEC_URL = ("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
             "420938113-1629952094/mvtec_anomaly_detection.tar.xz")
MTD_DEFECTS = ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]
MTD_SPLIT_FILE = "differnet_train_filenames.txt"


@dataclass
class TestSample:
    image: Path
    mask: Path | None       # None: defect-free, or a defect type without masks (then `defect` is set)
    defect: str             # "good" for defect-free


@dataclass
class Category:
    name: str
    train: list[Path]
    test: list[TestSample] = field(default_factory=list)


def _images(folder: Path, exts: set[str] = IMAGE_EXTS, others: set[str] = frozenset()) -> list[Path]:
    """Image files of a folder, sorted; other files (not in `others`) are reported and skipped,
    duplicate names refused."""
    if not folder.is_dir():
        raise UserError(f"expected folder {folder} is missing: check `data.root` and the dataset layout "
                        f"(MVTec: <category>/train/good, <category>/test/<type>, <category>/ground_truth/<type>).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name not in IGNORED_NAMES)
    images = [p for p in files if p.suffix.lower() in exts]
    for p in files:
        if p.suffix.lower() not in exts | others and not p.name.startswith("."):
            print(f"warning: skipping non-image file {p}", file=sys.stderr)
    dup = [s for s, c in Counter(p.stem for p in images).items() if c > 1]
    if dup:
        clash = [str(p) for p in images if p.stem == dup[0]]
        raise UserError(f"duplicate image name {dup[0]!r} in {folder}: {clash}. Keep one file per name "
                        f"(masks are paired by name).")
    return images


def _mvtec_category(c: Path) -> Category:
    if not c.is_dir():
        raise UserError(f"category folder {c} does not exist: check `data.root` and `data.categories`.")
    train = _images(c / "train" / "good")
    if not train:
        raise UserError(f"category {c.name}: no training images in {c / 'train' / 'good'}; "
                        f"add defect-free images or drop the category from `data.categories`.")
    test_dir = c / "test"
    types = sorted(d for d in (test_dir.iterdir() if test_dir.is_dir() else []) if d.is_dir())
    if not types:
        raise UserError(f"category {c.name}: no test folders in {test_dir} (expected test/good and "
                        f"test/<defect type>).")
    cat = Category(c.name, train)
    for t in types:
        images = _images(t)
        if t.name == "good":
            cat.test += [TestSample(p, None, "good") for p in images]
            continue
        gt = c / "ground_truth" / t.name
        masks = {p.stem: p for p in _images(gt)} if gt.is_dir() else {}
        if not gt.is_dir():
            raise UserError(f"defect type {t.name!r} of category {c.name} has no mask folder {gt}: "
                            f"add its masks (<image stem>_mask.png) for pixel metrics.")
        stems = {p.stem for p in images}
        for p in images:
            m = masks.get(f"{p.stem}_mask") or masks.get(p.stem)
            if m is None:
                raise UserError(f"defect image {p} has no mask: expected {gt / (p.stem + '_mask.png')}. "
                                f"Add the mask, or move the image out of the test set.")
            cat.test.append(TestSample(p, m, t.name))
        orphans = [m for s, m in masks.items() if s.removesuffix("_mask") not in stems and s not in stems]
        if orphans:
            raise UserError(f"mask {orphans[0]} has no image in {t} (expected {t / orphans[0].stem.removesuffix('_mask')}"
                            f".png): remove the mask or add its image.")
    if not cat.test:
        raise UserError(f"category {c.name}: the test folders under {test_dir} hold no images.")
    return cat


def load_mvtec_layout(root: Path, categories: list[str] | None) -> list[Category]:
    if categories is None:
        categories = sorted(d.name for d in root.iterdir() if (d / "train" / "good").is_dir())
        if not categories:
            raise UserError(f"no category in MVTec layout under {root} (expected <category>/train/good). "
                            f"Check `data.root`.")
    return [_mvtec_category(root / c) for c in categories]


def load_mtd(root: Path, categories: list[str] | None) -> list[Category]:
    split = root / MTD_SPLIT_FILE
    if not split.exists():
        raise UserError(f"{split} is missing: the magnetic-tile split lists the 761 training images "
                        f"(published with DifferNet). Put it in `data.root`.")
    names = set(split.read_text().split())
    free = _images(root / "MT_Free" / "Imgs", {".jpg"}, {".png"})  # .png: the masks beside the images
    train = [p for p in free if p.name in names]
    missing = names - {p.name for p in train}
    if missing:
        raise UserError(f"{split} names {len(missing)} images not in {root / 'MT_Free' / 'Imgs'} "
                        f"(e.g. {sorted(missing)[0]}): the dataset copy is incomplete.")
    cat = Category("magnetic_tile", train, [TestSample(p, None, "good") for p in free if p.name not in names])
    for d in MTD_DEFECTS:
        for p in _images(root / d / "Imgs", {".jpg"}, {".png"}):
            m = p.with_suffix(".png")
            if not m.exists():
                raise UserError(f"defect image {p} has no mask {m}: the dataset copy is incomplete.")
            cat.test.append(TestSample(p, m, d.removeprefix("MT_").lower()))
    if categories not in (None, ["magnetic_tile"]):
        raise UserError(f"`data.categories` must be all/null for data.dataset=mtd (one category), not {categories}")
    return [cat]


def load_dataset(dataset: str, root: str | Path, categories) -> list[Category]:
    """Entry point: validate params, then the layout."""
    root = Path(root)
    if categories in ("all", None):
        categories = None
    elif isinstance(categories, str):
        categories = [categories]
    elif not isinstance(categories, list):
        raise UserError(f"`data.categories` must be 'all' or a list of names, not {categories!r}")
    if not root.is_dir():
        hint = f" Download MVTec AD with `make mvtec` (from {MVTEC_URL})." if dataset == "mvtec" else ""
        raise UserError(f"`data.root` {root} is not a folder.{hint}")
    if dataset == "mvtec":
        return load_mvtec_layout(root, categories or MVTEC_CATEGORIES)
    if dataset in ("folder", "synthetic"):
        return load_mvtec_layout(root, categories)
    if dataset == "mtd":
        return load_mtd(root, categories)
    raise UserError(f"unknown `data.dataset` {dataset!r}: use synthetic, folder, mvtec or mtd.")
