"""The extract stage's body (stages/03_extract.py): run the backbone once over prepared images;
cache the layer maps (data/features).

Every method reads this cache, so changing `methods` or a method's params never runs the
network again. Weights are resolved before anything is written. `extract.engine` picks eager
PyTorch or ONNX Runtime (anomaly_backbones.backbones.ort_extractor); stats.json records which ran.

Pooled features (the image-level methods': OC-SVM, SVDD, DN2): every cached layer and the
backbone's last stage, globally average-pooled (<split>/pooled/<layer>.npy), always, whatever
`methods` lists, so adding one of those methods or changing its params reruns only its fit.
The last stage comes from the cached layers' outputs through the rest of the network
(anomaly_backbones.pooling.Tail, run by the trunk's engine): the cached maps and `ms_per_image`
are those of the trunk alone; the tail's and the pooling's time is `pooled_ms_per_image`.

Device (`device`, anomaly_backbones.device) and `extract.precision`: the backbone and its tail
run there, under autocast (eager PyTorch on a GPU or in reduced precision); the features come
back to the host as float32 for the writer. stats.json and each category's meta.json record the
device, its name and the precision.

Splits: train and test; also "validation" for a category prepared with one (categories.json's
`validation`, threshold.source=validation), so a run without it caches and times exactly what it did.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..backbones import load_backbone
from ..backbones.ort_extractor import make_extractor
from ..data.prepare import load_prepared
from ..device import check_memory, device_name, peak_bytes, resolve_device, use_device
from ..errors import UserError
from ..features import POOLED, FeatureWriter, PooledWriter, layer_file
from ..files import read_json, write_json
from ..backbones.tokens import ViTMaps, set_token_pool
from ..pooling import ForwardTail, Tail, last_stage
from ..resources import load_1m, peak_rss_mb, usable_cpus
from .config import resolve

PREPARED, OUT = Path("data/prepared"), Path("data/features")


def extract_split(ext, images: np.ndarray, batch_size: int, writer: FeatureWriter, split: str, desc: str,
                  pooled: PooledWriter | None = None, tail: Tail | None = None) -> tuple[float, float]:
    """Forward all images of a split in batches (ext.stream) into `writer` (and the pooled
    vectors of the maps, and of the tail's last stage, into `pooled` when given); returns
    (forward seconds (normalization and the copies to and from the device included, I/O not),
    seconds of the tail to the last stage and the pooling). bench/gpu.py runs this too."""
    forward_s = pooled_s = 0.0
    with tqdm(total=len(images), desc=desc, unit="img") as bar:
        for rows, feats, seconds in ext.stream(images, batch_size):
            forward_s += seconds
            if rows.start == 0:
                writer.open(split, len(images), {k: tuple(v.shape[1:]) for k, v in feats.items()})
            writer.write(split, feats)
            if pooled is not None:
                t = time.perf_counter()
                maps = dict(feats)
                if tail is not None:
                    maps[tail.last] = tail(feats, images[rows])   # after the maps are written: nothing can change them
                if rows.start == 0:
                    pooled.open(split, len(images), {k: v.shape[1] for k, v in maps.items()})
                pooled.write(split, maps)
                pooled_s += time.perf_counter() - t
            bar.update(rows.stop - rows.start)
    return forward_s, pooled_s


def pooled_last_stage(bb, layers: list[str], size: int, engine: str,
                      precision: str = "float32") -> tuple[str | None, Tail | None]:
    """(the backbone's last stage, the network from the cached layers to it, run by the trunk's
    engine on its device in its precision). The tail is None when the last stage is cached
    itself; both are None when the forward pass cannot be cut there (then the pooled cache holds
    the cached layers only, said in the log)."""
    last = last_stage(bb.model, bb.entry["layers"] if bb.entry else layers)
    if last in layers:
        return last, None
    try:
        return last, Tail(bb.model, layers, last, bb.name, size, engine, precision)
    except UserError as e:
        if not isinstance(bb.model, ViTMaps):
            print(f"note: no pooled last stage for {bb.name} (image-level methods can pool the cached layers): {e}")
            return None, None
        # a ViT's last block reads the class token, which the cached maps drop: a second pass
        print(f"note: the pooled last stage {last} of {bb.name} comes from a second forward pass ({e})")
        return last, ForwardTail(bb.model, last, bb.mean, bb.std, size, precision)
    except Exception as e:  # noqa: BLE001 - fx fails in many ways; the layer maps must not depend on it
        print(f"note: no pooled last stage for {bb.name} (image-level methods can pool the cached layers): "
              f"{e if isinstance(e, UserError) else f'{type(e).__name__}: {e}'}")
        return None, None


def extract_all(p: dict, prepared: Path = PREPARED, out: Path = OUT) -> dict:
    """The extract stage: every prepared category's train and test images (and validation images,
    where prepared) through the backbone into `out` (removed first); returns stats.json's content,
    also written to out/stats.json."""
    dev = resolve_device(p["device"])     # cuda without a GPU: one line, before any work
    use_device(dev)
    layers = resolve(p)["cache_layers"]   # the `layers` param resolved, then what each method adds
    torch.manual_seed(p["seed"])
    bb = load_backbone(p["backbone"], p["init"], p["seed"])
    ex = p["extract"]
    set_token_pool(bb.model, ex["token_pool"])   # transformers: the pooled vector (class token or patch mean)
    batch_size, dtype, precision = ex["batch_size"], ex["dtype"], ex["precision"]
    size = p["data"]["crop"]
    ext, engine = make_extractor(bb.model, layers, bb.name, ex["engine"], size, bb.mean, bb.std,
                                 device=dev, precision=precision)
    last, tail = pooled_last_stage(bb, layers, size, engine, precision)
    what = f"extract {bb.name} (layers {layers}, batches of {batch_size} images of {size} px)"
    fix = "lower `extract.batch_size` (memory grows with it)."
    on_device = ext.device_bytes(batch_size, size)   # None on the CPU
    tail_bytes = tail.estimate_bytes(batch_size) if tail else 0.0
    check_memory(ext.estimate_bytes(batch_size, size, np.dtype(dtype).itemsize)
                 + (tail_bytes if on_device is None else 0.0), what, fix)
    if on_device is not None:
        check_memory(on_device + tail_bytes, f"{what} on {dev}", fix, dev)
    shutil.rmtree(out, ignore_errors=True)
    where = {"device": str(dev), "device_name": device_name(dev), "precision": precision}
    stats = {"backbone": bb.name, "init": bb.init, "layers": layers, "dtype": dtype, "engine": engine, **where,
             "categories": {}, "load_1m": load_1m(), "cpus": usable_cpus(),   # timings are read with the load
             "last_stage": last, "tail_engine": tail.engine if tail else None}
    for c in read_json(prepared / "categories.json"):
        name = c["category"]
        meta = {"backbone": bb.name, "init": bb.init, "layers": layers, "image_size": size, "engine": engine,
                **where}
        writer, pooled = FeatureWriter(out / name, meta, dtype), PooledWriter(out / name)
        times, pooled_times = {}, {}
        splits = ("train", "test", "validation") if c.get("validation") else ("train", "test")
        for split in splits:
            images = load_prepared(prepared / name, f"{split}_images")
            times[split], pooled_times[split] = extract_split(ext, images, batch_size, writer, split,
                                                              f"extract {bb.name} {name} {split}", pooled, tail)
        writer.meta["ms_per_image"] = 1000.0 * times["test"] / max(1, c["test"])
        writer.meta["pooled_ms_per_image"] = 1000.0 * pooled_times["test"] / max(1, c["test"])
        writer.meta.update(pooled=pooled.close(), last_stage=last)
        writer.close()
        # cache_mb: the layer maps (set by shapes and dtype); the pooled vectors, a few KB per image, apart
        cache_bytes = sum((out / name / split / layer_file(layer)).stat().st_size
                          for split in splits for layer in layers)
        pooled_bytes = sum(f.stat().st_size for split in splits for f in (out / name / split / POOLED).iterdir())
        stats["categories"][name] = {"forward_s": times, "ms_per_image": writer.meta["ms_per_image"],
                                     "cache_mb": cache_bytes / 2**20, "pooled_s": pooled_times,
                                     "pooled_ms_per_image": writer.meta["pooled_ms_per_image"],
                                     "pooled_mb": pooled_bytes / 2**20}
    stats["peak_mb"] = peak_rss_mb()
    stats["device_peak_mb"] = None if dev.type == "cpu" else peak_bytes(dev) / 2**20
    write_json(out / "stats.json", stats)
    return stats

