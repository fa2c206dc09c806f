"""Stage 1, generate: the embedded default dataset (MVTec layout) under data/synthetic."""
import shutil

from anomaly_backbones.data.synthetic import generate
from anomaly_backbones.params import load_params
from anomaly_backbones.runner import run, write_json

OUT = "data/synthetic"


def main():
    p = load_params()
    shutil.rmtree(OUT, ignore_errors=True)
    counts = generate(OUT, seed=p["seed"], **p.get("synthetic", {}))
    write_json(f"{OUT}/counts.json", counts)


if __name__ == "__main__":
    run(main)
