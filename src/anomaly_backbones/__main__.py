"""`python -m anomaly_backbones <command>`: backbones | show | report | sweep | pr-comment | download.

Output into a pipe that closes early (`... | head -1`) ends the command quietly (exit 1, no traceback).
"""
from __future__ import annotations

import os
import sys

from .runner import run

USAGE = """usage: python -m anomaly_backbones <command> [options]

commands:
  backbones [--family F] [--json]   list the backbone registry (layers, dim, d, params, offline weights)
  show [-A] [--width N]             the runs compared (HEAD, experiments, workspace): ROC-AUC and AUPRO per method
  report [--out reports]            gather finished runs into tables, plots and one reports/index.html
  sweep (--family F | --backbones a,b | --all) [--init random] [-S k=v] [-j N] [--dry-run]
                                    queue one DVC experiment per backbone and run the queue
                                    (--engine ray|slurm: on a Ray cluster or Slurm, docs/reporting.md)
  pr-comment [--base main]          PR comment from dvc metrics diff / dvc params diff
  download NAME DIR                 download a dataset (mvtec, visa, btad; mpdd: says how) into DIR (needs internet)
"""


def _command(cmd: str, rest: list[str]):
    if cmd == "backbones":
        from .backbones.cli import main_backbones as main
    elif cmd == "show":
        from .report.show import main_show as main
    elif cmd == "report":
        from .report import main_report as main
    elif cmd == "sweep":
        from .sweep import main_sweep as main
    elif cmd == "pr-comment":
        from .pr_comment import main_pr_comment as main
    elif cmd == "download":
        from .download import main_download as main
    else:
        return None
    return lambda: main(rest)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
        else:
            command = _command(argv[0], argv[1:])
            if command is None:
                print(f"unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
                sys.exit(2)
            run(command)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away: send what is left in the buffer nowhere, so that the interpreter's own
        # flush at exit does not fail a second time (Python docs, "Note on SIGPIPE")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
