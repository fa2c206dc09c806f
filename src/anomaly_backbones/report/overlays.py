"""Anomaly-map overlays of the workspace run: image | ground truth | heat map.

overlays(root, out, n) -> (made, notes): for each (method, category) of `outputs/`, n test images from
`data/prepared` (defective ones spread over the test set, one good one), written to
out/overlays/<method>_<category>.png with one colour scale per category. An image-level method
(outputs without `maps`) and a category without outputs (a failed fit) get a note instead. Only the workspace has these
files checked out (experiments keep them in the DVC cache: `dvc exp apply <name>` first).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .fmt import init_label


def pick_indices(labels: list[int], n: int) -> list[int]:
    """n test images: defective ones spread over the list, plus one defect-free image (when n >= 2)."""
    if n <= 0:
        return []
    bad = [i for i, lab in enumerate(labels) if lab == 1]
    good = [i for i, lab in enumerate(labels) if lab == 0]
    n_good = 1 if (n >= 2 and good) else 0
    n_bad = min(len(bad), n - n_good)
    pick = [bad[round(k * (len(bad) - 1) / max(1, n_bad - 1))] for k in range(n_bad)] if n_bad else []
    pick = list(dict.fromkeys(pick))
    pick += good[:n - len(pick)] if len(pick) < n else []
    return pick[:n]


def overlays(root: Path, out: Path, n: int) -> tuple[list[dict], list[str]]:
    """Image | ground truth | heat map for n test images per (method, category) of the workspace run."""
    import numpy as np

    notes: list[str] = []
    made: list[dict] = []
    if n <= 0:
        return made, notes
    prepared, outputs = root / "data" / "prepared", root / "outputs"
    if not (prepared / "categories.json").exists() or not outputs.is_dir():
        return made, ["the workspace has no `data/prepared` and `outputs/` (run `dvc repro`, or "
                      "`dvc exp apply <name>` to check out an experiment's outputs)"]
    cats = [c["category"] for c in json.loads((prepared / "categories.json").read_text())]
    stats_f = root / "data" / "features" / "stats.json"
    stats = json.loads(stats_f.read_text()) if stats_f.exists() else {}
    who = f"{stats.get('backbone', '?')}, init {init_label(stats.get('init', '?'))}"
    methods = sorted(p.parent.name for p in outputs.glob("*/results.json"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for m in methods:
        for cat in cats:
            npz = outputs / m / f"{cat}.npz"
            cdir = prepared / cat
            if not npz.exists() or not (cdir / "test_images.npy").exists():
                notes.append(f"{m}/{cat}: no outputs")
                continue
            with np.load(npz) as z:
                if "maps" not in z.files:   # an image-level method (DN2, OC-SVM, ...): scores only
                    notes.append(f"{m}/{cat}: image-level method (no anomaly map), no overlay")
                    continue
                maps, scores = z["maps"], z["scores"]
            images = np.load(cdir / "test_images.npy", mmap_mode="r")
            masks = np.load(cdir / "test_masks.npy", mmap_mode="r")
            with open(cdir / "samples.csv", newline="") as f:
                test = [r for r in csv.DictReader(f) if r["split"] == "test"]
            if not (len(maps) == len(images) == len(masks) == len(test)):
                notes.append(f"{m}/{cat}: outputs ({len(maps)} maps) do not match data/prepared ({len(images)} "
                             f"test images): stale workspace, skipped")
                continue
            idx = pick_indices([int(r["label"]) for r in test], n)
            vmin, vmax = float(np.min(maps)), float(np.max(maps))
            fig, axes = plt.subplots(len(idx), 3, figsize=(8, 2.5 * len(idx) + 0.5), dpi=90, squeeze=False,
                                     layout="constrained")
            for row, i in enumerate(idx):
                img, gt = np.asarray(images[i]), np.asarray(masks[i])
                heat = np.asarray(maps[i], dtype=np.float32)
                a0, a1, a2 = axes[row]
                a0.imshow(img)
                a0.set_title(f"#{i} {test[i]['defect']}  score {float(scores[i]):.3g}", fontsize=8)
                a1.imshow(gt, cmap="gray", vmin=0, vmax=1)
                a1.set_title("ground truth", fontsize=8)
                a2.imshow(img)
                im = a2.imshow(heat, cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
                if gt.any():
                    a2.contour(gt, levels=[0.5], colors="white", linewidths=0.8)
                a2.set_title("anomaly map (GT outline)", fontsize=8)
                for a in (a0, a1, a2):
                    a.set_xticks([])
                    a.set_yticks([])
            fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.8, label="anomaly score")
            fig.suptitle(f"{m} · {cat} · {who}  (heat scale shared over the category's test set)", fontsize=9)
            p = out / "overlays" / f"{m}_{cat}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(p)
            plt.close(fig)
            made.append({"method": m, "category": cat, "path": p})
    return made, notes
