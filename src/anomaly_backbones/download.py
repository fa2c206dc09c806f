"""`python -m anomaly_backbones download <name> <dir>`: a dataset from its official address.

The archive is streamed into a temporary folder beside <dir> while its SHA-256 is computed; the
bytes received must number the server's Content-Length and hash to the pinned SHA-256 (the
dataset authors publish none; anomalib's are used), and the free disk must hold the archive
twice (archive + unpacked). It is unpacked there (tar: Python's `data` filter; zip: members
outside the folder refused), the dataset root found by a path it must contain, read by the
dataset's own loader (every category, every mask paired), and only then moved to <dir>. Any
failure ends with one line and leaves nothing behind. MPDD has no direct download (a OneDrive
folder): the command says where to get it, and checks a copy unpacked by hand.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import lzma
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm import tqdm

from .data.datasets import DATASETS, Archive, Dataset, get_dataset, load_dataset
from .data.layout import is_clutter, shown
from .errors import UserError

CHUNK = 1 << 22


def parser_download() -> argparse.ArgumentParser:
    """The command's argparse parser (its --help, and the usage `python -m anomaly_backbones` prints)."""
    names = ", ".join(n for n, d in DATASETS.items() if d.downloadable)
    ap = argparse.ArgumentParser(prog="python -m anomaly_backbones download",
                                 description=f"Download a dataset into DIR ({names}); needs internet.")
    ap.add_argument("name", help=names)
    ap.add_argument("dir")
    return ap


def main_download(argv: list[str]) -> None:
    a = parser_download().parse_args(argv)
    download(a.name, a.dir)


def download(name: str, dest: str | Path, timeout: float = 30.0, archive: Archive | None = None) -> Path:
    """Download dataset `name` into `dest` (new or empty; one that already holds it is checked and
    kept). `archive` replaces the official source (a mirror, with its own SHA-256)."""
    spec = get_dataset(name)
    if not spec.downloadable:
        raise UserError(f"`{name}` has no download: the command knows "
                        f"{', '.join(n for n, d in DATASETS.items() if d.downloadable)}.")
    dest = Path(dest)
    if _holds(spec, dest):
        print(f"{dest} holds {spec.title} (every category read): nothing to download. Run the study with "
              f"-S data.dataset={spec.name} -S data.root={dest}")
        return dest
    archive = archive or spec.archive
    if archive is None and spec.by_hand:
        raise UserError(f"{spec.title} has no direct download: {spec.by_hand.format(home=spec.home, dest=dest)} "
                        f"Then run this command again to check the copy.")
    if archive is None:
        raise UserError(f"{spec.title} has no direct download: its authors share it as a OneDrive folder, which "
                        f"needs a browser: {spec.home} . Download it there, unpack it so that "
                        f"{dest}/<category>/train/good exists, and run this command again to check the copy.")
    _fetch(spec, archive, dest, timeout)
    print(f"{spec.title} is in {dest}: run the study with -S data.dataset={spec.name} -S data.root={dest}")
    return dest


def _holds(spec: Dataset, dest: Path) -> bool:
    """Whether `dest` already holds the dataset (its loader reads every category); a folder that
    is neither empty nor a complete copy is refused."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return False
    try:
        load_dataset(spec.name, dest, "all")
    except UserError as e:
        raise UserError(f"{shown(dest)} is not empty and not a complete {spec.title} copy ({e}) Choose a new "
                        f"folder, or remove this one.") from None
    return True


def _fetch(spec: Dataset, archive: Archive, dest: Path, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.download-") as tmp:
        path = Path(tmp) / archive.url.rsplit("/", 1)[-1]
        digest, size = _get(spec, archive.url, path, timeout)
        if digest != archive.sha256:
            raise UserError(f"the {size:,} bytes downloaded from {archive.url} have SHA-256 {digest}, not the "
                            f"published {archive.sha256}: the file was damaged in transfer or changed. Run the "
                            f"command again; if it persists, download {spec.title} from {spec.home} by hand.")
        root = _unpack(spec, path, Path(tmp) / "unpacked", archive.marker)
        path.unlink()
        try:
            load_dataset(spec.name, root, "all")
        except UserError as e:
            raise UserError(f"the {spec.title} archive {path.name} unpacked into an incomplete copy ({e}) Run the "
                            f"command again; if it persists, download {spec.title} from {spec.home} by hand.") from None
        if dest.exists():
            dest.rmdir()   # empty (checked by _holds)
        shutil.move(str(root), str(dest))


def _get(spec: Dataset, url: str, path: Path, timeout: float) -> tuple[str, int]:
    """Stream `url` into `path` -> (sha256 hex, bytes). Refused: no connection, HTTP errors, too
    little disk, fewer bytes than the Content-Length."""
    by_hand = (f"This needs internet; or download {url} by hand (see {spec.home}), unpack it, and run with "
               f"-S data.dataset={spec.name} -S data.root=<the unpacked folder>.")
    h, n, expected = hashlib.sha256(), 0, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            length = r.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            if expected is not None:
                _check_disk(path.parent, 2 * expected, spec)
            with open(path, "wb") as f, tqdm(total=expected, unit="B", unit_scale=True, desc=spec.name) as bar:
                while chunk := r.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise UserError(f"could not download {spec.title} from {url}: HTTP {e.code} {e.reason}. {by_hand}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {spec.title} from {url} ({reason}). {by_hand}") from None
    if expected is not None and n != expected:
        raise UserError(f"the download of {spec.title} from {url} stopped at {n:,} of {expected:,} bytes: run the "
                        f"command again.")
    return h.hexdigest(), n


def _check_disk(folder: Path, need: int, spec: Dataset) -> None:
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"{spec.title} needs about {need / 2**30:.1f} GiB free in {shown(folder)} (archive and "
                        f"unpacked copy), {free / 2**30:.1f} GiB is free: free disk or choose another folder.")


def _unpack(spec: Dataset, path: Path, into: Path, marker: str) -> Path:
    """Unpack -> the dataset root inside `into` (the shallowest folder holding `marker`)."""
    damaged = (f"the {spec.title} archive {path.name} is damaged", "run the command again to download it anew.")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                outside = [m for m in z.namelist() if m.startswith(("/", "\\")) or ".." in Path(m).parts]
                if outside:
                    raise UserError(f"{damaged[0]}: member {outside[0]!r} would land outside the folder; "
                                    f"not unpacked.")
                z.extractall(into)
        else:
            with tarfile.open(path) as t:
                t.extractall(into, filter="data")
    except UserError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, EOFError, OSError, ValueError) as e:
        raise UserError(f"{damaged[0]} ({e.__class__.__name__}: {e}): {damaged[1]}") from None
    found = sorted((p for p in into.rglob(marker) if not any(is_clutter(part) for part in p.relative_to(into).parts)),
                   key=lambda p: len(p.parts))
    if not found:
        raise UserError(f"the {spec.title} archive {path.name} holds no {marker}: it is not the dataset this "
                        f"command expects; download {spec.title} from {spec.home} by hand.")
    root = found[0]
    for _ in Path(marker).parts:
        root = root.parent
    return root
