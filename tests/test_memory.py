"""Memory guards: each stops its step with the param that lowers the estimate named, and each
estimate grows with the params it names. Measured peaks vs estimates: bench/memory.py."""
from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import anomaly_backbones.features as features
import anomaly_backbones.resources as resources
from anomaly_backbones.backbones.extractor import FeatureExtractor, extract_bytes
from anomaly_backbones.errors import UserError
from anomaly_backbones.methods import get_method
from anomaly_backbones.methods.cflow import CFlow
from anomaly_backbones.methods.padim import PaDiM
from anomaly_backbones.methods.patchcore import PatchCore
from anomaly_backbones.methods.spade import SPADE

from conftest import ROOT, make_cache

LAYERS = {"a": (6, 8, 8), "b": (10, 4, 4)}
MTD = {"a": (24, 56, 56), "b": (40, 28, 28), "c": (112, 14, 14)}  # magnetic-tile shapes (lite0)
SMALL_CFLOW = {"epochs": 1, "coupling_blocks": 2, "condition_vector": 8, "fibers_per_epoch": 64}


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    train = {k: rng.normal(size=(10, *s)) for k, s in LAYERS.items()}
    test = {k: rng.normal(size=(4, *s)) for k, s in LAYERS.items()}
    return make_cache(tmp_path, train, test, image_size=32)


@pytest.mark.parametrize("method,params,step,param", [
    ("padim", {"d": 8}, "fit", "padim.d"),
    ("padim", {"d": 8}, "predict", "padim.d"),
    ("spade", {"k": 3}, "predict", "spade.chunk_mb"),
    ("patchcore", {"projection_dim": 4}, "fit", "patchcore.projection_dim"),
    ("patchcore", {"projection_dim": 4}, "predict", "patchcore.coreset_ratio"),
    ("cflow", SMALL_CFLOW, "fit", "cflow.fiber_batch_size"),
    ("cflow", SMALL_CFLOW, "predict", "cflow.batch_size"),
])
def test_guard_stops_the_step_and_names_the_param(cache, monkeypatch, method, params, step, param):
    train, test = cache
    m = get_method(method)(params, list(LAYERS), 0)
    if step == "predict":
        m.fit(train)
    monkeypatch.setattr(resources, "available_bytes", lambda: 1000)
    with pytest.raises(UserError, match=re.escape(f"`{param}`")) as e:
        m.fit(train) if step == "fit" else m.predict(test)
    assert "GiB is available" in str(e.value) and str(train.dir) in str(e.value)


def increasing(values) -> bool:
    return all(a < b for a, b in zip(values, values[1:]))


def test_padim_estimates_grow_with_chunk_mb_and_stay_bounded_in_d_and_grid():
    """The fit-and-score pass holds chunks, never every inverse: its estimates grow with chunk_mb
    (and with d only as far as one grid row exceeds it); the built model grows with d^2."""
    def padim(d, chunk_mb=256, grid=(56, 56)):
        m = PaDiM({"d": d, "chunk_mb": chunk_mb}, list(MTD), 0)
        m.grid, m.d = grid, d
        return m
    assert increasing([padim(100, mb).fit_bytes(761) for mb in (16, 64, 256)])
    assert increasing([padim(100, mb).predict_bytes(583, 224) for mb in (16, 64, 256)])
    assert increasing([padim(d).model_bytes() for d in (50, 100, 200, 550)])
    for d in (50, 100, 200, 550):
        assert padim(d).fit_bytes(761) < 2 * 2**30 and padim(d).predict_bytes(583, 224) < 3 * 2**30
    # a 4x larger grid: the distances and maps grow, the chunks do not
    assert padim(550, grid=(112, 112)).predict_bytes(583, 224) < padim(550).predict_bytes(583, 224) + 4.0 * 583 * 3 * 56 * 56 * 1.01


def test_spade_estimate_grows_with_chunk_mb_and_batch_size():
    def est(**p):
        return SPADE(p, list(MTD)).predict_bytes(MTD, 583, 761, 224)
    assert increasing([est(chunk_mb=mb) for mb in (8, 32, 128)])
    assert increasing([est(batch_size=b) for b in (1, 16, 64)])
    # the gallery group is capped by K: a budget beyond K images changes nothing
    assert est(k=5, chunk_mb=1000) == est(k=5, chunk_mb=10000)


