"""From the study to the production line.

  recommend  `python -m anomaly_backbones recommend`: the best configuration within budgets, the
             runner-up, and DeLong's paired test between them (per category and pooled)
  scores     per-image test scores and labels of a finished run, at its revision (paired tests)
"""
