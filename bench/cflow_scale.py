"""CFLOW-AD against the scale of its input features: tests/test_cflow.py's synthetic set (two layers,
24 training / 12 test images, 6 short epochs) multiplied by each SCALE, fitted with
`cflow.standardize` false (anomalib's behaviour) and auto. Prints a Markdown table: image ROC-AUC,
the number of distinct image scores (1 = every image the same score), the standardized layers.

    PYTHONPATH=src python bench/cflow_scale.py 1 10 30 100 1000 100000
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_cache  # noqa: E402
from test_cflow import SHAPES, SMALL, synthetic  # noqa: E402

from anomaly_backbones.methods.cflow import CFlow  # noqa: E402


def main(scales: list[float]) -> None:
    print("| scale | false: image ROC-AUC, distinct scores | auto: image ROC-AUC, distinct scores | standardized |")
    print("|---|---|---|---|")
    for scale in scales:
        d = Path(tempfile.mkdtemp())
        (train, test), labels = synthetic(d, seed=1)
        big = {split: {k: fs.array(k)[:] * scale for k in SHAPES} for split, fs in (("train", train), ("test", test))}
        tr, te = make_cache(d / "scaled", big["train"], big["test"], image_size=32)
        cells = []
        for standardize in (False, "auto"):
            m = CFlow({**SMALL, "standardize": standardize}, list(SHAPES), seed=1024)
            m.fit(tr)
            scores = m.predict(te)[0]
            cells.append(f"{roc_auc_score(labels, scores):.4f}, {len(np.unique(scores))}")
        print(f"| {scale:g} | {cells[0]} | {cells[1]} | {', '.join(m.standardized) or 'none'} |", flush=True)


if __name__ == "__main__":
    main([float(a) for a in sys.argv[1:]] or [1, 1e3])
