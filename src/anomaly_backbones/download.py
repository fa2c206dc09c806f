"""Dataset download for users with internet (MVTec AD from its official address)."""
from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .data.datasets import MVTEC_URL
from .errors import UserError


def download_mvtec(dest: str | Path, url: str = MVTEC_URL, timeout: float = 20.0) -> Path:
    """Download and unpack MVTec AD (about 4.9 GB) into dest; a partial download leaves nothing behind."""
    dest = Path(dest)
    if (dest / "bottle" / "train" / "good").is_dir():
        print(f"{dest} already holds MVTec AD")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = Path(tmp) / "mvtec_anomaly_detection.tar.xz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 22)
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise UserError(f"could not download MVTec AD from {url} ({e}). This needs internet; or download "
                            f"it from https://www.mvtec.com/company/research/datasets/mvtec-ad by hand, "
                            f"unpack it to {dest} and run with -S data.root={dest}.") from None
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archive) as t:
            t.extractall(unpacked, filter="data")
        inner = next((p.parent.parent.parent for p in unpacked.rglob("train/good")), unpacked)
        shutil.move(str(inner), str(dest))
    return dest
