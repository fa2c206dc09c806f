"""Anomaly detection metrics, exact (every distinct score a threshold) and fast.

  roc.py        ROC-AUC (Mann-Whitney counts), compact ROC curve for plots
  ranks.py      the sort every threshold metric shares: negatives sorted, positives ranked among them
  precision.py  average precision (scikit-learn's), F1-max (anomalib's)
  pro.py        AUPRO up to an FPR limit (MVTec AD's definition)
  pimo.py       AUPIMO, per anomalous image (anomalib's definition), behind `metrics.aupimo`
  delong.py     ROC-AUC confidence interval (DeLong, fast midrank form)
  levels.py     image_metrics / pixel_metrics: every metric of one level in one call
"""
from .delong import mean_interval, roc_auc_delong
from .levels import (
           IMAGE_KEYS,
           IMAGE_VAR_KEY,
           OPTIONAL_PIXEL_KEYS,
           PIXEL_KEYS,
           image_metrics,
           pixel_metrics,
           pixel_metrics_bytes,
)
from .pimo import aupimo
from .precision import average_precision, f1_max
from .pro import aupro
from .roc import roc_auc, roc_auc_bytes, roc_curve

__all__ = ["IMAGE_KEYS", "IMAGE_VAR_KEY", "OPTIONAL_PIXEL_KEYS", "PIXEL_KEYS", "mean_interval", "aupimo", "aupro",
           "average_precision", "f1_max", "image_metrics", "pixel_metrics", "pixel_metrics_bytes", "roc_auc",
           "roc_auc_bytes", "roc_auc_delong", "roc_curve"]
