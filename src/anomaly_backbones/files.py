"""Atomic output files and JSON: what a stage writes is either complete or absent."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path


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
    """`obj` as indented JSON with sorted keys (stable bytes for DVC's metrics), atomically."""
    with replacing(path) as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
