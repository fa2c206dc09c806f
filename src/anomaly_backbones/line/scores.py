"""Per-image test scores of a finished run, read at the run's revision, for paired tests.

run_scores(root, rev, method) -> {category: (labels, scores)}: labels from
data/prepared/<category>/samples.csv (the test rows, 1 = defective), scores from
outputs/<method>/<category>.npz. "workspace" reads the files on disk; a commit or experiment reads
them through `dvc.api` (the local DVC cache or the default remote). Two runs are paired only when
their test rows (file and label, in order) are identical: that is checked by `pair`.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from .. import dvc_client as dvc

PREPARED, OUTPUTS = "data/prepared", "outputs"


def _read_bytes(root: Path, path: str, rev: str) -> bytes | None:
    if rev == "workspace":
        f = root / path
        return f.read_bytes() if f.exists() else None
    try:
        import dvc.api

        with dvc.api.open(path, repo=str(root), rev=rev, mode="rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - in no cache and no remote: the caller says so
        return None


def test_rows(root: Path, rev: str, category: str) -> list[tuple[str, int]] | None:
    """[(file, label)] of the category's test images in the order the scores are stored."""
    text = dvc.read_at(root, f"{PREPARED}/{category}/samples.csv", rev)
    if text is None:
        return None
    return [(r["file"], int(r["label"])) for r in csv.DictReader(io.StringIO(text)) if r["split"] == "test"]


def run_scores(root: str | Path, rev: str, method: str, categories: list[str]
               ) -> dict[str, tuple[list[tuple[str, int]], np.ndarray]] | None:
    """{category: (test rows, float32 scores)}; None where any file is unreadable at rev."""
    root = Path(root)
    out = {}
    for c in categories:
        rows = test_rows(root, rev, c)
        raw = _read_bytes(root, f"{OUTPUTS}/{method}/{c}.npz", rev)
        if rows is None or raw is None:
            return None
        with np.load(io.BytesIO(raw)) as z:
            scores = np.asarray(z["scores"], dtype=np.float32)
        if scores.size != len(rows):
            return None
        out[c] = (rows, scores)
    return out


def run_categories(root: str | Path, rev: str) -> list[str] | None:
    """The categories of a run (data/prepared/categories.json at rev)."""
    import json

    text = dvc.read_at(Path(root), f"{PREPARED}/categories.json", rev)
    return None if text is None else [c["category"] for c in json.loads(text)]
