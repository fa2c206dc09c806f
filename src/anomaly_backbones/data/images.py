"""Image and mask files -> fixed-size arrays: RGB, resize, center crop (the study's protocol).

Every file is read in its displayed orientation (an EXIF orientation tag, as phones and many
industrial cameras write, is applied to images and masks alike) and refused before decoding
when it has more than `max_pixels` pixels (`data.max_image_pixels`). Images of any aspect
ratio are resized to a square (`data.resize`, bilinear) and center-cropped, as for MVTec AD.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from ..errors import UserError
from .layout import shown

MAX_IMAGE_PIXELS = 200_000_000   # `data.max_image_pixels` default: 600 MB as decoded RGB


@contextmanager
def pixel_limit_from_param():
    """Within the block Pillow's own decompression-bomb limit (a fixed 179 M pixels, refused with
    DecompressionBombError) is off: `_open` enforces `data.max_image_pixels` on every file, before
    decoding, with a message naming the file and the param. Set around a whole prepare run (the
    limit is Pillow's module global, read by every thread)."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _too_large(path: Path, w: int, h: int, max_pixels: int) -> UserError:
    return UserError(f"image {shown(path)} is {w}x{h} ({w * h:,} pixels), above `data.max_image_pixels` "
                     f"({max_pixels:,}): shrink or remove the file, or admit it with -S data.max_image_pixels="
                     f"{w * h} (it needs about {3 * w * h / 2**30:.1f} GiB of memory while it is read).")


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open and decode one file, upright. Any failure is the file's: one line naming it."""
    try:
        im = Image.open(path)
        if im.width * im.height > max_pixels:
            raise _too_large(path, im.width, im.height, max_pixels)
        im.load()
        return _upright(im)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"image {shown(path)} does not exist: restore it or remove it from the dataset.") from None
    except PermissionError:
        raise UserError(f"cannot read image {shown(path)}: permission denied. Make it readable (chmod a+r) "
                        f"or remove it from the dataset.") from None
    except MemoryError:
        raise UserError(f"not enough memory to read image {shown(path)}: free memory, lower "
                        f"`data.max_image_pixels`, or shrink the file.") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"image {shown(path)} is too large to read ({e}); shrink or remove it, or raise "
                        f"`data.max_image_pixels`.") from None
    except Exception as e:  # noqa: BLE001 - a decoder fails on a malformed file in many ways
        raise UserError(f"cannot read image {shown(path)} ({e.__class__.__name__}: {e}): the file is corrupt, "
                        f"truncated or not an image. Replace it or delete it from the dataset.") from None


def _upright(im: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF orientation applied (no copy when it has none)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: viewers show the pixels as stored, so do we
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float images are scaled to 8 bits by their type's range (PIL would clip)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a / 255.0 if a.max() > 1.0 else a
        return Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def _on_black(im: Image.Image) -> Image.Image:
    """Images with transparency (RGBA, LA, P, PA) composited on black: transparent = background."""
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    return im


def _resize_crop(im: Image.Image, resize: int, crop: int, resample) -> Image.Image:
    im = im.resize((resize, resize), resample)
    o = (resize - crop) // 2
    return im.crop((o, o, o + crop, o + crop))


def center_crop(x: np.ndarray, crop: int) -> np.ndarray:
    """The (crop, crop) center of an (S, S) mask or (S, S, 3) image already at the resize size S:
    the pixels load_image / load_mask keep when the resize is the identity (the offset of
    _resize_crop). bench/gpu.py prepares the images it draws in memory with it."""
    o = (x.shape[0] - crop) // 2
    return x[o:o + crop, o:o + crop]


def load_image(path: Path, resize: int, crop: int,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int]]:
    """-> (crop, crop, 3) uint8 RGB and the displayed (width, height). RGBA is composited on black."""
    im = _open(path, max_pixels)
    try:
        im = _on_black(_to_8bit(im))
        size = im.size
        if im.mode != "L":  # gray is resized on one channel and replicated after: the same bytes, a third of the work
            im = im.convert("RGB")
        im = _resize_crop(im, resize, crop, Image.BILINEAR)
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), size   # convert() of RGB would copy it
    except (ValueError, OSError) as e:   # a mode Pillow cannot convert to RGB (e.g. LAB, HSV)
        raise UserError(f"cannot convert image {shown(path)} (mode {im.mode}) to RGB ({e}): save it as 8-bit "
                        f"RGB or gray.") from None


def defect_pixels(im: Image.Image) -> np.ndarray:
    """The mask rule: which pixels of a mask file are defect -> (H, W) bool.

    Gray values v of a type whose range is 0..top (8-bit: 255; 16-bit: 65535; 32-bit integer:
    65535, or 255 when no value exceeds 255; float: 1.0, or 255 when a value exceeds 1):
      - a mask whose largest value is below top/2 is a label image (0/1, or 0/1/2... per defect
        as VisA writes): every non-zero pixel is defect;
      - otherwise a pixel is defect when v > top/2 (0/255 masks; anti-aliased edges count where
        they are more than half covered).
    Color masks (RGB, CMYK, palette) are read as displayed, transparent pixels as black, and
    ranked by their brightest channel (a red outline on black counts), then the 8-bit rule."""
    if im.mode.startswith("I;16"):
        a, top = np.asarray(im), 65535
    elif im.mode == "I":
        a = np.asarray(im)
        top = 65535 if a.max(initial=0) > 255 else 255
    elif im.mode == "F":
        a = np.asarray(im)
        top = 255 if a.max(initial=0) > 1.0 else 1.0
    elif im.mode in ("L", "1"):
        a, top = np.asarray(im.convert("L")), 255
    else:
        a, top = np.asarray(_on_black(im).convert("RGB")).max(axis=2), 255
    return a != 0 if a.max(initial=0) < top / 2 else a > top / 2


def load_mask(path: Path | None, image_size: tuple[int, int], image_path: Path, resize: int, crop: int,
              max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """-> (crop, crop) bool, by the mask rule (`defect_pixels`), resized nearest-neighbour like its
    image. The mask must have its image's displayed size: anything else is a pairing error."""
    if path is None:
        return np.zeros((crop, crop), bool)
    im = _open(path, max_pixels)
    if im.size != image_size:
        raise UserError(f"mask {shown(path)} is {im.size[0]}x{im.size[1]} but its image {shown(image_path)} is "
                        f"{image_size[0]}x{image_size[1]}: the mask does not belong to the image. "
                        f"Fix the pairing or the mask.")
    try:
        defect = Image.fromarray(defect_pixels(im).astype(np.uint8) * 255)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read mask {shown(path)} (mode {im.mode}): {e}. Save it as 8-bit gray.") from None
    return np.asarray(_resize_crop(defect, resize, crop, Image.NEAREST)) > 127
