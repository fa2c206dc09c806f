import shutil

import numpy as np
import pytest
from PIL import Image

from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.data.images import load_image, load_mask
from anomaly_backbones.data.prepare import load_prepared, prepare_category, read_samples
from anomaly_backbones.data.synthetic import generate
from anomaly_backbones.errors import UserError

from conftest import MTD_ROOT


def test_synthetic_generator_is_deterministic_and_has_exact_masks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for r in (a, b):
        generate(r, seed=7, categories=("chip",), n_train=2, n_good_test=1, n_defect_test=2, size=64)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 2 + 1 + 2 * 2 + 2 * 2
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    masks = [np.asarray(Image.open(p)) for p in (a / "chip" / "ground_truth").rglob("*.png")]
    assert all(m.any() and set(np.unique(m)) <= {0, 255} for m in masks)
    generate(tmp_path / "c", seed=8, categories=("chip",), n_train=2, n_good_test=1, n_defect_test=2, size=64)
    assert (a / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()


def test_mvtec_loader_on_generated_tree(synthetic_tree):
    cats = load_dataset("folder", synthetic_tree, "all")
    assert [c.name for c in cats] == ["disc", "weave"]
    disc = cats[0]
    assert len(disc.train) == 6 and len(disc.test) == 3 + 2 * 2
    defects = [s for s in disc.test if s.defect != "good"]
    assert all(s.mask.name == s.image.stem + "_mask.png" for s in defects)
    assert {s.defect for s in disc.test} == {"good", "dent", "spot"}
    # mvtec: default categories are the 15 official ones; a subset by list works on the same layout
    assert [c.name for c in load_dataset("mvtec", synthetic_tree, ["weave"])] == ["weave"]
    with pytest.raises(UserError, match="bottle"):
        load_dataset("mvtec", synthetic_tree, "all")


def test_prepare_writes_cropped_arrays_and_table(synthetic_tree, tmp_path):
    cat = load_dataset("folder", synthetic_tree, ["disc"])[0]
    info = prepare_category(cat, tmp_path / "out" / "disc", resize=80, crop=64)
    out = tmp_path / "out" / "disc"
    assert info == {"category": "disc", "train": 6, "test": 7, "defective": 4}
    assert load_prepared(out, "train_images").shape == (6, 64, 64, 3)
    masks = load_prepared(out, "test_masks")
    assert masks.dtype == bool and masks.shape == (7, 64, 64)
    rows = [r for r in read_samples(out) if r["split"] == "test"]
    assert [int(r["label"]) for r in rows] == [int(m.any()) or int(r["defect"] != "good") for r, m in zip(rows, masks)]
    assert not (tmp_path / "out" / "disc.partial").exists()


def test_image_modes_become_rgb(tmp_path):
    g16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.full((30, 40), 77, np.uint8)).save(tmp_path / "gray.jpg")
    a16, size = load_image(tmp_path / "g16.png", 32, 32)
    assert size == (40, 30) and a16.shape == (32, 32, 3) and a16.max() > 240 and a16.min() < 15
    a, _ = load_image(tmp_path / "rgba.png", 40, 40)
    assert a[:, :15].max() == 0 and a[:, 25:, 0].min() == 200
    g, _ = load_image(tmp_path / "gray.jpg", 20, 16)
    assert g.shape == (16, 16, 3) and abs(int(g[..., 1].mean()) - 77) <= 2


def test_gray_images_resize_to_the_same_bytes_as_their_rgb_conversion(tmp_path):
    """Gray images are resized on one channel and replicated: byte for byte what converting to
    RGB first and resizing three channels gives (a textured image, down- and upsampled)."""
    rng = np.random.default_rng(0)
    gray = (np.add.outer(np.arange(61) * 3, np.arange(83) * 2) % 256 + rng.integers(0, 40, (61, 83))) % 256
    Image.fromarray(gray.astype(np.uint8), "L").save(tmp_path / "gray.png")
    for resize, crop in ((32, 28), (256, 224)):
        got, _ = load_image(tmp_path / "gray.png", resize, crop)
        rgb = Image.open(tmp_path / "gray.png").convert("RGB").resize((resize, resize), Image.BILINEAR)
        o = (resize - crop) // 2
        assert np.array_equal(got, np.asarray(rgb)[o:o + crop, o:o + crop]), (resize, crop)


def test_corrupt_truncated_and_missing_images_are_named(tmp_path):
    good = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(good)
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(good.read_bytes()[:40])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    for p in (trunc, bad):
        with pytest.raises(UserError, match=p.name) as e:
            load_image(p, 16, 16)
        assert "corrupt" in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "gone.png", 16, 16)


def test_mask_of_another_size_is_an_error(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(UserError, match="does not belong"):
        load_mask(tmp_path / "m.png", (30, 30), tmp_path / "img.png", 16, 16)


def _tree(synthetic_tree):
    return synthetic_tree / "disc"


def test_layout_faults_are_named(synthetic_tree, tmp_path, capsys):
    c = _tree(synthetic_tree)
    with pytest.raises(UserError, match="not a folder"):
        load_dataset("folder", tmp_path / "nowhere", "all")
    with pytest.raises(UserError, match="no category"):
        load_dataset("folder", tmp_path, "all")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("folder", synthetic_tree, ["nope"])
    with pytest.raises(UserError, match="unknown `data.dataset`"):
        load_dataset("kaggle", synthetic_tree, "all")
    (c / "train" / "good" / "notes.txt").write_text("hi")
    load_dataset("folder", synthetic_tree, ["disc"])
    assert "notes.txt" in capsys.readouterr().err
    shutil.copy(c / "train" / "good" / "000.png", c / "train" / "good" / "000.jpg")
    with pytest.raises(UserError, match="duplicate image name '000'"):
        load_dataset("folder", synthetic_tree, ["disc"])
    (c / "train" / "good" / "000.jpg").unlink()
    (c / "ground_truth" / "dent" / "001_mask.png").rename(tmp_path / "kept.png")
    with pytest.raises(UserError, match=r"dent/001.png has no mask"):
        load_dataset("folder", synthetic_tree, ["disc"])
    (tmp_path / "kept.png").rename(c / "ground_truth" / "dent" / "001_mask.png")
    (c / "test" / "dent" / "001.png").rename(tmp_path / "img.png")
    with pytest.raises(UserError, match="001_mask.png has no image"):
        load_dataset("folder", synthetic_tree, ["disc"])
    (tmp_path / "img.png").rename(c / "test" / "dent" / "001.png")
    for p in (c / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="no training images"):
        load_dataset("folder", synthetic_tree, ["disc"])


def test_one_bad_file_among_many_is_named_by_prepare(synthetic_tree, tmp_path):
    c = _tree(synthetic_tree)
    (c / "test" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cat = load_dataset("folder", synthetic_tree, ["disc"])[0]
    with pytest.raises(UserError, match=r"good/001.png"):
        prepare_category(cat, tmp_path / "out" / "disc", 64, 64)
    assert not (tmp_path / "out" / "disc").exists()


@pytest.mark.skipif(not MTD_ROOT.exists(), reason="magnetic-tile dataset not present")
def test_magnetic_tile_split_is_the_published_protocol():
    (cat,) = load_dataset("mtd", MTD_ROOT, "all")
    assert len(cat.train) == 761
    good = [s for s in cat.test if s.defect == "good"]
    assert len(good) == 191 and len(cat.test) - len(good) == 392
    assert not {p.name for p in cat.train} & {s.image.name for s in cat.test}
