"""Quality and cost of the methods that train the backbone (train@<method>), one stage run each.

    python bench/training.py --work /tmp/acc [--dataset mtd --root /work/shared/datasets/magnetic_tile]
        [--run imagenet_panda_early:panda:init=imagenet ...]

Prepares the data once in --work (a folder outside the repo: params.yaml, data/, outputs/), then
for each --run TAG:METHOD:KEY=VALUE,... runs stages/04_train.py METHOD with those params changed
(under /usr/bin/time for the process's peak RSS) and prints one markdown row per run: epochs,
image ROC-AUC, AP and F1-max (scikit-learn, on the saved scores), train seconds, peak MB and the
1-minute load average at the start. The default runs are docs/performance.md's ("Methods that train
the backbone").
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from anomaly_backbones.data.prepare import read_samples  # noqa: E402
from anomaly_backbones.params import set_params  # noqa: E402

DEFAULT_RUNS = [
    "imagenet_panda_early:panda:init=imagenet",
    "imagenet_panda_ses:panda:init=imagenet,panda.variant=ses",
    "imagenet_panda_ewc:panda:init=imagenet,panda.variant=ewc",
    "imagenet_doc:doc:init=imagenet,doc.epochs=5",
    "imagenet_msc:msc:init=imagenet,msc.epochs=2",
    "imagenet_deep_svdd:deep_svdd:init=imagenet,deep_svdd.epochs=2,deep_svdd.batch_size=32",
    "random_panda_early:panda:init=random",
    "random_doc:doc:init=random,doc.epochs=5",
    "random_msc:msc:init=random,msc.epochs=2",
    "random_deep_svdd:deep_svdd:init=random,deep_svdd.epochs=2,deep_svdd.batch_size=32",
]


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    p, r, _ = precision_recall_curve(labels, scores)
    return float(np.max(2 * p * r / np.maximum(p + r, 1e-12)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--dataset", default="mtd")
    ap.add_argument("--root", default="/work/shared/datasets/magnetic_tile")
    ap.add_argument("--reference", default=None, help="doc.reference for the doc runs")
    ap.add_argument("--run", action="append", help="TAG:METHOD:KEY=VALUE,...")
    a = ap.parse_args()
    from sklearn.metrics import average_precision_score

    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    base = work / "params.base.yaml"
    shutil.copy(ROOT / "params.yaml", base)
    set_params(base, **{"data.dataset": a.dataset, "data.root": a.root})
    if not (work / "data" / "prepared" / "categories.json").exists():
        shutil.copy(base, work / "params.yaml")
        subprocess.run([sys.executable, str(ROOT / "stages" / "02_prepare.py")], cwd=work, check=True)
    print("| run | epochs | image ROC-AUC | AP | F1-max | train s | peak MB | load 1m |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in a.run or DEFAULT_RUNS:
        tag, method, changes = (spec.split(":", 2) + [""])[:3]
        shutil.copy(base, work / "params.yaml")
        ch = {k: yaml.safe_load(v) for k, v in (c.split("=", 1) for c in changes.split(",") if c)}
        if method == "doc" and a.reference:
            ch.setdefault("doc.reference", a.reference)
        set_params(work / "params.yaml", **ch)
        r = subprocess.run(["/usr/bin/time", "-v", sys.executable, str(ROOT / "stages" / "04_train.py"), method],
                           cwd=work, capture_output=True, text=True)
        peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
        if r.returncode != 0:
            print(f"| {tag} | failed: {r.stderr.strip().splitlines()[0] if r.stderr.strip() else r.returncode} |")
            continue
        res = json.loads((work / "outputs" / method / "results.json").read_text())
        for name, c in res["categories"].items():
            labels = np.array([int(s["label"]) for s in read_samples(work / "data" / "prepared" / name)
                               if s["split"] == "test"])
            scores = np.load(work / "outputs" / method / f"{name}.npz")["scores"]
            print(f"| {tag} {name} | {c['epochs']} | {c['image_auroc']:.4f} | "
                  f"{average_precision_score(labels, scores):.4f} | {f1_max(labels, scores):.4f} | "
                  f"{c['fit_s']:.0f} | {int(peak.group(1)) / 1024 if peak else res['peak_mb']:.0f} | "
                  f"{res['load_1m'] or float('nan'):.1f} |", flush=True)


if __name__ == "__main__":
    main()
