"""Stage 1, generate: the embedded default dataset (MVTec layout) under data/synthetic.

Only generated when `data.root` points at it: a run on real data (data.root elsewhere) leaves
a note instead, so a cold run on MVTec or the magnetic-tile split spends nothing here.
"""
import shutil
from pathlib import Path

from anomaly_backbones.data.synthetic import generate
from anomaly_backbones.files import write_json
from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.runner import run

OUT = "data/synthetic"


def main():
    p = load_params()
    shutil.rmtree(OUT, ignore_errors=True)
    root = p["data"]["root"]
    if Path(root).resolve() != Path(OUT).resolve():
        write_json(f"{OUT}/counts.json", {"generated": False, "why": f"data.root is {root}"})
        return
    counts = generate(OUT, seed=p["seed"], **p["synthetic"])
    write_json(f"{OUT}/counts.json", counts)


if __name__ == "__main__":
    run(main)
