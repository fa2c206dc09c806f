"""The embedded default data: a small MVTec-layout dataset generated deterministically.

Two textures and two objects, each with several defect types drawn at low contrast and
with exact masks, so pretrained features separate most but not all defects (ROC-AUC below
1.0) and the whole pipeline runs offline in minutes. Same seed -> byte-identical PNGs.
"""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ("weave", "granite", "disc", "chip")
DEFECTS = {"weave": ("scratch", "spot"), "granite": ("crack", "stain"),
           "disc": ("dent", "spot"), "chip": ("scratch", "missing")}


def _rng(seed: int, *key) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])


def _smooth_noise(rng, size, sigma):
    im = Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8))
    return np.asarray(im.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32) / 255.0


def _base(category: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A defect-free sample, float RGB in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if category == "weave":
        f, ph = 2 * np.pi / rng.uniform(11, 13), rng.uniform(0, 2 * np.pi, 2)
        g = 0.5 + 0.2 * np.sin(xx * f + ph[0]) * np.sin(yy * f + ph[1])
        rgb = np.stack([g * 0.9, g * 0.8, g * 0.6], -1)
    elif category == "granite":
        g = 0.35 + 0.5 * _smooth_noise(rng, size, 1.5) + 0.15 * _smooth_noise(rng, size, 6)
        rgb = np.stack([g, g * 0.95, g * 0.9], -1)
    elif category == "disc":
        cx, cy = size / 2 + rng.normal(0, 3, 2)
        r = size * rng.uniform(0.30, 0.33)
        d = np.hypot(xx - cx, yy - cy)
        inside = np.clip(r - d, 0, 1)
        shade = 0.55 + 0.25 * (1 - d / r) + 0.03 * _smooth_noise(rng, size, 3)
        rgb = np.stack([0.15 + inside * (shade - 0.15)] * 3, -1) * np.array([1.0, 0.85, 0.5])
    elif category == "chip":
        rgb = np.full((size, size, 3), 0.2, np.float32) + 0.02 * _smooth_noise(rng, size, 2)[..., None]
        o = int(size * 0.25 + rng.normal(0, 2))
        rgb[o:size - o, o:size - o] = (0.25, 0.3, 0.35)
        for k in range(6):  # pins
            x0 = o + 6 + k * (size - 2 * o - 12) // 6
            rgb[o - 14:o, x0:x0 + 6] = (0.8, 0.75, 0.5)
            rgb[size - o:size - o + 14, x0:x0 + 6] = (0.8, 0.75, 0.5)
    else:
        raise ValueError(category)
    rgb = rgb + rng.normal(0, 0.015, rgb.shape)
    return np.clip(rgb, 0, 1).astype(np.float32)


def _defect(category: str, kind: str, rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect; returns the image and its exact mask."""
    size = rgb.shape[0]
    mask_im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_im)
    lo, hi = (0.3 * size, 0.7 * size) if category in ("disc", "chip") else (0.15 * size, 0.85 * size)
    cx, cy = rng.uniform(lo, hi, 2)
    contrast = rng.uniform(0.06, 0.25) * rng.choice([-1, 1])
    if kind in ("scratch", "crack"):
        pts = [(cx, cy)]
        ang = rng.uniform(0, np.pi)
        for _ in range(int(rng.integers(4, 9))):
            ang += rng.normal(0, 0.5 if kind == "crack" else 0.1)
            step = rng.uniform(5, 10)
            pts.append((pts[-1][0] + step * np.cos(ang), pts[-1][1] + step * np.sin(ang)))
        draw.line(pts, fill=255, width=int(rng.integers(2, 4)))
    elif kind in ("spot", "stain", "dent"):
        rx, ry = rng.uniform(3, 12, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    elif kind == "missing":
        w, h = rng.uniform(8, 22, 2)
        draw.rectangle([cx - w, cy - h, cx + w, cy + h], fill=255)
        contrast = -0.08
    mask = np.asarray(mask_im) > 0
    soft = np.asarray(mask_im.filter(ImageFilter.GaussianBlur(1.0)), np.float32)[..., None] / 255.0
    if kind == "stain":
        tint = np.array([contrast, -contrast / 2, 0.0])
    elif kind == "missing":
        tint = np.array([0.2, 0.2, 0.2]) - rgb[int(cy), int(cx)]
    else:
        tint = np.array([contrast] * 3)
    return np.clip(rgb + soft * tint, 0, 1), mask


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> the uint8 pixels the PNGs hold (rounded to nearest)."""
    return (rgb * 255 + 0.5).astype(np.uint8)


def sample(category: str, key: str, i: int, seed: int = 1024, size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """One image of `generate`'s dataset in memory: (float RGB (size, size, 3) in [0, 1], its exact
    bool mask (size, size), None for a defect-free image). key: "train" or "test" (defect-free
    images of that split) or one of DEFECTS[category]; i: the image's number. generate() writes
    exactly these images, and bench/gpu.py draws MVTec AD-sized datasets from it without files."""
    if key in ("train", "test"):
        return _base(category, _rng(seed, category, key, i), size), None
    rng = _rng(seed, category, key, i)
    return _defect(category, key, _base(category, rng, size), rng)


def _save(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(rgb)).save(path, optimize=False)


def generate(root: str | Path, seed: int = 1024, categories=CATEGORIES, n_train: int = 40,
             n_good_test: int = 12, n_defect_test: int = 9, size: int = 256) -> dict:
    """Writes root/<category>/{train/good, test/<type>, ground_truth/<type>} and returns counts."""
    root = Path(root)
    counts = {}
    for c in categories:
        if c not in DEFECTS:
            raise ValueError(f"unknown synthetic category {c!r}; known: {list(DEFECTS)}")
        for i in range(n_train):
            _save(sample(c, "train", i, seed, size)[0], root / c / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good_test):
            _save(sample(c, "test", i, seed, size)[0], root / c / "test" / "good" / f"{i:03d}.png")
        for kind in DEFECTS[c]:
            for i in range(n_defect_test):
                rgb, mask = sample(c, kind, i, seed, size)
                _save(rgb, root / c / "test" / kind / f"{i:03d}.png")
                mp = root / c / "ground_truth" / kind / f"{i:03d}_mask.png"
                mp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask.astype(np.uint8) * 255).save(mp)
        counts[c] = {"train": n_train, "test": n_good_test + n_defect_test * len(DEFECTS[c])}
    return counts
