"""Stage 4, fit@<method>: fit one method per category on cached features, score the test set.

The body, with what it writes: anomaly_backbones.pipeline.fit.
"""
import sys

from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.pipeline.fit import fit_all
from anomaly_backbones.runner import run


def main():
    fit_all(sys.argv[1], load_params())


if __name__ == "__main__":
    run(main)
