"""Stage 2, prepare: images -> RGB, resized and center-cropped arrays with masks (data/prepared)."""
import shutil
from pathlib import Path

from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.data.prepare import prepare_category
from anomaly_backbones.files import write_json
from anomaly_backbones.params import load_params
from anomaly_backbones.runner import run

OUT = Path("data/prepared")


def main():
    d = load_params()["data"]
    categories = load_dataset(d["dataset"], d["root"], d["categories"])
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    summary = [prepare_category(c, OUT / c.name, d["resize"], d["crop"]) for c in categories]
    for s in summary:
        print(f"prepared {s['category']}: {s['train']} train, {s['test']} test ({s['defective']} defective)")
    write_json(OUT / "categories.json", summary)


if __name__ == "__main__":
    run(main)
