"""Stage entry and exit: a UserError ends a stage with one line (exit 2), never a traceback, and
so does a full disk (ENOSPC: the machine, not the code); a finished stage process ends without the
interpreter's teardown. Files: files.py; memory: resources.py."""
from __future__ import annotations

import atexit
import errno
import os
import sys
import threading
from typing import Callable

from .errors import UserError


def run(main: Callable[[], None]) -> None:
    """Run a stage; a UserError prints one clear line and exits 2 (DVC then records nothing)."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"error: no space left on the disk{where}: the stage stopped and DVC records none of its "
              f"outputs; free space (`dvc gc -w` drops cached outputs of other runs) and re-run the command.",
              file=sys.stderr)
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

    Why: finalizing torch, timm, torchvision and ONNX Runtime module by module takes a good part
    of a second per stage process (docs/performance.md, "Stage exit"), and a finished stage has
    nothing left to do: its outputs are closed and renamed into place. The exit handlers still
    run and stdio is flushed; while another non-daemon thread is alive the normal exit (which
    waits for it) is kept."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
