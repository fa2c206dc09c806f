"""Property test of the loader and the prepare step over generated folders as a factory NAS holds
them: each tree mixes good files with a random draw of bad ones (OS clutter, broken, odd-mode,
mis-paired and huge files...). Every run either succeeds with the expected samples and valid,
finite outputs, or stops with one UserError line that names one of the fatal files (or the
param), leaving no output folder; never another exception.

Seeded (one generator per tree: a failure names its seed and faults). DATA_PROPERTY_TREES sets
how many trees (default 60, about 10 s; e.g. 2000 for a long run)."""
from __future__ import annotations

import os
import random
import shutil
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.data.layout import IMAGE_EXTS, is_clutter, shown
from anomaly_backbones.data.prepare import load_prepared, prepare_dataset, read_samples
from anomaly_backbones.errors import UserError
from anomaly_backbones.metrics import roc_auc

TREES = int(os.environ.get("DATA_PROPERTY_TREES", "60"))
RESIZE, CROP = 40, 32
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class NothingLeft(Exception):
    """No file is left for a fault to touch: the fault is skipped."""


@dataclass
class Tree:
    root: Path
    rng: random.Random
    counts: dict = field(default_factory=dict)        # category -> [train, good test, defect test]
    fatal: list[str] = field(default_factory=list)    # names one of which the error must contain
    notes: set = field(default_factory=set)           # "ignored" / "skipped": summary lines expected
    marked: list[Path] = field(default_factory=list)  # defect images whose prepared mask must mark pixels
    used: set = field(default_factory=set)

    def pick(self, pattern: str, folder: bool = False) -> Path:
        """An image file (or folder) of the layout matching `pattern` that no other fault has
        touched yet (NothingLeft when none is left); never a hidden entry, a link or a good image's mask."""
        def fits(p):
            rel = p.relative_to(self.root).parts
            return (p not in self.used and not p.is_symlink() and not any(is_clutter(x) for x in rel)
                    and rel[1:3] != ("ground_truth", "good")
                    and (p.is_dir() if folder else p.is_file() and p.suffix.lower() in IMAGE_EXTS))
        free = [p for p in sorted(self.root.glob(pattern)) if fits(p)]
        if not free:
            raise NothingLeft(pattern)
        p = self.rng.choice(free)
        self.used.add(p)
        return p


def _texture(rng: random.Random, w: int, h: int, channels: int = 3) -> np.ndarray:
    g = np.random.default_rng(rng.randrange(2**32))
    return (g.random((h, w, channels)) * 60 + 100).astype(np.uint8)


