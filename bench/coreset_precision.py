"""PatchCore's coreset update in bfloat16 against float32 on this machine: the GEMM rate of each
and the greedy coreset's centres per second, side by side in one run (methods/patchcore.py's
coreset_precision picks bfloat16 for `coreset: fast` only where the CPU has native bfloat16).

    python bench/coreset_precision.py [--n 200000] [--dim 128] [--centers 3000]

Seeded Gaussian points (the coreset's cost depends on n, dim and the rounds, not the data's
meaning); prints one Markdown table and whether /proc/cpuinfo lists AVX512-BF16/AMX/ARM BF16.
"""
from __future__ import annotations

import argparse
import time

import torch

from anomaly_backbones.methods.coreset import greedy_batched
from anomaly_backbones.resources import cpu_model, native_bf16_cpu


def gemm_rate(x: torch.Tensor, y: torch.Tensor, repeats: int = 3) -> float:
    """GFLOP/s of x @ y (one warm-up call first)."""
    x @ y
    t = time.perf_counter()
    for _ in range(repeats):
        x @ y
    return 2.0 * x.shape[0] * x.shape[1] * y.shape[1] * repeats / (time.perf_counter() - t) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--centers", type=int, default=3000)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(1024)
    x = torch.randn(a.n, a.dim, generator=g)
    y = torch.randn(a.dim, 600, generator=g)
    print(f"{cpu_model() or 'cpu'}, {torch.get_num_threads()} threads, torch {torch.__version__}; native bfloat16: "
          f"{native_bf16_cpu()}; {a.n} x {a.dim} points, {a.centers} centres")
    print("| precision | GEMM GFLOP/s (n x dim @ dim x 600) | coreset s | centres/s | rounds |")
    print("|---|---|---|---|---|")
    for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rate = gemm_rate(x.to(dtype), y.to(dtype))
        rounds: list[int] = []   # progress is called once a round, with the centres it added
        t = time.perf_counter()
        greedy_batched(x, a.centers, 0, precision=precision, progress=rounds.append)
        s = time.perf_counter() - t
        print(f"| {precision} | {rate:.1f} | {s:.1f} | {a.centers / s:.0f} | {len(rounds)} |")


if __name__ == "__main__":
    main()
