"""Real-IAD (Wang, Chen, Li, Zhang, Chen, Gan, Wang, Zhou, Jiang, Tang, Hu, CVPR 2024): 30 objects,
each photographed from five views (cameras C1-C5), released in 256, 512 and 1024 px variants.

Layout of the release (the variants share one set of JSON split files):

  <root>/realiad_{256,512,1024}/<object>/OK/<sample>/<object>_<id>_OK_C<v>_<time>.jpg
  <root>/realiad_{256,512,1024}/<object>/NG/<defect>/<sample>/<object>_<id>_NG_C<v>_<time>.jpg (+ .png mask)
  <root>/realiad_jsons/<split folder>/<object>.json

`data.root` is the Real-IAD folder holding exactly one `realiad_<px>` folder, or one
`realiad_<px>` folder itself (its parent holds `realiad_jsons`): the variant is where it points.
The JSON split file is the split: {"meta": {"prefix": ..., "normal_class": "OK"}, "train":
[e, ...], "test": [e, ...]} with e = {"category", "anomaly_class", "image_path", "mask_path"};
paths relative to the object folder (after meta.prefix). Images it does not list are not used. An
image's label is its own `anomaly_class` (a view of a defective object that does not show the
defect is OK).

`data.real_iad_setting` picks the split folder (all ship in realiad_jsons.zip; the authors' UniAD
configs, Tencent/AnomalyDetection_Real-IAD experiments/, read the same files):
  multi_view  realiad_jsons            the multi-view one-class setting (default)
  single_view realiad_jsons_sv         the single-view setting (camera C1 only)
  fuiad_<r>   realiad_jsons_fuiad_<r>  fully unsupervised (FUIAD), r = 0.0, 0.1, 0.2, 0.4: the
              training set is contaminated on purpose with defective images (anomaly_class other
              than meta.normal_class) at noise ratio r. They stay in train, unlabelled, as the
              authors' loader treats every training image as normal: that is the setting. Their
              count is printed. In the other settings a defective training image is an error.

Views are kept apart: every image is one test sample; its view (C1-C5) and its object (the
<sample> folder, which holds the five views) come from its path (`view_of`, `object_of`). The fit
stage reports image-level scores per view, and per object: an object's score is the maximum of
its views' scores and the object is defective if any of its views is (the release's sample-level
rule; `object_scores`).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from ..errors import UserError
from .layout import Category, Scan, TestSample, shown

CATEGORIES = ["audiojack", "bottle_cap", "button_battery", "end_cap", "eraser", "fire_hood", "mint", "mounts",
              "pcb", "phone_battery", "plastic_nut", "plastic_plug", "porcelain_doll", "regulator",
              "rolled_strip_base", "sim_card_set", "switch", "tape", "terminalblock", "toothbrush", "toy",
              "toy_brick", "transistor1", "u_block", "usb", "usb_adaptor", "vcpill", "wooden_beads", "woodstick",
              "zipper"]
VARIANTS = ("realiad_256", "realiad_512", "realiad_1024")
JSONS = Path("realiad_jsons")     # the unpacked realiad_jsons.zip: one folder per setting
SETTINGS = {"multi_view": "realiad_jsons", "single_view": "realiad_jsons_sv",
            **{f"fuiad_{r}": f"realiad_jsons_fuiad_{r}" for r in ("0.0", "0.1", "0.2", "0.4")}}
VIEW = re.compile(r"_(C[1-5])_")


def view_of(path: str | Path) -> str:
    """The camera (C1-C5) of a Real-IAD image, from its file name."""
    m = VIEW.search(Path(path).name)
    if m is None:
        raise UserError(f"Real-IAD image {shown(path)} has no view (_C1_ ... _C5_) in its name.")
    return m.group(1)


def object_of(path: str | Path) -> str:
    """The object a Real-IAD image shows: its sample folder, which holds the object's five views."""
    return str(Path(path).parent)


def object_scores(files: list[str], labels, scores) -> tuple[list[str], list[int], list[float]]:
    """Per object (in order of first appearance): (object, label = 1 if any view is defective,
    score = max over its views)."""
    out: dict[str, list] = {}
    for f, y, s in zip(files, labels, scores):
        o = out.setdefault(object_of(f), [0, float("-inf")])
        o[0], o[1] = max(o[0], int(y)), max(o[1], float(s))
    return list(out), [v[0] for v in out.values()], [v[1] for v in out.values()]


