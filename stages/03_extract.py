"""Stage 3, extract: run the backbone once over prepared images; cache the layer maps (data/features).

Every method reads this cache, so changing `methods` or a method's params never runs the
network again. Weights are resolved before anything is written. `extract.engine` picks eager
PyTorch or ONNX Runtime (anomaly_backbones.backbones.ort_extractor); stats.json records which ran.
"""
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from anomaly_backbones.backbones import load_backbone, resolve_layers
from anomaly_backbones.backbones.ort_extractor import make_extractor
from anomaly_backbones.data.prepare import load_prepared
from anomaly_backbones.features import FeatureWriter
from anomaly_backbones.methods.patchcore import resolve_layers as patchcore_layers
from anomaly_backbones.params import load_params
from anomaly_backbones.runner import check_memory, peak_rss_mb, read_json, run, write_json

PREPARED, OUT = Path("data/prepared"), Path("data/features")


def extract_split(ext, images: np.ndarray, batch_size: int, writer: FeatureWriter, split: str, desc: str):
    """Forward all images of a split in batches; returns forward seconds (normalization included, I/O not)."""
    forward_s = 0.0
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for s in range(0, len(images), batch_size):
            batch = np.array(images[s:s + batch_size])
            t = time.perf_counter()
            feats = ext.pixels(batch)
            forward_s += time.perf_counter() - t
            if s == 0:
                writer.open(split, len(images), {k: tuple(v.shape[1:]) for k, v in feats.items()})
            writer.write(split, feats)
            bar.update(len(batch))
    return forward_s


def main():
    p = load_params()
    torch.manual_seed(p["seed"])
    bb = load_backbone(p["backbone"], p["init"], p["seed"])
    layers = resolve_layers(p["backbone"], p["layers"])
    extra = [layer for layer in patchcore_layers(p.get("patchcore", {}).get("layers", "auto"), layers)
             if layer not in layers]
    ex = p.get("extract", {})
    batch_size, dtype = int(ex.get("batch_size", 32)), ex.get("dtype", "float32")
    size = p["data"]["crop"]
    ext, engine = make_extractor(bb.model, layers + extra, bb.name, ex.get("engine", "auto"), size, bb.mean, bb.std)
    check_memory(ext.estimate_bytes(batch_size, size, np.dtype(dtype).itemsize),
                 f"extract {bb.name} (layers {layers + extra}, batches of {batch_size} images of {size} px)",
                 "lower `extract.batch_size` (memory grows with it).")
    shutil.rmtree(OUT, ignore_errors=True)
    stats = {"backbone": bb.name, "init": bb.init, "layers": layers + extra, "dtype": dtype, "engine": engine,
             "categories": {}}
    for c in read_json(PREPARED / "categories.json"):
        name = c["category"]
        meta = {"backbone": bb.name, "init": bb.init, "layers": layers + extra, "image_size": p["data"]["crop"],
                "engine": engine}
        writer = FeatureWriter(OUT / name, meta, dtype)
        times = {}
        for split in ("train", "test"):
            images = load_prepared(PREPARED / name, f"{split}_images")
            times[split] = extract_split(ext, images, batch_size, writer, split, f"extract {bb.name} {name} {split}")
        writer.meta["ms_per_image"] = 1000.0 * times["test"] / max(1, c["test"])
        writer.close()
        size = sum(f.stat().st_size for f in (OUT / name).rglob("*.npy"))
        stats["categories"][name] = {"forward_s": times, "ms_per_image": writer.meta["ms_per_image"],
                                     "cache_mb": size / 2**20}
    stats["peak_mb"] = peak_rss_mb()
    write_json(OUT / "stats.json", stats)


if __name__ == "__main__":
    run(main)
