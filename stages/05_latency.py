"""Stage 5, latency: what one image costs in deployment, per backbone (metrics/latency.json).

Fits PaDiM on the first category's cached training features (the fit stage keeps no model: its
inverse covariances are hundreds of MB per category), builds the deployable scorer (raw uint8
image -> anomaly map and score, anomaly_backbones.deploy), exports it to ONNX and times batch 1 on
that category's prepared test images: eager PyTorch and ONNX Runtime, one thread and all threads
this process may use. Median and p90 over `latency.runs` calls after `latency.warmup` calls.

A backbone that cannot be traced or exported does not fail the experiment (a sweep keeps its
ROC-AUC): the error goes into latency.json as `error` and is printed. The same for a PaDiM model
(every position's inverse covariance, `padim_model_mb`) that does not fit in memory: the fit
stage scores without holding it, the deployable model cannot. `latency.runs=0` skips
the measurement before torch is imported (a benchmark's cold run pays seconds, not the stage).

Always on the CPU, whatever `device` says: this is the deployment cost of one image on the CPU
(latency.json records "device": "cpu", so the report never puts it beside a GPU's throughput).
"""
import os
import tempfile
from pathlib import Path

from anomaly_backbones.device import check_memory
from anomaly_backbones.errors import UserError
from anomaly_backbones.files import read_json, write_json
from anomaly_backbones.pipeline.config import load_params, resolve
from anomaly_backbones.resources import usable_cpus
from anomaly_backbones.runner import run

PREPARED, FEATURES, OUT = Path("data/prepared"), Path("data/features"), Path("metrics/latency.json")


def main():
    p = load_params()
    runs, warmup = p["latency"]["runs"], p["latency"]["warmup"]
    cat = read_json(PREPARED / "categories.json")[0]["category"]
    if runs == 0:
        write_json(OUT, {"backbone": p["backbone"], "init": p["init"], "category": cat, "device": "cpu",
                         "skipped": "latency.runs is 0"})
        return
    from anomaly_backbones.backbones import load_backbone
    from anomaly_backbones.features import FeatureSet

    train = FeatureSet(FEATURES / cat, "train")
    bb = load_backbone(p["backbone"], p["init"], p["seed"])
    head = {"backbone": bb.name, "init": bb.init, "category": cat, "image_size": train.image_size, "device": "cpu"}
    try:
        measure(p, bb, train, cat, head, runs, warmup)
    except UserError as e:   # untraceable / unexportable backbone: recorded, not fatal
        print(f"warning: no deployment latency for {bb.name}: {e}")
        write_json(OUT, {**head, "error": str(e)})


def measure(p, bb, train, cat, head, runs, warmup):
    import numpy as np
    import torch

    from anomaly_backbones.data.prepare import load_prepared
    from anomaly_backbones.deploy import PadimScorer, check_onnx, eager_ms, export_onnx, onnx_files, onnx_ms
    from anomaly_backbones.methods.padim import PaDiM

    r = resolve(p, shapes=train.meta["shapes"])
    padim = PaDiM(r["padim"], r["layers"], p["seed"])
    padim.fit(train)
    head["padim_model_mb"] = round(padim.model_bytes() / 2**20, 1)   # every inverse: the deployable model's size
    scorer = PadimScorer(bb, padim, train.image_size)   # builds the model (its memory guard: a UserError, noted)
    images = load_prepared(PREPARED / cat, "test_images", mmap=False)
    inputs = [torch.from_numpy(np.ascontiguousarray(images[i:i + 1])).permute(0, 3, 1, 2).contiguous()
              for i in range(len(images))]
    threads_all = usable_cpus()
    load_1m = os.getloadavg()[0]   # other work on the CPUs: "all threads" suffers most from it
    res = {"eager_1t": eager_ms(scorer, inputs, 1, runs, warmup),
           "eager_all": eager_ms(scorer, inputs, threads_all, runs, warmup)}
    # the exporter and the ONNX Runtime session each hold another copy of the inverse covariances
    check_memory(3.0 * padim.inv_cov.numel() * 4, f"exporting PaDiM on {bb.name} to ONNX",
                 "lower `padim.d` (the inverse covariances grow with d^2).")
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(scorer, Path(tmp) / "padim.onnx", bb.name)
        onnx_mb = sum(f.stat().st_size for f in onnx_files(path)) / 2**20
        check_onnx(scorer, path, inputs[0], bb.name)
        arrays = [x.numpy() for x in inputs]
        res["onnx_1t"] = onnx_ms(path, arrays, 1, runs, warmup)
        res["onnx_all"] = onnx_ms(path, arrays, threads_all, runs, warmup)
    padim_m = {}
    for k, v in res.items():
        padim_m[f"{k}_ms"] = round(v["median"], 2)
        padim_m[f"{k}_p90_ms"] = round(v["p90"], 2)
    head_mb = (padim.mean.numel() + padim.inv_cov.numel()) * 4 / 2**20   # PaDiM's own buffers in the export
    padim_m.update(onnx_mb=round(onnx_mb, 1), onnx_trunk_mb=round(max(0.0, onnx_mb - head_mb), 1),
                   threads_all=threads_all)
    write_json(OUT, {**head, "load_1m": round(load_1m, 2), "padim": padim_m})
    print(f"latency {bb.name} on {cat} (batch 1, ms median): " +
          ", ".join(f"{k} {v['median']:.1f}" for k, v in res.items()) + f"; ONNX {onnx_mb:.1f} MB")


if __name__ == "__main__":
    run(main)
