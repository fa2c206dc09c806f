"""Stage 2, prepare: images -> RGB, resized and center-cropped arrays with masks (data/prepared)."""
from pathlib import Path

from anomaly_backbones.data.datasets import load_dataset
from anomaly_backbones.data.prepare import prepare_dataset
from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.runner import run

OUT = Path("data/prepared")


def main():
    p = load_params()
    d = p["data"]
    categories = load_dataset(d["dataset"], d["root"], d["categories"], d["real_iad_setting"])
    summary = prepare_dataset(categories, OUT, d["resize"], d["crop"], d["max_image_pixels"],
                              validation=p["threshold"]["source"] == "validation")
    for s in summary:
        val = f", {s['validation']} validation" if "validation" in s else ""
        print(f"prepared {s['category']}: {s['train']} train, {s['test']} test ({s['defective']} defective){val}")


if __name__ == "__main__":
    run(main)