def _mask_rect(w: int, h: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[h // 3:2 * h // 3, w // 3:2 * w // 3] = 255     # central: inside the center crop
    return m


def build(root: Path, rng: random.Random) -> Tree:
    """A clean MVTec-layout tree: 1-2 categories, PNG and JPEG, 0/255 masks."""
    t = Tree(root, rng)
    for c in ["alpha", "beta"][:rng.randint(1, 2)]:
        w, h = rng.choice([(32, 32), (48, 32), (40, 56)])
        n_train, n_good = rng.randint(2, 4), rng.randint(1, 3)
        types = ["scratch", "dent"][:rng.randint(1, 2)]
        n_bad = 0
        for folder, n in [("train/good", n_train), ("test/good", n_good)] + [(f"test/{d}", rng.randint(1, 2))
                                                                           for d in types]:
            (root / c / folder).mkdir(parents=True)
            for i in range(n):
                ext = rng.choice([".png", ".jpg"])
                Image.fromarray(_texture(rng, w, h)).save(root / c / folder / f"{i:03d}{ext}")
                if folder.split("/")[1] in types:
                    n_bad += 1
                    (root / c / "ground_truth" / folder.split("/")[1]).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_mask_rect(w, h)).save(root / c / "ground_truth" / folder.split("/")[1] /
                                                          f"{i:03d}_mask.png")
        t.counts[c] = [n_train, n_good, n_bad]
    return t


# --- benign faults: the run must succeed -----------------------------------------------------------

def hidden_files(t):
    for folder in {p.parent for p in t.root.glob("*/*/*/*.*")}:
        if t.rng.random() < 0.3:
            (folder / f"._{t.rng.randrange(99):03d}.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
            t.notes.add("ignored")
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "thumbs.db"):
        folder = t.pick("*/*/good", folder=True)
        (folder / name).write_bytes(b"\0\1junk")
        t.notes.add("ignored")


def system_folders(t):
    c = t.rng.choice(sorted(t.counts))
    shutil.copytree(t.root / c / "test" / "good", t.root / c / "test" / ".ipynb_checkpoints")
    (t.root / c / "train" / "good" / "@eaDir" / "000.png").mkdir(parents=True)
    (t.root / "__MACOSX" / c).mkdir(parents=True, exist_ok=True)
    t.notes.add("ignored")


def other_files(t):
    c = t.rng.choice(sorted(t.counts))
    (t.root / c / "train" / "good" / "readme.txt").write_text("line camera 3")
    (t.root / c / "test" / "good" / "export.CSV").write_text("a,b")
    nested = t.root / c / "train" / "good" / "old batch"
    nested.mkdir()
    Image.fromarray(_texture(t.rng, 8, 8)).save(nested / "000.png")
    (t.root / c / "train" / "good" / "dead.png").symlink_to(t.root / "nowhere.png")
    (t.root / c / "train" / "good" / "name\udcff.dat").write_bytes(b"x")          # not UTF-8, not an image
    t.notes.add("skipped")


def linked_image(t):
    p = t.pick("*/train/good/*.*")
    p.with_name("zz_link" + p.suffix).symlink_to(p)
    t.counts[p.parts[-4]][0] += 1


def upper_case_extension(t):
    p = t.pick("*/train/good/*.*")
    p.rename(p.with_suffix(p.suffix.upper()))


def odd_image_modes(t):
    for mode in t.rng.sample(["CMYK", "I;16", "P", "RGBA", "LA", "1", "L"], 3):
        p = t.pick("*/train/good/*.*")
        im = Image.fromarray(np.asarray(Image.open(p).convert("RGB")))   # pixels only, no info carried over
        dst = p.with_suffix(".jpg" if mode == "CMYK" else ".png")
        p.unlink()
        if mode == "I;16":
            Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(dst)
        elif mode == "P":
            q = im.quantize(16)
            q.info["transparency"] = 0
            q.save(dst, transparency=0)
        else:
            im.convert(mode).save(dst)


def tiny_and_long_images(t):
    c = t.rng.choice(sorted(t.counts))
    Image.fromarray(_texture(t.rng, 1, 1)).save(t.root / c / "train" / "good" / "zz_tiny.png")
    Image.fromarray(_texture(t.rng, 200, 7)).save(t.root / c / "train" / "good" / "zz_long.tif")
    Image.fromarray(_texture(t.rng, 20, 20)).save(t.root / c / "train" / "good" / "zz_png named.jpg", "PNG")
    Image.fromarray(_texture(t.rng, 20, 20)).save(t.root / c / "train" / "good" / "zz_prüf ünï.png")
    t.counts[c][0] += 4


def label_and_color_masks(t):
    for kind in t.rng.sample(["label01", "label012", "u16", "rgb", "aa", "jpeg"], 2):
        m = t.pick("*/ground_truth/*/*_mask.png")
        a = np.asarray(Image.open(m)) > 127
        if kind == "label01":
            Image.fromarray(a.astype(np.uint8)).save(m)
        elif kind == "label012":
            Image.fromarray(a.astype(np.uint8) * np.uint8(t.rng.choice([1, 2]))).save(m)
        elif kind == "u16":
            Image.fromarray(a.astype(np.uint16) * 65535).save(m)
        elif kind == "rgb":
            rgb = np.zeros(a.shape + (3,), np.uint8)
            rgb[a] = (255, 0, 0)
            Image.fromarray(rgb).save(m)
        elif kind == "aa":
            Image.fromarray((a * 255).astype(np.uint8)).resize(a.shape[::-1], Image.BILINEAR).save(m)
        else:
            m.unlink()
            m = m.with_suffix(".jpg")
            Image.fromarray((a * 255).astype(np.uint8)).save(m, quality=80)
        t.marked.append(m)


def mask_for_good_image(t):
    good = t.pick("*/test/good/*.*")
    gt = good.parents[2] / "ground_truth" / "good"
    gt.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_mask_rect(*Image.open(good).size)).save(gt / f"{good.stem}_mask.png")


def exif_rotated(t):
    p = t.pick("*/test/*/*.*")
    if p.parent.name == "good":
        return
    upright = Image.open(p).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    p.unlink()
    upright.transpose(Image.ROTATE_90).save(p.with_suffix(".jpg"), exif=exif)


def empty_defect_folder(t):
    (t.root / t.rng.choice(sorted(t.counts)) / "test" / "unlabelled").mkdir()


def unreadable_bits(t):
    """chmod 000: root still reads it (then benign); anyone else gets a one-line error."""
    p = t.pick("*/train/good/*.*")
    p.chmod(0)
    if not IS_ROOT:
        t.fatal.append(p.name)


# --- fatal faults: the run must stop with one line naming the file --------------------------------

def zero_bytes(t):
    p = t.pick(t.rng.choice(["*/train/good/*.*", "*/test/*/*.*", "*/ground_truth/*/*_mask.*"]))
    p.write_bytes(b"")
    t.fatal.append(p.name)


