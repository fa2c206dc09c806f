"""The machine's resources: CPUs this process may use, memory available, peak RSS, and the
memory guard every heavy step calls before it allocates."""
from __future__ import annotations

import functools
import os
import resource
from pathlib import Path


# RSS of a stage process besides its arrays, included in every estimate: python, numpy, torch
# and this package imported, what running torch's kernels adds (code pages, thread pools), and
# freed blocks glibc keeps rather than returns (its mmap threshold rises to 32 MiB after the
# first large free). The measurement behind the figure: docs/performance.md ("Baseline RSS").
BASELINE_BYTES = 0.7 * 2**30


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def load_1m() -> float | None:
    """The 1-minute load average (other work competing for the CPUs), None where unknown."""
    try:
        return float(os.getloadavg()[0])
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first CPU's fields of /proc/cpuinfo ({} where unreadable): they do not change while a
    process runs, so it is read once."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('' where unknown): timings and the last digits of
    some kernels' results depend on it."""
    return _cpuinfo().get("model name", "")


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (x86 AVX512-BF16 or AMX-BF16, ARM BF16),
    from /proc/cpuinfo's flags (False where unknown). Without it torch's bfloat16 GEMM is
    emulated, many times slower than float32 (docs/performance.md, "PatchCore")."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: across fork+exec that inherits the
    parent's peak (a stage started by a 9 GB parent would report 9 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
