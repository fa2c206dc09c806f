"""`python -m anomaly_backbones <command>`: backbones | sweep | report | pr-comment | download."""
from __future__ import annotations

import sys

from .runner import run

USAGE = """usage: python -m anomaly_backbones <command> [options]

commands:
  backbones [--family F] [--json]   list the backbone registry (layers, dim, d, params, offline weights)
  report [--out reports]            gather finished experiments into tables and plots
  sweep (--family F | --backbones a,b | --all) [--init random] [-S k=v] [-j N] [--dry-run]
                                    queue one DVC experiment per backbone and run the queue
  pr-comment [--base main]          PR comment from dvc metrics diff / dvc params diff
  download NAME DIR                 download a dataset (mvtec, visa, btad; mpdd: says how) into DIR (needs internet)
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "backbones":
        from .backbones.cli import main_backbones

        run(lambda: main_backbones(rest))
    elif cmd == "report":
        from .report import main_report

        run(lambda: main_report(rest))
    elif cmd == "sweep":
        from .sweep import main_sweep

        run(lambda: main_sweep(rest))
    elif cmd == "pr-comment":
        from .pr_comment import main_pr_comment

        run(lambda: main_pr_comment(rest))
    elif cmd == "download":
        from .download import main_download

        run(lambda: main_download(rest))
    else:
        print(f"unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
