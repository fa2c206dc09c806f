"""Stage 4b, train@<method>: train the backbone on each category's prepared images, score its test set.

For the methods of `train_methods` (reads = "images": deep_svdd, panda, msc, doc). The body,
with what it writes (results.json, the DVCLive curves in metrics/train/<method>):
anomaly_backbones.pipeline.train.
"""
import sys

from anomaly_backbones.pipeline.config import load_params
from anomaly_backbones.pipeline.train import train_all
from anomaly_backbones.runner import run


def main():
    train_all(sys.argv[1], load_params())


if __name__ == "__main__":
    run(main)
