"""What the methods' peak-memory estimates share (each method's own estimates are methods of its
class, in its file: `fit_bytes` / `predict_bytes`, checked by `Method.guard`).

Each estimate adds up the arrays its step holds at its peak (BASELINE_BYTES for the process
itself). bench/memory.py prints every estimate against the peak it predicts; tests/test_memory.py
checks each grows with the params it names. Shapes are {layer: (C, H, W)} of the feature cache;
`itemsize` is the cache's dtype size.
"""
from __future__ import annotations

Shapes = dict[str, tuple[int, int, int]]

LIBSVM_CACHE_MB = 200.0  # libsvm's kernel cache (scikit-learn's default cache_size), OC-SVM and SVDD


def pooled_bytes(n: int, dim: int) -> float:
    """n pooled vectors of dim channels as the one-class methods hold them: the float32 reads,
    their float64 concatenation and a standardized copy."""
    return 20.0 * n * dim
