"""Stage 6, aggregate: means over categories, per-category CSV, ROC plots (metrics/).

The body, with what goes to metrics.json (a function of the params alone) and what to
speed.json (machine-dependent): anomaly_backbones.pipeline.aggregate.
"""
from anomaly_backbones.pipeline.aggregate import aggregate
from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.runner import run


def main():
    aggregate(load_params())


if __name__ == "__main__":
    run(main)
