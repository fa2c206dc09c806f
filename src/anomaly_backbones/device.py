"""The compute device: the top-level `device` param resolved, named, made deterministic, and its
free memory read for the memory guards.

    dev = resolve_device("auto")      # torch.device: cuda:0 when torch sees a GPU, else cpu
    use_device(dev)                   # once per process, before the first CUDA op (determinism)
    device_name(dev)                  # "NVIDIA H200" / the CPU's model name
    free_bytes(dev)                   # the GPU's free memory; None on the CPU (the RSS guard applies)
    check_memory(estimate, what, fix, dev)  # stop before a step that would not fit (RSS or GPU memory)
    synchronize(dev); peak_bytes(dev) # timing and peak memory of GPU work
    model_device(model)               # where a model's parameters are
    autocast(dev, "bfloat16")         # reduced-precision forward pass; "float32" is a no-op

One code path: methods and the extractor take a device and move their inputs with `to_device`;
on the CPU every move is a no-op (`Tensor.to` returns the tensor itself), so CPU results are the
same bits as code that never heard of devices. GPU kernels are not bitwise the CPU's; TF32 is
off so that float32 on a GPU means float32 (tests/test_device.py checks CPU vs GPU agreement
where a GPU exists).
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import resources
from .errors import UserError
from .params.groups import DEVICES, check_device

PRECISIONS = ("float32", "bfloat16", "float16")


def resolve_device(spec: str = "auto") -> torch.device:
    """`device` param -> torch.device. auto: the first GPU when torch sees one, else the CPU;
    cuda / cuda:N without that GPU: UserError naming the param and the fix."""
    spec = str(spec)
    if check_device(spec):
        raise UserError(f"`device` = {spec!r} is not a device: use {DEVICES}.")
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    dev = torch.device(spec if ":" in spec else "cuda:0")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise UserError(f"`device` = {spec!r} but torch sees no GPU here (torch.cuda.is_available() is False, "
                        f"torch {torch.__version__}); set `device: auto` or `cpu` in params.yaml.")
    if dev.index >= n:
        raise UserError(f"`device` = {spec!r} but torch sees {n} GPU(s) (cuda:0..cuda:{n - 1}); fix `device`.")
    return dev


def use_device(dev: torch.device) -> None:
    """Settings for reproducible results on `dev`, called before its first kernel: cuDNN picks
    deterministic algorithms (no autotuning), TF32 is off (float32 matmuls and convolutions stay
    float32), cuBLAS gets the fixed workspace its deterministic mode needs."""
    if dev.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.cuda.set_device(dev)


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model name: what timed a row."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return resources.cpu_model() or "cpu"


def free_bytes(dev: torch.device) -> int | None:
    """Free memory on a GPU (what cudaMemGetInfo reports, plus what torch's caching allocator
    holds but does not use); None for the CPU, whose guard reads MemAvailable."""
    if dev.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(dev)
    return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))


def synchronize(dev: torch.device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously): call before reading a clock."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_bytes(dev: torch.device) -> int | None:
    """Peak GPU memory allocated by torch since the last reset_peak; None on the CPU."""
    return int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None


def autocast(dev: torch.device, precision: str = "float32"):
    """Context for a forward pass in `precision` (float32: nothing changes; bfloat16/float16:
    torch.autocast on the device; float16 is GPU-only)."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision not in PRECISIONS:
        raise UserError(f"`extract.precision` = {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if precision == "float16" and dev.type != "cuda":
        raise UserError("`extract.precision` = float16 needs a GPU (CPU autocast supports bfloat16); "
                        "use bfloat16 or float32.")
    return torch.autocast(dev.type, dtype=getattr(torch, precision))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters are (the CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def to_device(x, dev: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A numpy array or tensor on `dev` (optionally cast). On the CPU with the same dtype it is
    the same memory (no copy); to a GPU a CPU tensor is copied from pinned memory without
    blocking the host, so the copy overlaps the work queued before it."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if dev.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev, dtype=dtype) if dtype is not None else t.to(dev)


def check_memory(estimate: float, what: str, fix: str, device=None) -> None:
    """Stop before a heavy step whose estimated peak (bytes) exceeds the memory available now,
    with one line giving the estimate and `fix` (the param that lowers it). On the CPU (device
    None or cpu) the estimate is peak RSS, baseline included, against MemAvailable; what the
    process holds already is also outside MemAvailable, so the check errs on the safe side by
    about that much. On a GPU it is the step's device memory against the GPU's free memory
    (free_bytes)."""
    if device is not None and getattr(device, "type", "cpu") != "cpu":
        avail, where = free_bytes(device), f"free on {device}"
    else:
        avail, where = resources.available_bytes(), "available"
    if avail is not None and estimate > avail:
        raise UserError(f"{what} needs about {estimate / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is {where}; "
                        f"{fix}")
