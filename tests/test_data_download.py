"""`python -m anomaly_backbones download <name> <dir>`: real archives of generated trees served by
a local HTTP server (loopback only) through the same code as the official addresses: checksum,
length, damaged and foreign archives, zip layout, a folder already holding the dataset; and the
one-line message offline."""
from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from anomaly_backbones.data.datasets import DATASETS, Archive, load_dataset
from anomaly_backbones.download import _check_disk, download
from anomaly_backbones.errors import UserError

from conftest import ROOT
from test_data_trees import make_btad, make_mpdd, make_visa, one_line_naming


class Server:
    """Serves files from a folder on 127.0.0.1; `short` names files sent with a Content-Length
    larger than their bytes (a connection cut mid-transfer)."""

    def __init__(self, folder: Path):
        self.folder, self.short, self.requests = folder, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                server.requests.append(self.path)
                f = server.folder / self.path.lstrip("/")
                if not f.is_file():
                    self.send_error(404)
                    return
                data = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data) + 1000 * (f.name in server.short)))
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def archive(self, name: str, marker: str, sha256: str | None = None) -> Archive:
        data = (self.folder / name).read_bytes()
        return Archive(f"http://127.0.0.1:{self.httpd.server_port}/{name}",
                       sha256 or hashlib.sha256(data).hexdigest(), marker)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "served")
    s.folder.mkdir()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _tar(src: Path, dst: Path) -> None:
    with tarfile.open(dst, "w") as t:
        for p in sorted(src.iterdir()):
            t.add(p, arcname=p.name)


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".download-" in p.name]


def test_visa_archive_is_checked_unpacked_validated_and_moved(tmp_path, server):
    _tar(make_visa(tmp_path / "src", n_train=2, n_good=1, n_defect=1), server.folder / "VisA_20220922.tar")
    archive = server.archive("VisA_20220922.tar", DATASETS["visa"].archive.marker)
    dest = tmp_path / "data" / "visa"
    download("visa", dest, archive=archive)
    assert len(load_dataset("visa", dest, "all")) == 12 and _leftovers(dest.parent) == []
    download("visa", dest, archive=archive)                           # already there: checked, not fetched
    assert len(server.requests) == 1


@pytest.mark.parametrize("fault,names", [
    ("checksum", ["SHA-256", "not the published"]),
    ("cut", ["stopped at"]),
    ("damaged", ["is damaged", "unpacked into an incomplete copy"]),
    ("foreign", ["holds no split_csv/1cls.csv"]),
    ("missing", ["HTTP 404"]),
])
def test_a_bad_download_is_one_line_and_leaves_nothing(tmp_path, server, fault, names):
    name = "VisA_20220922.tar"
    src = make_visa(tmp_path / "src", objects=["candle"], n_train=1, n_good=1, n_defect=1)
    if fault == "foreign":
        (src / "split_csv" / "1cls.csv").unlink()
    _tar(src, server.folder / name)
    if fault == "damaged":
        data = bytearray((server.folder / name).read_bytes())
        data[512:1024] = os.urandom(512)                               # a damaged tar header
        (server.folder / name).write_bytes(bytes(data))
    if fault == "cut":
        server.short.add(name)
    archive = server.archive(name, "split_csv/1cls.csv", "0" * 64 if fault == "checksum" else None)
    if fault == "missing":
        archive = Archive(archive.url + ".gone", archive.sha256, archive.marker)
    dest = tmp_path / "data" / "visa"
    with pytest.raises(UserError) as e:
        download("visa", dest, archive=archive)
    one_line_naming(e, *names)
    assert not dest.exists() and _leftovers(dest.parent) == []


def test_btad_zip_with_an_inner_folder_and_macos_clutter(tmp_path, server):
    src = make_btad(tmp_path / "src", n_train=2, n_good=1, n_defect=1)
    with zipfile.ZipFile(server.folder / "btad.zip", "w") as z:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                rel = p.relative_to(src)
                z.write(p, f"BTech_Dataset_transformed/{rel}")
                z.writestr(f"__MACOSX/BTech_Dataset_transformed/{rel.parent}/._{p.name}", b"\0\5\26\7")
    dest = tmp_path / "btad"
    download("btad", dest, archive=server.archive("btad.zip", "01/train/ok"))
    assert [c.name for c in load_dataset("btad", dest, "all")] == ["01", "02", "03"]
    with zipfile.ZipFile(server.folder / "evil.zip", "w") as z:
        z.writestr("../../escaped.txt", b"x")
    with pytest.raises(UserError) as e:
        download("btad", tmp_path / "btad2", archive=server.archive("evil.zip", "01/train/ok"))
    one_line_naming(e, "outside the folder")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_folder_that_is_neither_empty_nor_the_dataset_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UserError) as e:
        download("mvtec", tmp_path / "mine")
    one_line_naming(e, "not a complete MVTec AD copy")


def test_too_little_disk_is_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        _check_disk(tmp_path, 10**18, DATASETS["visa"])
    one_line_naming(e, "GiB free in")


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "anomaly_backbones", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("name", ["mvtec", "visa", "btad"])
def test_offline_the_official_download_fails_with_one_line(tmp_path, name):
    url = DATASETS[name].archive.url
    if _resolves(url.split("/")[2]):
        pytest.skip("the dataset host resolves here: this test would start a real download")
    r = _cli("download", name, str(tmp_path / name), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith(f"error: could not download {DATASETS[name].title}")
    assert url in r.stderr and not (tmp_path / name).exists() and _leftovers(tmp_path) == []


def test_mpdd_says_where_to_get_it_and_checks_a_copy(tmp_path):
    r = _cli("download", "mpdd", str(tmp_path / "mpdd"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "OneDrive" in r.stderr and "vutbr-my.sharepoint.com" in r.stderr
    make_mpdd(tmp_path / "mpdd")
    r = _cli("download", "mpdd", str(tmp_path / "mpdd"), cwd=tmp_path)
    assert r.returncode == 0 and "holds MPDD" in r.stdout, r.stderr
