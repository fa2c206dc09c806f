"""`python -m anomaly_backbones.cluster.guard CMD...`: run CMD in its own session and take the whole
session down with it when the process that started the guard dies.

A cluster worker (a Ray task, a Slurm job step) runs `dvc exp run`, which starts the stage
processes. When the node's raylet is killed the Ray worker exits at once, but its children would
live on as orphans, still computing (and still holding the clone). The worker starts this guard with
the parent-death signal set (Linux prctl PR_SET_PDEATHSIG, see `pdeathsig`); on that signal, or on
SIGTERM/SIGINT, the guard kills CMD's whole process group. Exit status: CMD's.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def pdeathsig(sig: int = signal.SIGTERM) -> None:
    """A preexec_fn: the child gets `sig` when the thread that started it exits (Linux; a no-op elsewhere)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the guard still kills the group on SIGTERM
        pass


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m anomaly_backbones.cluster.guard CMD [ARGS...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, start_new_session=True)

    def stop(signum, frame):  # noqa: ARG001
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    if os.getppid() == 1:  # the parent died before the signal was armed
        stop(signal.SIGTERM, None)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