def _roots(root: Path, setting: str) -> tuple[Path, Path]:
    """(image folder realiad_<px>, folder of the JSON split files of `setting`)."""
    if root.name in VARIANTS:
        images, base = root, root.parent
    else:
        found = [root / v for v in VARIANTS if (root / v).is_dir()]
        if len(found) != 1:
            what = ", ".join(p.name for p in found) if found else f"none of {', '.join(VARIANTS)}"
            raise UserError(f"`data.root` {shown(root)} holds {what}: point `data.root` at the Real-IAD folder "
                            f"with one variant, or at the variant itself (e.g. {shown(root / VARIANTS[0])}).")
        images, base = found[0], root
    if setting not in SETTINGS:
        raise UserError(f"`data.real_iad_setting` {setting!r} is not one of {', '.join(SETTINGS)}.")
    splits = base / JSONS / SETTINGS[setting]
    if not splits.is_dir():
        raise UserError(f"Real-IAD split files {shown(splits)} (data.real_iad_setting={setting}) are missing: they "
                        f"ship as realiad_jsons.zip next to the image archives; unpack it in {shown(base)}.")
    return images, splits


def load_real_iad(root: Path, categories: list[str] | None, scan: Scan,
                  setting: str = "multi_view") -> list[Category]:
    """`categories` None: the 30 objects. Train and test in the JSON's order; `setting` picks the
    split folder (module docstring); in the FUIAD settings train holds the JSON's defective
    training images too."""
    images, splits = _roots(root, setting)
    contaminated = setting.startswith("fuiad_")
    out = []
    for name in categories or CATEGORIES:
        table = splits / f"{name}.json"
        if not table.is_file():
            raise UserError(f"{shown(table)} is missing: check `data.categories` (Real-IAD: "
                            f"{', '.join(CATEGORIES)}) and the unpacked realiad_jsons.")
        try:
            doc = json.loads(table.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {shown(table)} as JSON ({type(e).__name__}: {e}).") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("train"), list) or not isinstance(doc.get("test"), list):
            raise UserError(f"{shown(table)} must hold an object with lists `train` and `test`: is it a Real-IAD "
                            f"split file?")
        meta = doc.get("meta") or {}
        prefix, normal = str(meta.get("prefix") or ""), str(meta.get("normal_class") or "OK")
        cat, n_bad_train = Category(name, []), 0
        folder = images / name
        for split in ("train", "test"):
            for i, e in enumerate(doc[split]):
                where = f"{shown(table)}, {split}[{i}]"
                if not isinstance(e, dict) or "image_path" not in e or "anomaly_class" not in e:
                    raise UserError(f"{where}: expected an entry with image_path and anomaly_class.")
                img = _file(folder, prefix, e["image_path"], where, "image")
                good = e["anomaly_class"] == normal
                if split == "train":
                    if not good and not contaminated:
                        raise UserError(f"{where}: defective image {shown(img)} in the training split: the "
                                        f"one-class training set must be defect-free.")
                    n_bad_train += not good
                    cat.train.append(img)
                elif good:
                    if e.get("mask_path"):
                        scan.good_masks.append(folder / prefix / e["mask_path"])
                    cat.test.append(TestSample(img, None, "good"))
                elif not e.get("mask_path"):
                    raise UserError(f"{where}: defective image {shown(img)} has no mask_path.")
                else:
                    cat.test.append(TestSample(img, _file(folder, prefix, e["mask_path"], where, "mask"),
                                               str(e["anomaly_class"])))
        if not cat.train or not cat.test:
            raise UserError(f"{shown(table)} lists no {'training' if not cat.train else 'test'} image.")
        for s in cat.test:
            view_of(s.image)
        if contaminated:
            print(f"note: Real-IAD {setting} {name}: {n_bad_train} of {len(cat.train)} training images are defective, "
                  f"kept in train (the fully unsupervised setting)", file=sys.stderr)
        out.append(cat)
    return out


def _file(folder: Path, prefix: str, rel, where: str, what: str) -> Path:
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise UserError(f"{where}: {what} path {rel!r} must be relative to the object folder.")
    p = folder / prefix / rel.replace("\\", "/")
    if not p.is_file():
        raise UserError(f"{where}: {what} {shown(p)} does not exist: the Real-IAD copy is incomplete, or the "
                        f"split file belongs to another variant or `data.root`.")
    return p
