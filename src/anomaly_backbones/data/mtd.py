"""Magnetic Tile Defects (Huang, Qiu, Yuan, The Visual Computer 2020) with the DifferNet /
PatchCore split: `MT_<type>/Imgs/<name>.jpg` with its mask `<name>.png` beside it; the 761
defect-free images named in `differnet_train_filenames.txt` train, the other defect-free
images and every defect image test. One category, `magnetic_tile`.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, list_images, shown

DEFECTS = ["MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"]
SPLIT_FILE = "differnet_train_filenames.txt"
LAYOUT = "magnetic tile: MT_Free/Imgs, MT_<defect>/Imgs with <name>.jpg and its mask <name>.png"


def load_mtd(root: Path, categories: list[str] | None, scan: Scan) -> list[Category]:
    if categories not in (None, ["magnetic_tile"]):
        raise UserError(f"`data.categories` must be all/null for data.dataset=mtd (one category, magnetic_tile), "
                        f"not {categories}")
    split = root / SPLIT_FILE
    if not split.exists():
        raise UserError(f"{shown(split)} is missing: the magnetic-tile split lists the 761 training images "
                        f"(published with DifferNet). Put it in `data.root`.")
    names = set(split.read_text(errors="replace").split())
    free = list_images(root / "MT_Free" / "Imgs", scan, LAYOUT, {".jpg"}, {".png"})  # .png: the masks beside
    train = [p for p in free if p.name in names]
    missing = names - {p.name for p in train}
    if missing:
        raise UserError(f"{shown(split)} names {len(missing)} images not in {shown(root / 'MT_Free' / 'Imgs')} "
                        f"(e.g. {sorted(missing)[0]}): the dataset copy is incomplete.")
    cat = Category("magnetic_tile", train, [TestSample(p, None, "good") for p in free if p.name not in names])
    for d in DEFECTS:
        for p in list_images(root / d / "Imgs", scan, LAYOUT, {".jpg"}, {".png"}):
            m = p.with_suffix(".png")
            if not m.exists():
                raise UserError(f"defect image {shown(p)} has no mask {shown(m)}: the dataset copy is incomplete.")
            cat.test.append(TestSample(p, m, d.removeprefix("MT_").lower()))
    return [cat]
