"""The schema of every params group that is not a method's (each method declares its group on
its class, methods/<name>.py). Grouped by stage, as params.yaml is. The checks that need the
dataset registry (data.dataset, synthetic.categories) are added by the pipeline layer
(anomaly_backbones.pipeline.config.schema_groups), which sits above the data package."""
from __future__ import annotations

import re

from .schema import Param


def _unique(v) -> str | None:
    if isinstance(v, list):
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            return f"lists {dup} more than once (list each once)"
    return None


DEVICES = "auto | cpu | cuda | cuda:N"


def check_device(v) -> str | None:
    """The `device` param's spelling (whether that GPU exists is device.resolve_device's): a
    string check, so the params layer never imports torch."""
    if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        return None
    return f"must be one of {DEVICES}"


TOP = {
    "seed": Param(1024, int, low=0, high=2**32 - 1, help="fixes every random choice"),
    "device": Param("auto", str, check=check_device, help="auto (a GPU when torch sees one, else cpu) | cpu | cuda | cuda:N"),
    "backbone": Param("tf_efficientnet_lite0", str, help="`python -m anomaly_backbones backbones` lists them"),
    "init": Param("imagenet", str, help="imagenet | random | a named variant | a checkpoint path"),
    "layers": Param("auto", list, special=("auto",), check=_unique, help="auto = the registry's default"),
    "methods": Param(["padim"], list, check=_unique, help="one fit@<method> stage each"),
    "train_methods": Param([], list, check=_unique, empty=True, help="one train@<method> stage each"),
}

GROUPS = {
    "synthetic": {
        "categories": Param(["weave", "granite", "disc", "chip"], list, check=_unique),
        "n_train": Param(40, int, low=2),
        "n_good_test": Param(12, int, low=1),
        "n_defect_test": Param(9, int, low=1),
    },
    "data": {
        "dataset": Param("synthetic", str, help="`python -m anomaly_backbones download` lists them"),
        "root": Param("data/synthetic", str),
        "categories": Param("all", list, special=("all",), items=object, help="names (checked with the dataset)"),
        "resize": Param(256, int, low=1),
        "crop": Param(224, int, low=1),
        "max_image_pixels": Param(200_000_000, int, low=1, help="larger images are refused before decoding"),
        "real_iad_setting": Param("multi_view", str, help="Real-IAD's split folder: multi_view | single_view | "
                                                          "fuiad_0.0 | fuiad_0.1 | fuiad_0.2 | fuiad_0.4"),
    },
    "extract": {
        "batch_size": Param(32, int, low=1, help="images per forward pass (memory grows with it)"),
        "dtype": Param("float32", str, choices=("float32", "float16")),
        "engine": Param("auto", str, choices=("auto", "onnx", "eager")),
        "precision": Param("float32", str, choices=("float32", "bfloat16", "float16"),
                           help="the forward pass's arithmetic (autocast); float16 needs a GPU"),
        "token_pool": Param("auto", str, choices=("auto", "cls", "mean"),
                            help="transformers' pooled vector: the class token or the mean patch token; auto = "
                                 "the registry's (the published choice)"),
    },
    "metrics": {
        "pro_fpr_limit": Param(0.3, float, low=0.0, high=1.0, low_open=True,
                               help="AU-PRO integrated up to this false positive rate (MVTec AD: 0.3; MVTec AD 2 "
                                    "also reports 0.05)"),
        "aupimo": Param(False, bool, help="also compute AUPIMO (anomalib's definition, FPR 1e-5..1e-4) as "
                                          "`pixel_aupimo`: off by default, the metrics stay as they are"),
    },
    "latency": {
        "runs": Param(10, int, low=0, help="timed calls per setting; 0 skips the measurement"),
        "warmup": Param(2, int, low=0),
    },
    "threshold": {
        "holdout": Param(0.0, float, low=0.0, high=0.9, help="share of train/good held out (seeded) to calibrate "
                                                             "the decision threshold; 0 = no threshold"),
        "fpr": Param(0.01, float, low=0.0, high=0.5, low_open=True, help="target false-alarm rate on good parts"),
        "source": Param("holdout", str, choices=("holdout", "validation"),
                        help="the defect-free images the threshold is calibrated on: a hold-out of train/good "
                             "(`holdout`) or the dataset's validation set (MVTec AD 2 validation/good; the fit then "
                             "uses all of train/good)"),
        "pixel_rule": Param("quantile", str, choices=("quantile", "mean3std"),
                            help="the pixel threshold: the calibration maps' (1 - fpr) quantile, or their mean + 3 "
                                 "standard deviations (MVTec AD 2's SegF1 rule)"),
    },
}
