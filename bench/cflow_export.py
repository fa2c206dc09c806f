"""Do CFLOW-AD's flows export? (why `export` has no CFLOW model: line/scorers.py NOT_EXPORTED)

One methods.cflow.ConditionalFlow with the default params (coupling_blocks, condition_vector,
clamp_alpha) on C channels, its weights moved off their near-identity initialization (seed 1024)
so that every coupling does work, exported with torch's dynamo ONNX exporter as deploy.export_onnx
does; prints the largest difference of log p / C on random fibers between eager PyTorch and ONNX
Runtime (and OpenVINO's CPU plugin in float32, where installed). A figure, not a pass/fail.

    python bench/cflow_export.py [--channels 112] [--fibers 3136]
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anomaly_backbones.backbones.ort_extractor import ort_session
from anomaly_backbones.methods.cflow import CFlow, ConditionalFlow


class LogProb(nn.Module):
    def __init__(self, flow: ConditionalFlow):
        super().__init__()
        self.flow = flow

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob_per_dim(x, c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", type=int, default=112, help="fiber channels (lite0's blocks.4: 112)")
    ap.add_argument("--fibers", type=int, default=3136, help="fibers per call (a 56 x 56 map: 3136)")
    a = ap.parse_args()
    p = {k: v.default for k, v in CFlow.PARAMS.items()}
    g = torch.Generator().manual_seed(1024)
    flow = ConditionalFlow(a.channels, p["condition_vector"], p["coupling_blocks"], p["clamp_alpha"], g).eval()
    with torch.no_grad():
        for w in flow.parameters():
            w.add_(0.05 * torch.randn(w.shape, generator=g))
    model = LogProb(flow).eval()
    x = torch.randn(a.fibers, a.channels, generator=g)
    c = torch.randn(a.fibers, p["condition_vector"], generator=g)
    with torch.inference_mode():
        want = model(x, c).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flow.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x, c), str(path), input_names=["x", "c"], output_names=["logp"], dynamo=True,
                              external_data=True, verbose=False)
        rows = [("ONNX Runtime", ort_session(path, 1).run(None, {"x": x.numpy(), "c": c.numpy()})[0])]
        try:
            import openvino as ov
        except ImportError:
            ov = None
        if ov is not None:
            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            rows.append(("OpenVINO (f32)", compiled({"x": x.numpy(), "c": c.numpy()})[compiled.output(0)]))
    print(f"CFLOW flow: {p['coupling_blocks']} coupling blocks, {a.channels} channels, condition "
          f"{p['condition_vector']}, {a.fibers} fibers; |log p / C| up to {np.abs(want).max():.4g}\n")
    print("| runtime | max abs diff of log p / C vs eager |\n|---|---|")
    for name, got in rows:
        print(f"| {name} | {np.abs(got - want).max():.2e} |")


if __name__ == "__main__":
    main()
