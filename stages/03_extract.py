"""Stage 3, extract: run the backbone once over prepared images; cache the layer maps (data/features).

The body, with what it caches and records: anomaly_backbones.pipeline.extract.
"""
from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.pipeline.extract import extract_all
from anomaly_backbones.runner import run


def main():
    extract_all(load_params())


if __name__ == "__main__":
    run(main)
