"""The datasets `data.dataset` names (a registry as data) and `load_dataset`, the entry point:
params checked, the layout read, every defect image paired with its mask, anything that breaks
the layout named in one line.

Each entry: its layout's loader, its official categories (the default for `data.categories:
all`; None: every category the folder holds), the paper to cite, and where to download it
(`python -m anomaly_backbones download <name> <dir>`, see `download.py`).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError
from . import btad, mtd, mvtec, mvtec_ad2, real_iad, visa
from .layout import Category, Scan, is_clutter, shown


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str        # published by anomalib's DownloadInfo (the dataset authors publish none)
    marker: str        # a path inside the unpacked dataset root that identifies it


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    load: Callable[[Path, list[str] | None, Scan], list[Category]]
    categories: tuple[str, ...] | None
    cite: str = ""
    home: str = ""                  # the authors' page (where `download` sends users without an archive)
    archive: Archive | None = None  # None: no direct download
    by_hand: str = ""               # without an archive: how to get it ({home}, {dest} filled in)
    pro_fpr_limits: tuple[float, ...] = ()   # AU-PRO limits its authors report besides `metrics.pro_fpr_limit`
    views: bool = False             # several views per object: per-view and per-object scores (real_iad)
    settings: tuple[str, ...] = ()  # split settings its loader takes as `setting` (the first = default)

    @property
    def downloadable(self) -> bool:
        """`python -m anomaly_backbones download <name>` fetches it (archive) or says how (home)."""
        return bool(self.archive or self.home)


MVTEC_CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
                    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
MPDD_CATEGORIES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")

DATASETS = {d.name: d for d in [
    Dataset("synthetic", "the embedded synthetic data", mvtec.load_mvtec_layout, None),
    Dataset("folder", "a folder in MVTec layout", mvtec.load_mvtec_layout, None),
    Dataset("mvtec", "MVTec AD", mvtec.load_mvtec_layout, MVTEC_CATEGORIES,
            "Bergmann, Batzner, Fauser, Sattlegger, Steger, IJCV 129, 2021; CVPR 2019",
            "https://www.mvtec.com/company/research/datasets/mvtec-ad",
            Archive("https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f283/download/"
                    "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
                    "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d", "bottle/train/good")),
    Dataset("mtd", "Magnetic Tile Defects", mtd.load_mtd, ("magnetic_tile",),
            "Huang, Qiu, Yuan, The Visual Computer 36, 2020"),
    Dataset("visa", "VisA", visa.load_visa, tuple(visa.CATEGORIES),
            "Zou, Jeong, Pemula, Zhang, Dabeer, ECCV 2022",
            "https://github.com/amazon-science/spot-diff",
            Archive("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
                    "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362", "split_csv/1cls.csv")),
    Dataset("btad", "BTAD", btad.load_btad, tuple(btad.CATEGORIES),
            "Mishra, Verk, Fornasier, Piciarelli, Foresti, ISIE 2021",
            "https://avires.dimi.uniud.it/papers/btad/",
            Archive("https://avires.dimi.uniud.it/papers/btad/btad.zip",
                    "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a", "01/train/ok")),
    Dataset("mpdd", "MPDD", mvtec.load_mvtec_layout, MPDD_CATEGORIES,
            "Jezek, Jonak, Burget, Dvorak, Skotak, ICUMT 2021",
            "https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
            "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI"),
    # no archive: both are behind the authors' licence forms (download by hand, docs/datasets.md)
    Dataset("mvtec_ad2", "MVTec AD 2", mvtec_ad2.load_mvtec_ad2, tuple(mvtec_ad2.CATEGORIES),
            "Heckler-Kram, Neudeck, Scheler, König, Steger, The MVTec AD 2 Dataset: Advanced Scenarios for "
            "Unsupervised Anomaly Detection, arXiv 2503.21622, 2025",
            "https://www.mvtec.com/company/research/datasets/mvtec-ad-2",
            by_hand="MVTec hands out the archive (mvtec_ad_2.tar.gz, 33 GB) after a licence form (CC BY-NC-SA 4.0) at "
                    "{home} . Download it there, unpack it so that {dest}/can/train/good exists.",
            pro_fpr_limits=(0.3, 0.05)),
    Dataset("real_iad", "Real-IAD", real_iad.load_real_iad, tuple(real_iad.CATEGORIES),
            "Wang et al., Real-IAD: A Real-World Multi-View Dataset for Benchmarking Versatile Industrial Anomaly "
            "Detection, CVPR 2024",
            "https://huggingface.co/datasets/Real-IAD/Real-IAD",
            by_hand="its authors grant access on request (a gated Hugging Face dataset: {home} , sign in, accept the "
                    "terms, wait for approval). Download realiad_jsons.zip and one of realiad_256/512/1024 (one zip "
                    "per object), unpack them so that {dest}/realiad_jsons/realiad_jsons/audiojack.json and "
                    "{dest}/realiad_<px>/audiojack/OK exist.",
            views=True, settings=tuple(real_iad.SETTINGS)),
]}


def get_dataset(name) -> Dataset:
    if name not in DATASETS:
        near = difflib.get_close_matches(str(name), DATASETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"unknown `data.dataset` {name!r}{hint}: use one of {', '.join(DATASETS)}.")
    return DATASETS[name]


def category_names(categories, dataset: str) -> list[str] | None:
    """`data.categories` -> None (all) or a list of names. BTAD's products are numbers: YAML reads
    an unquoted 01 as the integer 1, taken as "01"."""
    if categories in ("all", None):
        return None
    if isinstance(categories, (str, int)) and not isinstance(categories, bool):
        categories = [categories]
    if not isinstance(categories, list) or not categories:
        raise UserError(f"`data.categories` must be 'all' or a non-empty list of names, not {categories!r}")
    names = []
    for c in categories:
        if isinstance(c, int) and not isinstance(c, bool) and dataset == "btad":
            c = f"{c:02d}"
        if not isinstance(c, str) or not c or "/" in c or "\\" in c or c in (".", "..") or is_clutter(c):
            raise UserError(f"`data.categories`: {c!r} is not a category folder name (a name, no path, not "
                            f"hidden); e.g. -S 'data.categories=[bottle,screw]'.")
        if c in names:
            raise UserError(f"`data.categories` lists {c!r} twice.")
        names.append(c)
    return names


def load_dataset(dataset: str, root: str | Path, categories, setting: str | None = None) -> list[Category]:
    """Entry point: validate the params, then read the layout. Prints one note per kind of
    entry it passed over (hidden or system files, non-images, masks of defect-free images).
    `setting`: the split setting of a dataset that ships several (Real-IAD: data.real_iad_setting);
    None = its first; ignored by the others."""
    spec = get_dataset(dataset)
    names = category_names(categories, dataset)
    root = Path(root)
    if not root.is_dir():
        hint = (f" Get {spec.title} with `python -m anomaly_backbones download {spec.name} <dir>`."
                if spec.downloadable else "")
        raise UserError(f"`data.root` {shown(root)} is not a folder.{hint}")
    scan = Scan()
    kw = {"setting": setting or spec.settings[0]} if spec.settings else {}
    cats = spec.load(root, names or (list(spec.categories) if spec.categories else None), scan, **kw)
    scan.report()
    return cats
