"""The report on hand-made `dvc exp show` entries: which runs it compares, its tables, the Pareto view,
the compact `show` table, the self-contained index.html and the offline page of `dvc plots`.
(tests/test_report_study.py runs it on a tiny real DVC project.)"""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import pytest

from anomaly_backbones.dvc_client import Entry
from anomaly_backbones.report.appendix import latency_section
from anomaly_backbones.report.build import build_report
from anomaly_backbones.report.fmt import LOAD_MARK, NOT_APPLICABLE, RANDOM_MARK
from anomaly_backbones.report.overlays import pick_indices
from anomaly_backbones.report.pareto import pareto_front, pareto_rows
from anomaly_backbones.report.runs import gather
from anomaly_backbones.report.show import compact_layers, show_lines
from anomaly_backbones.report.tables import family_tables, long_rows, registry_info
from anomaly_backbones.report.vega_offline import remote_references
from conftest import ROOT

ENV_PY = [sys.executable, "-m", "anomaly_backbones"]


def git(args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A git repository with a base branch `main` (one commit) and HEAD one commit further on `feature`."""
    git(["init", "-q", "-b", "main"], tmp_path)
    base = git(["commit", "-q", "--allow-empty", "-m", "base"], tmp_path)
    git(["checkout", "-q", "-b", "feature"], tmp_path)
    head = git(["commit", "-q", "--allow-empty", "-m", "head"], tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path, head, base


def params(backbone="tf_efficientnet_lite0", init="imagenet", **extra):
    return {"seed": 1024, "backbone": backbone, "init": init, "layers": "auto", "data": {"dataset": "synthetic"},
            "padim": {"d": "auto"}, **extra}


def metrics(backbone="tf_efficientnet_lite0", init="imagenet:in1k_pypi", layers="blocks.1,blocks.2,blocks.4",
            auroc=0.95, methods=("padim",), new=True):
    out = {"run": {"backbone": backbone, "init": init, "layers": layers, "dataset": "synthetic", "seed": 1024}}
    for i, m in enumerate(methods):
        a = round(auroc - 0.05 * i, 6)
        if not new:   # a run older than the metrics of issue 17
            out[m] = {"image_auroc": a, "pixel_auroc": 0.9}
        elif m == "ocsvm":   # image-level: no anomaly map. metrics.json says pixel_* null; `dvc exp
            # show --json` drops null metrics, so the report gets no pixel keys at all (as here)
            out[m] = {"image_auroc": a, "image_auroc_lo": a - 0.04, "image_auroc_hi": min(a + 0.04, 1.0),
                      "image_ap": 0.9, "image_f1max": 0.8}
        else:
            out[m] = {"image_auroc": a, "image_auroc_lo": a - 0.03, "image_auroc_hi": min(a + 0.03, 1.0),
                      "image_ap": 0.93, "image_f1max": 0.88, "pixel_auroc": 0.97, "pixel_ap": 0.41,
                      "pixel_f1max": 0.45, "pixel_aupro": 0.88}
    return out


def speed(ms=10.0, load=0.3, cpus=2, device="cpu", methods=("padim",)):
    out = {m: {"ms_per_image": ms * (i + 1), "fit_s": 2.0, "peak_mb": 900.0} for i, m in enumerate(methods)}
    return out | ({"host": {"cpus": cpus, "cpu_model": "Test CPU", "load_1m": load, "device": device}}
                  if load is not None else {})


def entry(name, rev, kind, p, m, s=None, state="success", baseline=None, ts=None):
    files = {"metrics/metrics.json": m} if m else {}
    files |= {"metrics/speed.json": s} if s else {}
    return Entry(name=name, rev=rev, kind=kind, state=state, baseline=baseline, timestamp=ts, params=p, files=files)


# --------------------------------------------------------------------------------------- which runs

def test_gather_compares_the_committed_run_once_with_the_experiments(repo):
    root, head, base = repo
    lite1_p, lite1_m = params("tf_efficientnet_lite1"), metrics("tf_efficientnet_lite1", auroc=0.97)
    entries = [
        entry("workspace", "workspace", "workspace", params(), metrics(), speed(12.0)),   # = HEAD, re-run here
        entry("feature", head, "commit", params(), metrics(), speed(10.0)),
        entry("lite1", "1" * 40, "experiment", lite1_p, lite1_m, speed(14.0), baseline=head, ts="2026-01-02"),
        entry("lite1-again", "2" * 40, "experiment", lite1_p, lite1_m, speed(15.0), baseline=head, ts="2026-01-01"),
        entry("same-as-head", "3" * 40, "experiment", params(), metrics(), speed(11.0), baseline=head),
        entry("queued", "4" * 40, "experiment", params("resnet18"), None, state="queued", baseline=head),
        entry("main", base, "commit", params(), metrics(auroc=0.93), speed(10.0)),
        entry("old", "5" * 40, "commit", params(), metrics(auroc=0.5)),   # another commit (`-A`): not compared
    ]
    g = gather(root, base="main", entries=entries, status_json={})
    assert [(r.label, r.role) for r in g.runs] == [("HEAD", "baseline"), ("main", "base"), ("lite1", "")]
    assert g.runs[0].run_cell == "HEAD (baseline)" and g.runs[1].run_cell == "main (base branch)"
    skipped = dict(g.skipped)
    assert skipped == {"lite1-again": "same params and results as lite1",
                       "same-as-head": "same params and results as HEAD", "queued": "queued",
                       "workspace": "same params and results as HEAD"}
    # base = HEAD: only HEAD; a base that does not resolve: a note
    assert [r.label for r in gather(root, base="feature", entries=entries, status_json={}).runs] == ["HEAD", "lite1"]
    g = gather(root, base="nope", entries=entries, status_json={})
    assert [r.label for r in g.runs] == ["HEAD", "lite1"] and "--base nope" in g.notes[0]
    # a workspace whose metrics are not those of its params is left out, with the reason
    stale = [entry("workspace", "workspace", "workspace", params("resnet18"), metrics())] + entries[1:3]
    g = gather(root, base="feature", entries=stale, status_json={})
    assert "metrics/metrics.json is from backbone=tf_efficientnet_lite0" in dict(g.skipped)["workspace"]


# ----------------------------------------------------------------------------------------- tables

def _runs(repo, extra=()):
    root, head, _ = repo
    entries = [
        entry("feature", head, "commit", params(), metrics(methods=("padim", "ocsvm")),
              speed(8.0, load=0.4, methods=("padim", "ocsvm"))),
        entry("r18-busy", "1" * 40, "experiment", params("resnet18", "random"),
              metrics("resnet18", "random:seed=1024", "layer1,layer2,layer3", 0.8, methods=("padim", "ocsvm")),
              speed(70.0, load=3.1, methods=("padim", "ocsvm")), baseline=head),
        entry("r18-old", "2" * 40, "experiment", params("resnet18", "random", padim={"d": 50}),
              metrics("resnet18", "random:seed=1024", "layer1,layer2,layer3", 0.7, new=False),
              {"padim": {"ms_per_image": 60.0, "fit_s": 1.0, "peak_mb": 800.0}}, baseline=head),
        *extra]
    return gather(root, base="feature", entries=entries, status_json={})


def test_family_tables_in_the_seeds_shape(repo):
    g = _runs(repo)
    reg = registry_info(sorted({r.backbone for r in g.runs}))
    rows = long_rows(g.runs, reg)
    fam = family_tables(rows, g.common)
    lite, res = fam["efficientnet_lite"]["md"], fam["resnet"]["md"]
    header = res.splitlines()[2]
    assert header.startswith("| backbone | init | variant | padim image ROC-AUC (95 % CI) | padim pixel ROC-AUC | "
                             "padim AUPRO | ocsvm image ROC-AUC (95 % CI) | ocsvm pixel ROC-AUC | ocsvm AUPRO |")
    assert "| padim CPU ms/image | ocsvm CPU ms/image | trunk parameters | run |" in header
    busy = next(line for line in res.splitlines() if "r18-busy" in line).split(" | ")
    old = next(line for line in res.splitlines() if "r18-old" in line and "2.8M" in line).split(" | ")
    # interval lo-hi beside the value, the better of the two rows in bold; image-level: "—"; older run: empty
    assert busy[3] == "**0.800** (0.770-0.830)" and busy[4] == "**0.970**" and busy[5] == "0.880"
    assert busy[6] == "0.750 (0.710-0.790)" and busy[7] == busy[8] == NOT_APPLICABLE
    assert old[3] == "0.700" and old[5] == "" and old[6] == ""
    # timed with load 3.1 on 2 CPUs: flagged; the baseline (load 0.4) is not
    assert busy[9] == f"70.0 {LOAD_MARK}" and busy[10] == f"140.0 {LOAD_MARK}"
    assert old[9] == "60.0" and busy[1] == f"random {RANDOM_MARK}" and busy[2] == ""
    assert old[2] == "padim.d=50"
    # trunk parameters: resnet18 up to layer3 (conv1 ... layer3), not the whole classifier
    assert busy[11] == "2.8M" and "(baseline)" in lite
    csv_rows = {r["source"]: r for r in fam["resnet"]["csv"]}
    assert csv_rows["r18-busy"]["trunk_params"] == 2782784 and csv_rows["r18-busy"]["full_params"] == 11689512
    assert csv_rows["r18-busy"]["ocsvm_pixel_aupro"] is None and csv_rows["r18-busy"]["under_load"] is True
    assert csv_rows["r18-busy"]["padim_image_auroc_lo"] == 0.77
    assert "| padim image AP | padim image F1-max | padim pixel AP | padim pixel F1-max |" in res


def test_pareto_keeps_devices_apart_and_carries_the_interval(repo):
    root, head, _ = repo
    gpu = entry("lite0-gpu", "9" * 40, "experiment", params(init="imagenet", extract={"device": "cuda"}),
                metrics(auroc=0.99), speed(1.0, load=0.1, device="cuda"), baseline=head)
    g = _runs(repo, [gpu])
    rows = pareto_rows(long_rows(g.runs, registry_info(sorted({r.backbone for r in g.runs}))))
    by = {(p["source"], p["method"]): p for p in rows}
    # the GPU point (1 ms, 0.99) would dominate the baseline's padim (8 ms, 0.95) on a shared axis: on
    # separate axes both are on their front
    assert by[("lite0-gpu", "padim")]["device"] == "cuda" and by[("lite0-gpu", "padim")]["pareto_front"]
    assert by[("HEAD", "padim")]["pareto_front"] and by[("HEAD", "padim")]["device"] == "cpu"
    assert by[("r18-busy", "padim")]["under_load"] and not by[("r18-busy", "padim")]["pareto_front"]
    assert by[("HEAD", "ocsvm")]["level"] == "image" and by[("HEAD", "padim")]["image_auroc_lo"] == pytest.approx(0.92)


def test_a_gpu_run_as_the_aggregate_writes_it_is_labelled_and_never_on_the_cpu_axis(repo, monkeypatch):
    """A run on a GPU (speed.json's host names cuda:0 and the card; metrics.json's run says cuda,
    bfloat16): its ms/image cell names the device, the CSVs carry the card, and it gets a Pareto
    plot of its own, however fast it is."""
    root, head, _ = repo
    m = metrics(auroc=0.99)
    m["run"] |= {"device": "cuda", "precision": "bfloat16"}
    s = speed(0.8, load=0.1)
    s["host"] |= {"device": "cuda:0", "device_name": "NVIDIA H200"}
    gpu = entry("lite0-h200", "9" * 40, "experiment", params(device="cuda", extract={"precision": "bfloat16"}),
                m, s, baseline=head)
    g = _runs(repo, [gpu])
    rows = long_rows(g.runs, registry_info(sorted({r.backbone for r in g.runs})))
    prow = {(p["source"], p["method"]): p for p in pareto_rows(rows)}
    assert prow[("lite0-h200", "padim")]["device"] == "cuda:0" and prow[("HEAD", "padim")]["device"] == "cpu"
    assert prow[("lite0-h200", "padim")]["pareto_front"] and prow[("HEAD", "padim")]["pareto_front"]
    lite = family_tables(rows, g.common)["efficientnet_lite"]
    line = next(x for x in lite["md"].splitlines() if "lite0-h200" in x)
    assert "0.8 (cuda:0)" in line and "device=cuda" in line
    by = {r["source"]: r for r in lite["csv"]}
    assert by["lite0-h200"]["device_name"] == "NVIDIA H200" and by["HEAD"]["device"] == "cpu"
    monkeypatch.setattr("anomaly_backbones.report.build.gather", lambda *a, **k: g)
    out = build_report(root, "reports", n_overlays=0)
    assert (out / "pareto_synthetic.png").exists() and len(list(out.glob("pareto_synthetic_cuda*.png"))) == 1
    with open(out / "pareto.csv") as f:
        devices = {(r["source"], r["device"]) for r in csv.DictReader(f)}
    assert ("lite0-h200", "cuda:0") in devices and ("HEAD", "cpu") in devices


def test_pareto_front_on_hand_data():
    cost = [10, 20, 30, 40, 25, None, 20, 5, 30]
    qual = [0.70, 0.90, 0.95, 0.94, 0.85, 0.99, 0.90, 0.60, float("nan")]
    #       front front front no(30) no(20) none  tie   front nan
    assert pareto_front(cost, qual) == [True, True, True, False, False, False, True, True, False]
    assert pareto_front([], []) == []
    assert pareto_front([1.0], [0.5]) == [True]
    assert pareto_front([1, 1], [0.5, 0.6]) == [False, True]    # same cost, better quality wins


def test_overlay_image_choice():
    labels = [0, 0, 1, 1, 1, 1, 0]
    assert pick_indices(labels, 3) == [2, 5, 0]                  # defects spread out, then one good image
    assert pick_indices(labels, 1) == [2]
    assert pick_indices([0, 0], 3) == [0, 1] and pick_indices(labels, 0) == []


def test_latency_table_flags_load(repo, tmp_path):
    g = _runs(repo)
    lat = lambda bb, load: {"backbone": bb, "category": "disc", "image_size": 224, "load_1m": load,  # noqa: E731
                            "padim": {"eager_1t_ms": 20.0, "eager_1t_p90_ms": 25.0, "onnx_mb": 1.5, "threads_all": 2}}
    g.runs[0].latency, g.runs[1].latency = lat("tf_efficientnet_lite0", 0.5), lat("resnet18", 3.0)
    lines = latency_section(tmp_path, g.runs, {})
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| ")]
    assert table[2].endswith(f"| 3.0 {LOAD_MARK} | r18-busy |") and table[3].endswith("| 0.5 | HEAD (baseline) |")
    assert [r["source"] for r in csv.DictReader(open(tmp_path / "latency.csv"))] == ["r18-busy", "HEAD"]
    # a model that cannot be built (or an untraceable backbone): a note with its size, not a row
    g.runs[1].latency = {"backbone": "resnet18", "init": "random", "padim_model_mb": 47000.0,
                         "error": "the PaDiM model of data/features/disc needs about 46 GiB"}
    lines = latency_section(tmp_path, g.runs, {})
    assert sum(line.startswith("| ") for line in lines[2].splitlines()) == 3   # header, rule, HEAD
    assert any("resnet18" in x and "no latency (PaDiM model 47,000 MB): the PaDiM model" in x for x in lines)


# ---------------------------------------------------------------------------------- show, html, pipes

def test_show_fits_120_columns():
    from anomaly_backbones.report.runs import Run

    methods = ("padim", "spade", "patchcore", "cflow", "ocsvm")
    runs = [Run(label=name, rev="x", kind="experiment", baseline=None, timestamp=None, params={},
                metrics=metrics(bb, "imagenet:x", layers, 0.96, methods), role=role)
            for name, bb, layers, role in (
                ("HEAD", "tf_efficientnet_lite0", "blocks.1,blocks.2,blocks.4", "baseline"),
                ("a-very-long-experiment-name", "wide_resnet50_2", "layer1,layer2,layer3", ""),
                ("b", "convnext_tiny_with_a_long_name", "stages.0,features.3", ""))]
    lines = show_lines(runs, 120)
    assert max(map(len, lines)) <= 120
    text = "\n".join(lines)
    assert "HEAD*" in text and "blocks.1/2/4" in text and ".960" in text and NOT_APPLICABLE in text
    assert all(m in text for m in methods)            # five methods: a second block of the same rows
    assert sum(line.startswith("HEAD*") for line in lines) == 2
    assert compact_layers(["layer1", "layer2", "layer3"]) == "layer1/2/3"
    assert compact_layers(["stages.0", "features.3"]) == "stages.0,features.3"


def test_index_html_is_one_offline_file(repo, monkeypatch):
    root, _, _ = repo
    g_entries = [entry("feature", repo[1], "commit", params(), metrics(methods=("padim", "ocsvm")),
                       speed(8.0, methods=("padim", "ocsvm")))]
    monkeypatch.setattr("anomaly_backbones.report.build.gather",
                        lambda *a, **k: gather(root, base="feature", entries=g_entries, status_json={}))
    out = build_report(root, "reports", n_overlays=0)
    page = (out / "index.html").read_text()
    assert remote_references(page) == []
    # the Pareto plot inline as SVG (its points' <title> tooltips work only inline), its PNG for README.md
    assert '<svg role="img" aria-label="Pareto front on synthetic, CPU timings"' in page and "<img" not in page
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert svg.count("<title>") == 2 and "<title>tf_efficientnet_lite0 · " in svg and " · ocsvm\nimage ROC-AUC" in svg
    assert (out / "pareto_synthetic.svg").exists()
    # the family tables are inline in the page (not links to Markdown files), sortable by an inline script
    tables = page.split("<h2>Tables per backbone family</h2>")[1].split("<h2>")[0]
    assert "<h3>efficientnet_lite</h3>" in tables and "<table>" in tables and "tf_efficientnet_lite0" in tables
    assert 'href="tables/efficientnet_lite.csv"' in tables and ".md" not in tables
    assert page.count("<script>") == 1 and "th.addEventListener(\"click\"" in page
    assert page.index("<h2>Recommendation</h2>") < page.index("<h2>Tables per backbone family</h2>")
    assert "HEAD (baseline)" in page
    assert (out / "README.md").exists() and (out / "pareto_synthetic.png").exists()


def test_offline_plots_page():
    page = (ROOT / ".dvc" / "plots" / "offline.html").read_text()
    assert "{plot_divs}" in page and "{scripts}" not in page       # DVC adds no CDN <script> tag
    assert "window.vegaEmbed=" in page and "editor: false" in page
    assert remote_references(page) == []
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"html_template = plots/offline.html", config)
    # the check itself finds what DVC's default page would load
    assert remote_references('<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>')
    assert remote_references('<style>@import url("//fonts.example/x.css");</style>')
    assert remote_references('{"data": {"url": "https://example.org/d.json"}}')


@pytest.mark.parametrize("args", [["--help"], ["report", "--help"], ["show", "--help"]])
def test_closed_pipe_is_quiet(args):
    for reader in ("head -1", "true"):
        r = subprocess.run(" ".join(ENV_PY + args) + f" | {reader}", shell=True, capture_output=True, text=True,
                           cwd=ROOT)
        assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr, r.stderr


def test_the_roc_csvs_the_aggregate_writes_hold_every_field_the_plot_reads(tmp_path, monkeypatch):
    """The aggregate stage's body on a one-category run: each metrics/roc CSV has the columns
    dvc.yaml's plot (x, y) and the template .dvc/plots/roc.json (every `datum.<field>` but DVC's
    own `rev`) read, and the curve's points."""
    import csv

    import yaml

    from anomaly_backbones.files import write_json
    from anomaly_backbones.pipeline.aggregate import aggregate

    monkeypatch.chdir(tmp_path)
    write_json("data/features/stats.json", {"backbone": "resnet18", "init": "random:seed=1024", "layers": ["layer1"],
                                            "dtype": "float32", "categories": {"disc": {"cache_mb": 1.0}},
                                            "peak_mb": 100.0})
    cat = {"image_auroc": 0.75, "roc": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0]}, "fit_s": 1.0,
           "predict_ms_per_image": 2.0, "backbone_ms_per_image": 3.0}
    write_json("outputs/padim/results.json", {"method": "padim", "categories": {"disc": cat}, "peak_mb": 200.0})
    aggregate({"methods": ["padim"], "train_methods": [], "seed": 1024, "data": {"dataset": "synthetic"}})
    plot = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"][0]["metrics/roc"]
    spec = (ROOT / ".dvc" / "plots" / "roc.json").read_text()
    fields = set(re.findall(r"datum\.(\w+)", spec)) - {"rev"}
    with open(tmp_path / "metrics" / "roc" / "padim_disc.csv") as f:
        rows = list(csv.DictReader(f))
    assert {plot["x"], plot["y"]} | fields <= set(rows[0]), (fields, rows[0])
    assert [(r["fpr"], r["tpr"], r["method"], r["category"], r["backbone"]) for r in rows] == [
        ("0.0", "0.0", "padim", "disc", "resnet18"), ("0.5", "1.0", "padim", "disc", "resnet18"),
        ("1.0", "1.0", "padim", "disc", "resnet18")]


