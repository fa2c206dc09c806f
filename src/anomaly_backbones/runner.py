"""What every stage entry point shares: user errors without tracebacks, atomic JSON, peak memory."""
from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import UserError


def run(main: Callable[[], None]) -> None:
    """Run a stage; a UserError prints one clear line and exits 2 (DVC then records nothing)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing partial is trusted; re-run the command (`dvc repro` re-runs an "
              "interrupted stage).", file=sys.stderr)
        sys.exit(130)
    if _started_as(main):
        _exit_without_teardown()


def _started_as(main: Callable[[], None]) -> bool:
    """Whether this process was started as `python <the stage script>` (not under a profiler,
    `python -X ...`, or a test calling the stage in-process, which need the normal exit)."""
    argv = getattr(sys, "orig_argv", [])
    try:
        return len(argv) > 1 and os.path.samefile(argv[1], main.__code__.co_filename)
    except OSError:
        return False


def _exit_without_teardown() -> None:
    """End a finished stage process without the interpreter's teardown.

    Why: finalizing torch, timm, torchvision and ONNX Runtime module by module takes 0.3-0.8 s
    per stage process (`python -c "import torch"` takes 1.39 s with it, 1.06 s without), and a
    finished stage has nothing left to do: its outputs are closed and renamed into place. The
    exit handlers still run (0.02 s) and stdio is flushed; while another non-daemon thread is
    alive the normal exit (which waits for it) is kept."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


@contextmanager
def replacing(path: str | Path, mode: str = "w"):
    """Open a new file that replaces `path` when the block ends (write, then rename).

    A reader never sees half a file, and the old file's inode is never written: DVC links
    outputs to its cache (.dvc/config: cache.type hardlink), so writing into an existing output
    in place would change the cached copy too. Every stage output is written this way or into
    a folder the stage removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    with replacing(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# RSS of a stage process besides its arrays, included in every estimate: python, numpy, torch
# and this package imported (measured 0.50 GiB on one machine, 0.68 GiB on another with Linux
# 6.18, 0.42 GiB of it file-backed library pages), what running torch's kernels
# adds (code pages, thread pools: ~0.04 GiB), and freed blocks glibc keeps rather than returns
# (its mmap threshold rises to 32 MiB after the first large free; measured up to ~0.08 GiB).
BASELINE_BYTES = 0.7 * 2**30


def check_memory(estimate: float, what: str, fix: str) -> None:
    """Stop before a heavy step whose estimated peak exceeds the RAM available now.

    `estimate` is the process's peak RSS, baseline included; what the process holds already
    is also outside MemAvailable, so the check errs on the safe side by about that much."""
    avail = available_bytes()
    if avail is not None and estimate > avail:
        raise UserError(f"{what} needs about {estimate / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is available; "
                        f"{fix}")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
