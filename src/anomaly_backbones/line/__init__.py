"""From the study to the production line.

  recommend  `python -m anomaly_backbones recommend`: the best configuration within budgets, the
             runner-up, and DeLong's paired test between them (per category and pooled)
  scores     per-image test scores and labels of a finished run, at its revision (paired tests)
  scorers    deployable scorers (PatchCore, DN2; PaDiM's is deploy.PadimScorer) + the threshold
  export     `python -m anomaly_backbones export`: ONNX model + model card, checked against outputs/
  predict    `python -m anomaly_backbones predict`: an exported model on new images

The threshold itself is calibrated by the fit stage (holdout.py, metrics/threshold.py).
"""
