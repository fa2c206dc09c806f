"""End to end, once per new dataset: a tiny generated tree in VisA's, BTAD's and MPDD's exact
layout through the whole DVC pipeline (`dvc exp run -S data.dataset=<name> -S data.root=<tree>`),
every official category, in a temporary clone (tests/test_pipeline.py's fixture)."""
from __future__ import annotations

import csv
import json
import math

import pytest

from anomaly_backbones.data.datasets import DATASETS

from test_data_trees import make_btad, make_mpdd, make_visa
from test_pipeline import clone, sh  # noqa: F401 - the clone fixture

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,make", [("visa", make_visa), ("btad", make_btad), ("mpdd", make_mpdd)])
def test_a_generated_tree_runs_end_to_end(clone, tmp_path, name, make):  # noqa: F811
    tree = make(tmp_path / name, n_train=3, n_good=2, n_defect=1)
    sh(["dvc", "exp", "run", "-S", f"data.dataset={name}", "-S", f"data.root={tree}"], cwd=clone)
    m = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert m["run"]["dataset"] == name
    assert all(math.isfinite(m["padim"][k]) for k in ("image_auroc", "pixel_auroc")), m
    with open(clone / "metrics" / "per_category.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["category"] for r in rows] == list(DATASETS[name].categories)
    assert all(r["pixel_auroc"] != "" for r in rows), rows
