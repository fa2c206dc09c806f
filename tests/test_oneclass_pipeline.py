"""End to end: OC-SVM, SVDD and DN2 as fit stages of the DVC pipeline (tiny generated data, a
temporary clone); their params rerun only their own fit stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from test_pipeline import clone, set_params, sh  # noqa: F401 - `clone` is the fixture

pytestmark = pytest.mark.slow
ONE_CLASS = ("ocsvm", "svdd", "dn2")


def ran(log: str) -> set[str]:
    return {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage '")}


def test_image_level_methods_in_the_pipeline_and_their_params_rerun_only_their_fit(clone):  # noqa: F811
    set_params(clone, methods=["padim", *ONE_CLASS])
    sh(["dvc", "repro"], cwd=clone)
    m = json.loads((clone / "metrics" / "metrics.json").read_text())
    meta = json.loads((clone / "data" / "features" / "disc" / "meta.json").read_text())
    for name in ONE_CLASS:
        assert 0.0 <= m[name]["image_auroc"] <= 1.0 and m[name]["pixel_auroc"] is None, name
        with np.load(clone / "outputs" / name / "disc.npz") as f:
            assert set(f.files) == {"scores"} and f["scores"].shape == (meta["n_test"],)
    assert m["padim"]["pixel_auroc"] is not None
    assert meta["last_stage"] == "blocks.6" and list(meta["pooled"]) == [*meta["layers"], "blocks.6"]
    res = {n: json.loads((clone / "outputs" / n / "results.json").read_text()) for n in ("padim", "dn2")}
    # the image-level methods' backbone cost includes the network past the cached layers
    assert (res["dn2"]["categories"]["disc"]["backbone_ms_per_image"]
            > res["padim"]["categories"]["disc"]["backbone_ms_per_image"])

    set_params(clone, **{"ocsvm.nu": 0.3})
    status = sh(["dvc", "status"], cwd=clone).stdout
    assert "fit@ocsvm" in status and not any(f"fit@{n}" in status for n in ("padim", "svdd", "dn2")), status
    assert "extract:" not in status, status
    r = sh(["dvc", "repro"], cwd=clone)
    assert ran(r.stdout) == {"fit@ocsvm", "aggregate"}, r.stdout

    set_params(clone, **{"dn2.layers": ["blocks.4", "blocks.6"], "methods": ["padim", "dn2"]})
    r = sh(["dvc", "repro"], cwd=clone)
    assert ran(r.stdout) == {"fit@dn2", "aggregate"}, r.stdout   # another pooled layer: no extract either
    m2 = json.loads((clone / "metrics" / "metrics.json").read_text())
    assert set(m2) == {"run", "padim", "dn2"} and m2["padim"] == m["padim"]