def truncated(t):
    p = t.pick("*/t*/*/*.*")
    data = p.read_bytes()
    p.write_bytes(data[:len(data) // 3])
    t.fatal.append(p.name)


def not_an_image(t):
    p = t.pick("*/train/good/*.*")
    p.write_text("<html>404 Not Found</html>")
    t.fatal.append(p.name)


def mask_of_wrong_size(t):
    m = t.pick("*/ground_truth/*/*_mask.*")
    Image.fromarray(np.full((5, 7), 255, np.uint8)).save(m)
    t.fatal.append(m.name)


def duplicate_stem(t):
    p = t.pick("*/t*/*/*.*")
    other = ".png" if p.suffix.lower() != ".png" else ".jpg"
    Image.open(p).convert("RGB").save(p.with_suffix(other))
    t.used.add(p.with_suffix(other))
    t.fatal.append(repr(p.stem))


def missing_mask(t):
    m = t.pick("*/ground_truth/*/*_mask.*")
    m.unlink()
    t.fatal.append(f"{m.parent.name}/{m.stem.removesuffix('_mask')}.")


def orphan_mask(t):
    m = t.pick("*/ground_truth/*/*_mask.*")
    shutil.copy(m, m.with_name("zz9_mask.png"))
    t.used.add(m.with_name("zz9_mask.png"))
    t.fatal.append("zz9_mask.png")


def huge_header(t):
    p = t.pick("*/t*/*/*.*")
    p.unlink()
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = (30000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    p = p.with_suffix(".png")
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    t.used.add(p)
    t.fatal.append(p.name)


def undecodable_name(t):
    folder = t.pick("*/train/good", folder=True)
    Image.fromarray(_texture(t.rng, 16, 16)).save(folder / "bad\udce9name.png")
    t.used.add(folder / "bad\udce9name.png")
    t.fatal.append(shown(folder / "bad\udce9name.png").rsplit("/", 1)[1])


def all_masks_blank(t):
    for m in sorted(t.root.glob("*/ground_truth/*/*_mask.*")):
        try:
            a = np.asarray(Image.open(m))
        except OSError:                  # a mask another fault broke: that fault stops the run
            continue
        Image.fromarray(np.zeros_like(a)).save(m)
    t.fatal.append("data.crop")


BENIGN = [hidden_files, system_folders, other_files, linked_image, upper_case_extension, odd_image_modes,
          tiny_and_long_images, label_and_color_masks, mask_for_good_image, exif_rotated, empty_defect_folder,
          unreadable_bits]
FATAL = [zero_bytes, truncated, not_an_image, mask_of_wrong_size, duplicate_stem, missing_mask, orphan_mask,
         huge_header, undecodable_name, all_masks_blank]


def run_tree(seed: int, base: Path, capsys) -> str:
    rng = random.Random(seed)
    root, out = base / f"t{seed}", base / f"out{seed}"
    t = build(root, rng)
    faults = rng.sample(BENIGN, rng.randint(1, 5))
    if rng.random() < 0.5:
        faults += rng.sample(FATAL, rng.randint(1, 2))
    for f in faults:
        try:
            f(t)
        except NothingLeft:
            pass
    label = f"seed {seed}, faults {[f.__name__ for f in faults]}"
    capsys.readouterr()
    try:
        summary = prepare_dataset(load_dataset("folder", root, "all"), out, RESIZE, CROP)
    except UserError as e:
        msg = str(e)
        assert t.fatal, f"{label}: a tree without fatal faults failed: {msg}"
        assert "\n" not in msg and any(n in msg for n in t.fatal), f"{label}: {msg} (expected one of {t.fatal})"
        assert not out.exists(), f"{label}: {out} left behind"
        return "error"
    except Exception:  # noqa: BLE001 - the property: nothing but UserError
        pytest.fail(f"{label}: {traceback.format_exc()}")
    assert not t.fatal, f"{label}: succeeded although {t.fatal} should have stopped it"
    err = capsys.readouterr().err
    for kind in ("ignored", "skipped"):
        lines = [x for x in err.splitlines() if x.startswith(("note: " + kind, "warning: " + kind))]
        assert len(lines) == (kind in t.notes), f"{label}: {kind} lines {lines}"
    assert sorted(os.listdir(out)) == sorted(["categories.json", *t.counts]), label
    assert [[s["train"], s["test"] - s["defective"], s["defective"]] for s in summary] == \
        [t.counts[c] for c in sorted(t.counts)], label
    pixel = []
    for c in sorted(t.counts):
        masks = load_prepared(out / c, "test_masks")
        images = load_prepared(out / c, "test_images")
        rows = [r for r in read_samples(out / c) if r["split"] == "test"]
        assert masks.dtype == bool and images.shape == (len(rows), CROP, CROP, 3), label
        assert all(m.any() == (r["label"] == "1") for r, m in zip(rows, masks)), label   # central defects
        score = images.astype(np.float32).std(axis=3)
        pixel.append(roc_auc(masks, score))
    assert all(np.isfinite(pixel)), f"{label}: pixel ROC-AUC {pixel}"
    return "ok"


def test_prepare_on_generated_nas_folders_succeeds_or_names_the_file(tmp_path, capsys):
    outcomes = []
    for seed in range(TREES):
        outcomes.append(run_tree(seed, tmp_path, capsys))
        for p in tmp_path.glob(f"*{seed}"):
            for d, _, files in os.walk(p):
                os.chmod(d, 0o755)
                for f in files:
                    if not os.path.islink(os.path.join(d, f)):
                        os.chmod(os.path.join(d, f), 0o644)
            shutil.rmtree(p)
    with capsys.disabled():
        print(f"\n{TREES} trees: {outcomes.count('ok')} prepared, {outcomes.count('error')} stopped with one line")
    assert outcomes.count("ok") > TREES // 4 and outcomes.count("error") > TREES // 4
