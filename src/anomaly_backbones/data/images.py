"""Image and mask files -> fixed-size arrays: RGB, resize, center crop (the study's protocol)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError


def _open(path: Path) -> Image.Image:
    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist: restore it or remove it from the dataset.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path} ({e.__class__.__name__}: {e}): the file is corrupt or "
                        f"truncated. Replace it or delete it from the dataset.") from None
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float images are scaled to 8 bits by their type's range (PIL would clip)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a / 255.0 if a.max() > 1.0 else a
        return Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def _resize_crop(im: Image.Image, resize: int, crop: int, resample) -> Image.Image:
    im = im.resize((resize, resize), resample)
    o = (resize - crop) // 2
    return im.crop((o, o, o + crop, o + crop))


def load_image(path: Path, resize: int, crop: int) -> tuple[np.ndarray, tuple[int, int]]:
    """-> (crop, crop, 3) uint8 RGB and the original (width, height). RGBA is composited on black."""
    im = _to_8bit(_open(path))
    size = im.size
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    if im.mode != "L":  # gray is resized on one channel and replicated after: the same bytes, a third of the work
        im = im.convert("RGB")
    im = _resize_crop(im, resize, crop, Image.BILINEAR)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), size   # convert() of RGB would copy it


def load_mask(path: Path | None, image_size: tuple[int, int], image_path: Path,
              resize: int, crop: int) -> np.ndarray:
    """-> (crop, crop) bool. The mask must have its image's size: anything else is a pairing error."""
    if path is None:
        return np.zeros((crop, crop), bool)
    im = _to_8bit(_open(path))
    if im.size != image_size:
        raise UserError(f"mask {path} is {im.size[0]}x{im.size[1]} but its image {image_path} is "
                        f"{image_size[0]}x{image_size[1]}: the mask does not belong to the image. "
                        f"Fix the pairing or the mask.")
    im = im.convert("L")
    return np.asarray(_resize_crop(im, resize, crop, Image.NEAREST)) > 127
