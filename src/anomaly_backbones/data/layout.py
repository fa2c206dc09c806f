"""What every dataset layout shares: the sample types, and reading image folders as real folders
come (from cameras, NAS boxes, zip files made on a Mac, Jupyter).

Entries that operating systems and tools leave behind are ignored and counted (one note per
load): every name starting with "." (macOS `._x.jpg` AppleDouble files, `.DS_Store`,
`.ipynb_checkpoints`) and the names in `SYSTEM_NAMES`. Other files that are not images, subfolders
inside an image folder and broken links are skipped and reported together (one warning per load).
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# Windows thumbnails and settings, Synology and QNAP NAS thumbnail / recycle folders, zips made on macOS
SYSTEM_NAMES = {"thumbs.db", "ehthumbs.db", "desktop.ini", "@eadir", "#recycle", "$recycle.bin", "@recycle",
                ".@__thumb", "system volume information", "__macosx", "lost+found"}


def is_clutter(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def shown(path: Path | str) -> str:
    """A path as text that prints anywhere (undecodable bytes of a file name as \\x escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass
class TestSample:
    image: Path
    mask: Path | None       # None: defect-free
    defect: str             # "good" for defect-free


@dataclass
class Category:
    name: str
    train: list[Path]
    test: list[TestSample] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)   # defect-free, held out (MVTec AD 2 validation/good)
    unlabelled: list[Path] = field(default_factory=list)   # no public labels: prediction only (MVTec AD 2 test_private*)


@dataclass
class Scan:
    """What one dataset load passed over, reported as one line per kind at the end (`report`)."""
    ignored: list[Path] = field(default_factory=list)      # hidden and system entries
    skipped: list[Path] = field(default_factory=list)      # non-images, subfolders, broken links
    good_masks: list[Path] = field(default_factory=list)   # masks given for defect-free images

    def report(self) -> None:
        def eg(paths):
            return ", ".join(shown(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        if self.ignored:
            print(f"note: ignored {len(self.ignored)} hidden or system files and folders (names starting "
                  f"with '.', Thumbs.db, desktop.ini, @eaDir, __MACOSX, ...): {eg(self.ignored)}", file=sys.stderr)
        if self.skipped:
            print(f"warning: skipped {len(self.skipped)} entries that are not image files (other file types, "
                  f"subfolders, broken links): {eg(self.skipped)}", file=sys.stderr)
        if self.good_masks:
            n = len(self.good_masks)
            verbs = ("mask belongs", "is") if n == 1 else ("masks belong", "are")
            print(f"warning: {n} {verbs[0]} to defect-free test images and {verbs[1]} not used "
                  f"(those images count as defect-free, with an empty mask): {eg(self.good_masks)}", file=sys.stderr)


def _checked_name(p: Path) -> Path:
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"file name {shown(p)} is not valid UTF-8: rename it (or remove it from the "
                        f"dataset).") from None
    return p


def _entries(folder: Path, scan: Scan) -> list[Path]:
    try:
        entries = sorted(folder.iterdir())
    except PermissionError:
        raise UserError(f"cannot list folder {shown(folder)}: permission denied. Make it readable "
                        f"(chmod a+rx) or point `data.root` elsewhere.") from None
    except OSError as e:
        raise UserError(f"cannot list folder {shown(folder)} ({e.__class__.__name__}: {e}).") from None
    keep = []
    for p in entries:
        (scan.ignored if is_clutter(p.name) else keep).append(p)
    return keep


def list_folders(folder: Path, scan: Scan) -> list[Path]:
    """Sub-folders of `folder`, sorted; hidden and system folders ignored (counted in `scan`)."""
    return [_checked_name(p) for p in _entries(folder, scan) if p.is_dir()]


def list_images(folder: Path, scan: Scan, layout: str, exts: set[str] = IMAGE_EXTS,
                others: set[str] = frozenset()) -> list[Path]:
    """Image files of a folder (extension in `exts`, any case), sorted. Hidden and system entries
    are ignored, other entries skipped (files with an extension in `others` silently: a layout's
    own companions), both counted in `scan`. Two images with one name (stem) are refused: masks
    are paired by name. `layout` says, in a missing folder's message, which layout was expected."""
    if not folder.is_dir():
        raise UserError(f"expected folder {shown(folder)} is missing: check `data.root`, `data.dataset` and "
                        f"the dataset layout ({layout}).")
    images = []
    for p in _entries(folder, scan):
        ext = p.suffix.lower()
        if p.is_file() and ext in exts:
            images.append(_checked_name(p))
        elif not (p.is_file() and ext in others):
            scan.skipped.append(p)
    dup = [s for s, c in Counter(p.stem for p in images).items() if c > 1]
    if dup:
        clash = [shown(p) for p in images if p.stem == dup[0]]
        raise UserError(f"duplicate image name {dup[0]!r} in {shown(folder)}: {clash}. Keep one file per name "
                        f"(masks are paired by name).")
    return images


def pair_masks(images: list[Path], folder: Path, gt: Path, defect: str, scan: Scan, layout: str,
               expected: str = "{stem}_mask.png") -> list[TestSample]:
    """Defect images of one type (from `folder`) with their masks from folder `gt`: the mask of `x.jpg` is
    `x_mask.*` or `x.*` (any image extension). A missing mask and a mask without image are
    refused, naming the file."""
    masks = {p.stem: p for p in list_images(gt, scan, layout)}
    samples = []
    for p in images:
        m = masks.get(f"{p.stem}_mask") or masks.get(p.stem)
        if m is None:
            raise UserError(f"defect image {shown(p)} has no mask: expected {shown(gt / expected.format(stem=p.stem))}."
                            f" Add the mask, or move the image out of the test set.")
        samples.append(TestSample(p, m, defect))
    stems = {p.stem for p in images}
    orphans = [m for s, m in masks.items() if s.removesuffix("_mask") not in stems and s not in stems]
    if orphans:
        raise UserError(f"mask {shown(orphans[0])} has no image in {shown(folder)} (expected "
                        f"{orphans[0].stem.removesuffix('_mask')} with an image extension): remove the mask or "
                        f"add its image.")
    return samples
