"""Speed of the metrics at the magnetic-tile test set's size, and anomalib's AUPRO side by side.

    python bench/metrics.py                 # synthetic maps of the magnetic-tile test set's size:
                                            # 583 x 224 x 224 float32, defects as blobs, seed 1024
    python bench/metrics.py --maps outputs/padim/magnetic_tile.npz --prepared data/prepared/magnetic_tile
    python bench/metrics.py ... --peer-python /tmp/peer/bin/python   # + anomalib's AUPRO, same maps
    python bench/metrics.py ... --sklearn   # + scikit-learn's AP and F1-max on the same pixels

Prints, per metric, the best wall time of `--repeat` runs and the process CPU time of that run
(all threads), the threads used and the 1-minute load average. anomalib is never a dependency of
the project: give `--peer-python` a scratch environment with it,
    python3 -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib
Its AUPRO (anomalib.metrics.aupro._AUPRO, fpr_limit 0.3: connected components by OpenCV, the
curve by torch) runs in that interpreter on the same float32 maps and masks, timed the same way.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from anomaly_backbones.data.prepare import load_prepared, read_samples
from anomaly_backbones.metrics import (
    aupro,
    average_precision,
    f1_max,
    image_metrics,
    pixel_metrics,
    roc_auc,
)
from anomaly_backbones.metrics.ranks import threads

PEER = """
import json, sys, time, numpy as np, torch
from anomalib.metrics.aupro import _AUPRO
torch.set_num_threads({threads})
maps, masks = torch.from_numpy(np.load(sys.argv[1])), torch.from_numpy(np.load(sys.argv[2]))
best = None
for _ in range({repeat}):
    metric = _AUPRO(fpr_limit=0.3)
    c0, t0 = time.process_time(), time.perf_counter()
    metric.update(maps, masks)
    value = float(metric.compute())
    t, c = time.perf_counter() - t0, time.process_time() - c0
    best = min(best or (t, c), (t, c))
print(json.dumps({{"value": value, "wall_s": best[0], "cpu_s": best[1], "torch": torch.__version__}}))
"""


def synthetic(n=583, size=224, seed=1024):
    """Smooth noise maps, higher on blob-shaped defects in 60 % of the images (float32)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for k in np.flatnonzero(rng.random(n) < 0.6):
        seeds = rng.random((size, size)) < 2e-4
        masks[k] = ndimage.binary_dilation(seeds, iterations=int(rng.integers(3, 12)))
    maps = ndimage.gaussian_filter(rng.standard_normal((n, size, size), np.float32), (0, 4, 4))
    maps += 0.15 * ndimage.gaussian_filter(masks.astype(np.float32), (0, 3, 3))
    labels = masks.any(axis=(1, 2))
    return labels, maps.max(axis=(1, 2)), masks, maps


def real(maps_file: Path, prepared: Path):
    out = np.load(maps_file)
    labels = np.array([int(r["label"]) for r in read_samples(prepared) if r["split"] == "test"], bool)
    masks = load_prepared(prepared, "test_masks", mmap=False)
    return labels, out["scores"].astype(np.float32), masks, out["maps"].astype(np.float32)


def timed(fn, repeat):
    """(result, best wall seconds, CPU seconds of that run)."""
    best = None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        t, c = time.perf_counter() - t0, time.process_time() - c0
        best = min(best or (t, c), (t, c))
    return result, best[0], best[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maps", type=Path, help="a fit stage's outputs/<method>/<category>.npz (scores, maps)")
    ap.add_argument("--prepared", type=Path, help="its data/prepared/<category> folder (test masks, labels)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--peer-python", help="interpreter of a scratch environment with anomalib")
    ap.add_argument("--sklearn", action="store_true", help="also scikit-learn's AP and F1-max (slow)")
    a = ap.parse_args()

    if a.maps:
        labels, scores, masks, maps = real(a.maps, a.prepared)
        source = str(a.maps)
    else:
        labels, scores, masks, maps = synthetic()
        source = "synthetic (seed 1024)"
    n, h, w = maps.shape
    print(f"{source}: {n} x {h} x {w} maps = {maps.size / 1e6:.1f} M pixels, {masks.sum() / masks.size:.2%} defect, "
          f"{len(np.unique(maps)):,} distinct scores; threads {threads()}, load {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; best of {a.repeat}")

    rows = [
        ("pixel ROC-AUC (roc_auc)", lambda: roc_auc(masks, maps)),
        ("pixel AP", lambda: average_precision(masks, maps)),
        ("pixel F1-max", lambda: f1_max(masks, maps)),
        ("pixel AUPRO", lambda: aupro(masks, maps)),
        ("pixel_metrics (all four, one sort)", lambda: pixel_metrics(masks, maps)),
        ("image_metrics (ROC-AUC, DeLong, AP, F1)", lambda: image_metrics(labels, scores)),
    ]
    results, times = {}, {}
    print(f"{'metric':42s} {'wall s':>8s} {'CPU s':>8s}  value")
    for name, fn in rows:
        value, t, c = timed(fn, a.repeat)
        results[name], times[name] = value, (t, c)
        shown = ", ".join(f"{k} {v:.6f}" for k, v in value.items()) if isinstance(value, dict) else f"{value:.6f}"
        print(f"{name:42s} {t:8.3f} {c:8.3f}  {shown}")
    ours, ours_t = results["pixel AUPRO"], times["pixel AUPRO"]

    if a.sklearn:
        from sklearn.metrics import average_precision_score, precision_recall_curve
        y, s = masks.ravel(), maps.ravel()
        value, t, c = timed(lambda: average_precision_score(y, s), 1)
        print(f"{'sklearn average_precision_score':42s} {t:8.3f} {c:8.3f}  {value:.6f} "
              f"(ours - sklearn {results['pixel AP'] - value:+.2e})")
        (p, r, _), t, c = timed(lambda: precision_recall_curve(y, s), 1)
        f1 = float(np.max(2 * p * r / np.maximum(p + r, 1e-300)))
        print(f"{'sklearn precision_recall_curve F1-max':42s} {t:8.3f} {c:8.3f}  {f1:.6f} "
              f"(ours - sklearn {results['pixel F1-max'] - f1:+.2e})")

    if a.peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "maps.npy", np.ascontiguousarray(maps, np.float32))
            np.save(Path(tmp) / "masks.npy", masks.astype(np.uint8))
            code = PEER.format(threads=threads(), repeat=a.repeat)
            done = subprocess.run([a.peer_python, "-c", code, f"{tmp}/maps.npy", f"{tmp}/masks.npy"],
                                  capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"anomalib's AUPRO failed:\n{done.stderr[-3000:]}")
        peer = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{'anomalib 2.x _AUPRO (torch ' + peer['torch'] + ')':42s} {peer['wall_s']:8.3f} {peer['cpu_s']:8.3f}  "
              f"{peer['value']:.6f}")
        print(f"AUPRO ours {ours:.6f} vs anomalib {peer['value']:.6f}: difference {ours - peer['value']:+.2e}; "
              f"ours {peer['wall_s'] / ours_t[0]:.1f}x faster (wall), {peer['cpu_s'] / ours_t[1]:.1f}x less CPU")


if __name__ == "__main__":
    main()
