"""`python -m anomaly_backbones predict MODEL IMAGES...|FOLDER --out DIR`: an exported model
(line.export) on new images.

MODEL is the export's folder (model.json + model.onnx) or its model.onnx. Each image is decoded,
resized and centre-cropped exactly as `prepare` does (data.images.load_image, with the card's resize
and crop; gray images become RGB as in training), then scored by ONNX Runtime, one image per call
(the exported graph takes batch 1); `--batch` images are decoded at once by a pool of threads
while the model runs, `--threads` are ONNX Runtime's intra-op threads.

Writes DIR/predictions.csv (file, status ok|unreadable, score, decision, error) and
DIR/overlays/<n>_<name>.png (image | anomaly map over it) for each flagged image. An image that
cannot be read is one line on stderr and a row marked unreadable; the run goes on. The CSV is
written whole at the end (files.replacing): an interrupted run leaves no half file. Last line: the
summary (images, flagged, unreadable, images/s, peak memory).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import read_json, replacing

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_card(model: str | Path) -> tuple[dict, Path]:
    """(model card, model.onnx path); UserError for a missing file or another card version."""
    from .export import CARD_FORMAT, CARD_VERSION

    model = Path(model)
    folder = model if model.is_dir() else model.parent
    card_path, onnx = folder / "model.json", (model if model.suffix == ".onnx" else folder / "model.onnx")
    if not card_path.exists() or not onnx.exists():
        raise UserError(f"{model} is not an exported model (needs model.json and model.onnx): make one with "
                        f"`python -m anomaly_backbones export`")
    try:
        card = read_json(card_path)
    except ValueError as e:
        raise UserError(f"{card_path} is not valid JSON ({e}): re-export the model") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or card.get("card_version") != CARD_VERSION:
        got = card.get("card_version") if isinstance(card, dict) else None
        raise UserError(f"{card_path} is from another version of anomaly-backbones (model card version {got!r}, "
                        f"this one reads {CARD_VERSION}): re-export it with `python -m anomaly_backbones export`")
    return card, onnx


def list_images(inputs: list[str]) -> list[Path]:
    """Files as given; folders searched recursively for image files (sorted)."""
    out: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        else:
            out.append(p)   # a missing file is a row marked unreadable, not the end of the run
    if not out:
        raise UserError(f"no images in {' '.join(inputs)} (looked for {', '.join(sorted(IMAGE_EXTS))})")
    return out


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float) -> np.ndarray:
    """(H, 2W, 3) uint8: the image, and the map (jet, 0..vmax) blended over it."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(amap / max(vmax, 1e-12), 0, 1))[..., :3]
    blend = (0.5 * image / 255.0 + 0.5 * heat) * 255
    return np.concatenate([image, blend.astype(np.uint8)], axis=1)


def predict(model: str | Path, inputs: list[str], out: str | Path, batch: int = 8, threads: int = 1,
            overlays: bool = True, progress: bool = True) -> dict:
    """Score every image; returns the summary dict (also printed by main_predict)."""
    from PIL import Image
    from tqdm import tqdm

    from ..backbones.ort_extractor import ort_session
    from ..data.images import load_image
    from ..resources import peak_rss_mb

    card, onnx = load_card(model)
    files = list_images(inputs)
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    sess = ort_session(onnx, max(1, int(threads)))
    resize, crop = card["preprocessing"]["resize"], card["preprocessing"]["crop"]
    pixel = (card["threshold"].get("pixel") or {}).get("threshold")
    rows, n_flag, n_bad = [], 0, 0

    def decode(path: Path):
        try:
            return load_image(path, resize, crop)[0], None
        except UserError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - any decoder failure is this image's, not the run's
            return None, f"cannot read {path}: {type(e).__name__}: {e}"

    t0 = time.perf_counter()
    bar = tqdm(total=len(files), unit="img", desc="predict", disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=max(1, int(batch))) as pool:
        for start in range(0, len(files), max(1, int(batch))):
            part = files[start:start + max(1, int(batch))]
            for i, (path, (image, err)) in enumerate(zip(part, pool.map(decode, part)), start):
                if image is None:
                    n_bad += 1
                    tqdm.write(f"unreadable: {path}: {err}", file=sys.stderr)
                    rows.append({"file": str(path), "status": "unreadable", "score": "", "decision": "", "error": err})
                    bar.update(1)
                    continue
                x = np.ascontiguousarray(image.transpose(2, 0, 1)[None])
                amap, score, decision = sess.run(None, {"image": x})
                flagged = bool(decision[0])
                n_flag += flagged
                rows.append({"file": str(path), "status": "ok", "score": f"{float(score[0]):.7g}",
                             "decision": "defect" if flagged else "good", "error": ""})
                if flagged and overlays:
                    vmax = 2.0 * pixel if pixel else float(amap.max())
                    Image.fromarray(overlay(image, amap[0], vmax)).save(out / "overlays" / f"{i:05d}_{path.stem}.png")
                bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    with replacing(out / "predictions.csv") as f:
        w = csv.DictWriter(f, fieldnames=["file", "status", "score", "decision", "error"])
        w.writeheader()
        w.writerows(rows)
    n_ok = len(files) - n_bad
    return {"images": len(files), "scored": n_ok, "flagged": n_flag, "unreadable": n_bad, "seconds": seconds,
            "images_per_s": n_ok / seconds if seconds > 0 else None, "peak_mb": peak_rss_mb(),
            "threshold": card["threshold"]["image"]["threshold"], "csv": str(out / "predictions.csv")}


def parser_predict() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones predict",
                                 description="Score images with an exported model: CSV of scores and decisions, "
                                             "overlays for flagged images.")
    ap.add_argument("model", help="exported model folder (model.json + model.onnx) or its model.onnx")
    ap.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--batch", type=int, default=8, help="images decoded at once (threads; default 8)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    ap.add_argument("--no-overlays", action="store_true", help="no PNG for flagged images")
    return ap


def main_predict(argv: list[str] | None = None) -> None:
    a = parser_predict().parse_args(argv or [])
    s = predict(a.model, a.images, a.out, a.batch, a.threads, not a.no_overlays, progress=sys.stderr.isatty())
    rate = "n/a" if s["images_per_s"] is None else f"{s['images_per_s']:.1f}"
    print(f"{s['images']} images: {s['flagged']} flagged, {s['scored'] - s['flagged']} good, {s['unreadable']} "
          f"unreadable; {rate} images/s, peak {s['peak_mb']:.0f} MB; {s['csv']}")
