"""Recomputes golden values of tests/test_training_losses.py from the authors' published loss
functions, restated here with plain torch (not the project's implementations), on the inputs the
test draws (`loss_inputs`: numpy default_rng(11)).

    python tests/refs/training_losses.py      # prints each value next to the one the test keeps

- PANDA (Reiss et al. 2021, github.com/talreiss/PANDA, utils.py CompactnessLoss): the mean over
  the batch of ||f - c||^2 / dim.
- Mean-Shifted Contrastive (Reiss & Hoshen 2023, github.com/talreiss/Mean-Shifted-Anomaly-Detection,
  main.py contrastive_loss, temperature 0.25, and run_epoch with --angular): the NT-Xent loss of
  the two views' normalized, centre-shifted features, plus each view's mean squared norm.

Not restated here (the test keeps them from the scratch run described in its docstring): DOC's
Caffe DistanceLayer (forward and backward) and the one-epoch weight changes of PANDA, Mean-Shifted
and Deep SVDD, which need the authors' full training loops.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/, for the test's inputs
from test_training_losses import (AUTHORS_COMPACTNESS, AUTHORS_MSC_CONTRASTIVE,  # noqa: E402
                                  AUTHORS_MSC_TOTAL, loss_inputs)


def panda_compactness(features: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    dim = features.shape[1]
    return ((features - centre).norm(dim=1) ** 2 / dim).mean()


def msc_contrastive(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.25) -> torch.Tensor:
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    n = a.shape[0]
    both = torch.cat([a, b])
    sim = torch.exp(both @ both.t() / temperature)
    others = sim.masked_select(~torch.eye(2 * n, dtype=torch.bool)).view(2 * n, -1).sum(1)
    positive = torch.exp((a * b).sum(-1) / temperature).repeat(2)
    return (-torch.log(positive / others)).mean()


def msc_total(z1: torch.Tensor, z2: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    a, b = z1 - centre, z2 - centre
    return msc_contrastive(a, b) + (a ** 2).sum(1).mean() + (b ** 2).sum(1).mean()


def main() -> int:
    f, c, z1, z2, cc, _ = loss_inputs()
    rows = [("PANDA compactness", float(panda_compactness(f, c)), AUTHORS_COMPACTNESS),
            ("Mean-Shifted contrastive", float(msc_contrastive(z1 - cc, z2 - cc)), AUTHORS_MSC_CONTRASTIVE),
            ("Mean-Shifted + angular", float(msc_total(z1, z2, cc)), AUTHORS_MSC_TOTAL)]
    bad = 0
    for name, got, kept in rows:
        ok = abs(got - kept) < 1e-6
        bad += not ok
        print(f"{name:26s} recomputed {got:.10f}  kept {kept:.10f}  {'same' if ok else 'DIFFERENT'}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
