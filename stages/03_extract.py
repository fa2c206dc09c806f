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

from anomaly_backbones.backbones import load_backbone
from anomaly_backbones.backbones.ort_extractor import make_extractor
from anomaly_backbones.data.prepare import load_prepared
from anomaly_backbones.features import FeatureWriter
from anomaly_backbones.files import read_json, write_json
from anomaly_backbones.params import load_params, resolve
from anomaly_backbones.resources import check_memory, load_1m, peak_rss_mb, usable_cpus
from anomaly_backbones.runner import run

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
    layers = resolve(p)["cache_layers"]   # the `layers` param resolved, then what each method adds
    torch.manual_seed(p["seed"])
    bb = load_backbone(p["backbone"], p["init"], p["seed"])
    ex = p["extract"]
    batch_size, dtype = ex["batch_size"], ex["dtype"]
    size = p["data"]["crop"]
    ext, engine = make_extractor(bb.model, layers, bb.name, ex["engine"], size, bb.mean, bb.std)
    check_memory(ext.estimate_bytes(batch_size, size, np.dtype(dtype).itemsize),
                 f"extract {bb.name} (layers {layers}, batches of {batch_size} images of {size} px)",
                 "lower `extract.batch_size` (memory grows with it).")
    shutil.rmtree(OUT, ignore_errors=True)
    stats = {"backbone": bb.name, "init": bb.init, "layers": layers, "dtype": dtype, "engine": engine,
             "categories": {}, "load_1m": load_1m(), "cpus": usable_cpus()}   # timings are read with the load
    for c in read_json(PREPARED / "categories.json"):
        name = c["category"]
        meta = {"backbone": bb.name, "init": bb.init, "layers": layers, "image_size": size, "engine": engine}
        writer = FeatureWriter(OUT / name, meta, dtype)
        times = {}
        for split in ("train", "test"):
            images = load_prepared(PREPARED / name, f"{split}_images")
            times[split] = extract_split(ext, images, batch_size, writer, split, f"extract {bb.name} {name} {split}")
        writer.meta["ms_per_image"] = 1000.0 * times["test"] / max(1, c["test"])
        writer.close()
        cache_bytes = sum(f.stat().st_size for f in (OUT / name).rglob("*.npy"))
        stats["categories"][name] = {"forward_s": times, "ms_per_image": writer.meta["ms_per_image"],
                                     "cache_mb": cache_bytes / 2**20}
    stats["peak_mb"] = peak_rss_mb()
    write_json(OUT / "stats.json", stats)


if __name__ == "__main__":
    run(main)