def test_patchcore_estimates_grow_with_their_params(monkeypatch):
    import anomaly_backbones.methods.patchcore as patchcore

    def pc(**p):
        return PatchCore(p, list(MTD))
    shapes = MTD
    assert increasing([pc(projection_dim=p).fit_bytes(shapes, 761) for p in (32, 64, 128)])
    # deeper layers: fewer patches per image
    assert pc(layers=["c"]).fit_bytes(shapes, 761) < pc(layers=["b", "c"]).fit_bytes(shapes, 761)
    # the fast coreset's bfloat16 copy, only where the CPU multiplies bfloat16 (else fast = exact)
    monkeypatch.setattr(patchcore, "native_bf16_cpu", lambda: True)
    assert pc(coreset="exact").fit_bytes(shapes, 761) < pc(coreset="fast").fit_bytes(shapes, 761)
    monkeypatch.setattr(patchcore, "native_bf16_cpu", lambda: False)
    assert pc(coreset="exact").fit_bytes(shapes, 761) == pc(coreset="fast").fit_bytes(shapes, 761)
    assert increasing([pc(dim=d).predict_bytes(shapes, 583, 60000, 224) for d in (32, 64, 128)])
    assert increasing([pc().predict_bytes(shapes, 583, m, 224) for m in (6000, 60000, 600000)])


def test_cflow_estimates_grow_with_batch_sizes_not_fibers_per_epoch():
    def fit(**p):
        return CFlow(p, list(MTD)).fit_bytes(MTD)
    assert increasing([fit(fiber_batch_size=f) for f in (256, 2048, 16384)])
    assert increasing([fit(batch_size=b) for b in (8, 32, 128)])
    assert fit(fibers_per_epoch=1024) == fit(fibers_per_epoch=1 << 20)  # more steps, not bigger ones
    # at 56 px the maps are small and the test batch is the peak (at 224 px the maps may be)
    assert increasing([CFlow({"batch_size": b}, list(MTD)).predict_bytes(MTD, 583, 56) for b in (1, 8, 32)])


def test_extract_estimate_grows_with_batch_size_and_probe_stops_at_the_last_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 64, 3, padding=1))  # never runs: the last hooked layer is "2"
    ext = FeatureExtractor(model, ["0", "2"])
    assert ext.probe(16) == (8 * 16 * 16, 8 * 16 * 16 + 4 * 8 * 8, 8 * 16 * 16)
    assert increasing([ext.estimate_bytes(b, 16) for b in (1, 8, 32)])
    assert increasing([extract_bytes(b, 224, 10**7, 10**6, 10**5, 10**5, 4) for b in (1, 8, 32)])


def test_padim_reads_by_image_ranges_with_identical_results(cache, monkeypatch):
    train, test = cache
    ref = PaDiM({"d": 8}, list(LAYERS), 0)
    ref.fit(train)
    monkeypatch.setattr(features, "MAP_BYTES", 1)  # one image per read
    assert [sl.stop - sl.start for sl in train.groups("a")] == [1] * len(train)
    m = PaDiM({"d": 8}, list(LAYERS), 0)
    m.fit(train)
    assert torch.equal(m.inv_cov, ref.inv_cov)
    assert np.array_equal(m.grid_scores(test)[1], ref.grid_scores(test)[1])


def test_peak_rss_is_this_process_not_its_parent():
    """ru_maxrss inherits the parent's peak across fork+exec; a stage's peak_mb must not."""
    assert resources.peak_rss_mb() > 200  # torch is loaded here
    code = "from anomaly_backbones.resources import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert float(out) < 100


@pytest.mark.slow
def test_bench_memory_measures_a_method_case(tmp_path):
    """bench/memory.py makes docs/performance.md's estimate-vs-peak figures: a case runs in its own
    process through the guard it wraps (a changed guard signature once failed every case while
    the table still printed) and its estimate covers the measured peak."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "memory.py"), "patchcore", "--n-train", "6",
                        "--n-test", "4", "--cache", str(tmp_path / "cache")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    row = r.stdout.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "patchcore" and float(row[2]) > 0 and float(row[3]) > 0
    assert float(row[4]) >= 1.0, r.stdout