def test_overlays_note_image_level_methods_and_missing_outputs(tmp_path):
    """#29: an image-level method's outputs have no `maps` (DN2); the overlays make the pixel
    methods' figures and a note for the others, never a KeyError."""
    import json

    import numpy as np

    from anomaly_backbones.report.overlays import overlays

    cdir = tmp_path / "data" / "prepared" / "chip"
    cdir.mkdir(parents=True)
    (cdir.parent / "categories.json").write_text(json.dumps([{"category": "chip"}, {"category": "disc"}]))
    np.save(cdir / "test_images.npy", np.zeros((3, 16, 16, 3), np.uint8))
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[1, 4:8, 4:8] = 1
    np.save(cdir / "test_masks.npy", masks)
    (cdir / "samples.csv").write_text("split,label,defect\ntest,0,good\ntest,1,crack\ntest,0,good\n")
    for m, arrays in (("padim", {"maps": np.random.default_rng(0).random((3, 16, 16)).astype(np.float16)}),
                      ("dn2", {})):
        (tmp_path / "outputs" / m).mkdir(parents=True)
        (tmp_path / "outputs" / m / "results.json").write_text("{}")
        np.savez(tmp_path / "outputs" / m / "chip.npz", scores=np.arange(3, dtype=np.float32), **arrays)
    made, notes = overlays(tmp_path, tmp_path / "report", 2)
    assert [(x["method"], x["category"]) for x in made] == [("padim", "chip")] and made[0]["path"].exists()
    assert "dn2/chip: image-level method (no anomaly map), no overlay" in notes
    assert "dn2/disc: no outputs" in notes and "padim/disc: no outputs" in notes
