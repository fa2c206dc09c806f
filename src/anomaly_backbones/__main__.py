"""`python -m anomaly_backbones <command>`: backbones | show | report | sweep | pr-comment | download.

Output into a pipe that closes early (`... | head -1`) ends the command quietly (exit 1, no traceback).
"""
from __future__ import annotations

import importlib
import os
import sys

from .runner import run

# command -> (module, the suffix of its parser_<x> and main_<x>)
COMMANDS = {
    "backbones": ("backbones.cli", "backbones"),
    "show": ("report.show", "show"),
    "report": ("report.build", "report"),
    "sweep": ("sweep", "sweep"),
    "pr-comment": ("pr_comment", "pr_comment"),
    "download": ("download", "download"),
}


def _function(cmd: str, kind: str):
    module, name = COMMANDS[cmd]
    return getattr(importlib.import_module(f"{__package__}.{module}"), f"{kind}_{name}")


def usage() -> str:
    """The commands' usage, generated from their argparse parsers (never out of step with them)."""
    lines = ["usage: python -m anomaly_backbones <command> [options]", "", "commands:"]
    for cmd in COMMANDS:
        p = _function(cmd, "parser")()
        synopsis = " ".join(p.format_usage().split()[1:]).replace("python -m anomaly_backbones ", "")
        lines += [f"  {synopsis}", f"      {(p.description or '').split('. ')[0].rstrip('.')}"]
    return "\n".join(lines) + "\n"


def _command(cmd: str, rest: list[str]):
    if cmd not in COMMANDS:
        return None
    main = _function(cmd, "main")
    return lambda: main(rest)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(usage())
        else:
            command = _command(argv[0], argv[1:])
            if command is None:
                print(f"unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
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
