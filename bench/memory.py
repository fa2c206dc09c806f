"""Every memory guard's estimate against the peak RSS it predicts, on a realistic case each.

Methods run on a seeded synthetic feature cache with the magnetic-tile split's shapes
(tf_efficientnet_lite0 blocks.1/2/4: 24x56x56, 40x28x28, 112x14x14; 761 train / 583 test
images): memory depends on shapes, not values. Extract runs real networks (random init) on
random images. Each case is a fresh process; the estimate is the largest one its guards
checked (check_memory is wrapped), the peak is the process's VmHWM. Prints a Markdown table.

    python bench/memory.py                        # every case
    python bench/memory.py spade --n-test 48      # some cases, fewer test images
    python bench/memory.py spade patchcore cflow --backbone densenet161 --n-train 391 --n-test 167

`--backbone`: that registry entry's default layers and shapes (a random-init forward pass of one
image) and each method's params as the study resolves them for it (PaDiM: the registry's d), at the
given image counts (391 / 167: MVTec AD's largest category, bench/gpu.py's size); CFLOW-AD keeps
the one short epoch above.
PaDiM's heaviest setting (WideResNet-50-2, d=550) is bench/padim_memory.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

LITE0 = {"blocks.1": (24, 56, 56), "blocks.2": (40, 28, 28), "blocks.4": (112, 14, 14)}
METHODS = {  # case: (method, params)
    "padim": ("padim", {"d": 100}),
    "spade": ("spade", {}),
    "patchcore": ("patchcore", {}),
    "cflow": ("cflow", {"epochs": 1, "fibers_per_epoch": 4096}),  # memory does not depend on either
}
EXTRACT = {  # case: (backbone, layers, batches run, extract.engine)
    "extract-lite0": ("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], 4, "eager"),
    "extract-lite0-onnx": ("tf_efficientnet_lite0", ["blocks.1", "blocks.2", "blocks.4"], 4, "onnx"),
    "extract-wrn50": ("wide_resnet50_2", ["layer1", "layer2", "layer3"], 2, "eager"),
    "extract-wrn50-onnx": ("wide_resnet50_2", ["layer1", "layer2", "layer3"], 2, "onnx"),
}


def recorded_guards(modules) -> list[float]:
    """Wrap check_memory where `modules` call it; returns the list the estimates go to."""
    from anomaly_backbones import device

    seen: list[float] = []

    def check(estimate, what, fix, *args, **kwargs):
        seen.append(estimate)
        device.check_memory(estimate, what, fix, *args, **kwargs)

    for m in modules:
        m.check_memory = check
    return seen


def study_cases(backbone: str) -> tuple[dict, dict]:
    """({layer: (C, h, w)}, {case: (method, params, layers)}) as the study runs `backbone`."""
    from memory_study import study_setup

    _, shapes, r = study_setup(backbone)
    cases = {}
    for case, (name, short) in METHODS.items():
        params = {**r[name], **(short if name == "cflow" else {})}
        layers = params["layers"] if isinstance(params.get("layers"), list) else r["layers"]
        cases[case] = (name, params, layers)
    return shapes, cases


def run_method(case: str, cache: Path) -> dict:
    import importlib

    from anomaly_backbones.features import FeatureSet
    from anomaly_backbones.methods import get_method

    spec = cache / "cases.json"
    name, params, layers = (json.loads(spec.read_text())[case] if spec.exists()
                            else (*METHODS[case], list(LITE0)))
    seen = recorded_guards([importlib.import_module("anomaly_backbones.methods.base")])
    m = get_method(name)(params, layers, 1024)
    t = time.perf_counter()
    m.fit(FeatureSet(cache, "train"))
    t1 = time.perf_counter()
    test = FeatureSet(cache, "test")
    m.predict(test)
    t2 = time.perf_counter()
    return {"estimate": max(seen), "fit_s": t1 - t, "predict_ms": 1000 * (t2 - t1) / len(test)}


def run_extract(case: str, batch_size: int = 32) -> dict:
    import tempfile

    import numpy as np

    from anomaly_backbones.backbones import load_backbone
    from anomaly_backbones.backbones.ort_extractor import make_extractor
    from anomaly_backbones.features import FeatureWriter

    backbone, layers, batches, engine = EXTRACT[case]
    bb = load_backbone(backbone, "random", 1024)
    ext, _ = make_extractor(bb.model, layers, bb.name, engine, 224, (0.5,) * 3, (0.25,) * 3)
    estimate = ext.estimate_bytes(batch_size, 224, 4)
    images = np.random.default_rng(0).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        w = FeatureWriter(tmp, {"layers": layers})
        for i in range(batches):  # as stages/03_extract.py: uint8 images -> engine (normalizes) -> writer
            feats = ext.pixels(images)
            if i == 0:
                w.open("train", batch_size * batches, {k: tuple(v.shape[1:]) for k, v in feats.items()})
            w.write("train", feats)
        w.close()
    return {"estimate": estimate, "fit_s": 0.0, "predict_ms": 1000 * (time.perf_counter() - t) / (batch_size * batches)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", default=[*METHODS, *EXTRACT], help=", ".join([*METHODS, *EXTRACT]))
    ap.add_argument("--n-train", type=int, default=761)
    ap.add_argument("--n-test", type=int, default=583)
    ap.add_argument("--cache", default="/tmp/ab_memory_cache")
    ap.add_argument("--backbone", help="a registry entry: its study shapes and params (method cases only)")
    ap.add_argument("--run", help=argparse.SUPPRESS)  # child: run one case, print JSON
    a = ap.parse_args()
    cache = Path(f"{a.cache}_{a.backbone or 'lite0'}_{a.n_train}_{a.n_test}")
    if a.run:
        from anomaly_backbones.resources import peak_rss_mb

        out = run_extract(a.run) if a.run in EXTRACT else run_method(a.run, cache)
        print(json.dumps({**out, "peak": peak_rss_mb() * 2**20}))
        return
    if any(c in METHODS for c in a.cases) and not (cache / "meta.json").exists():
        from padim_memory import fill

        if a.backbone:
            shapes, cases = study_cases(a.backbone)
            fill(cache, a.n_train, a.n_test, "float32", shapes, a.backbone)
            (cache / "cases.json").write_text(json.dumps(cases))
            print(f"{a.backbone}: layers {shapes}; " + "; ".join(f"{c}: {v[0]} on {v[2]}" for c, v in cases.items()))
        else:
            fill(cache, a.n_train, a.n_test, "float32", LITE0, "tf_efficientnet_lite0")
    print("| case | estimate GiB | peak RSS GiB | estimate / peak | fit s | predict ms/image |")
    print("|---|---|---|---|---|---|", flush=True)
    failed = 0
    for case in a.cases:
        r = subprocess.run([sys.executable, __file__, "--run", case, "--n-train", str(a.n_train),
                            "--n-test", str(a.n_test), "--cache", a.cache,
                            *(["--backbone", a.backbone] if a.backbone else [])], capture_output=True, text=True)
        if r.returncode:
            print(f"| {case} | failed: {(r.stderr.strip().splitlines() or ['?'])[-1]} |||||", flush=True)
            failed += 1
            continue
        o = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {case} | {o['estimate'] / 2**30:.2f} | {o['peak'] / 2**30:.2f} | {o['estimate'] / o['peak']:.2f} "
              f"| {o['fit_s']:.1f} | {o['predict_ms']:.0f} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
