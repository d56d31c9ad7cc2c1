"""fetch(): pinned downloads against an HTTP server started on 127.0.0.1 in the test."""
from __future__ import annotations

import hashlib
import http.server

import pytest
from localhttp import serve

from spared_lib.data.download import DownloadError, fetch

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, so the transfer spans several chunks


class _Handler(http.server.BaseHTTPRequestHandler):
    truncate_first = {"n": 0}

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.path.startswith("/resumable"):
            start = int(rng.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith(("/truncated", "/resumable")) and self.truncate_first["n"] > 0:
            self.truncate_first["n"] -= 1
            self.wfile.write(body[: len(body) // 3])  # promise everything, send a third, hang up
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    with serve(_Handler) as url:
        yield url


GOOD = hashlib.sha256(PAYLOAD).hexdigest()


def test_good_file_verified_and_cached(server, tmp_path):
    dest = tmp_path / "cache" / "counts.h5"
    assert fetch(f"{server}/good", dest, GOOD, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["counts.h5"]
    # Cached: a second call needs no server (a dead URL) and returns the same file.
    assert fetch("http://127.0.0.1:9/nothing", dest, GOOD, progress=False) == dest


def test_wrong_hash_is_rejected_and_nothing_kept(server, tmp_path):
    dest = tmp_path / "counts.h5"
    with pytest.raises(DownloadError) as err:
        fetch(f"{server}/good", dest, "0" * 64, progress=False)
    msg = str(err.value)
    assert "checksum mismatch" in msg and "counts.h5" in msg and f"{server}/good" in msg
    assert str(tmp_path) in msg and GOOD in msg
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_is_an_error_then_resumes(server, tmp_path):
    dest = tmp_path / "image.tif"
    _Handler.truncate_first["n"] = 1
    with pytest.raises(DownloadError, match="incomplete|interrupted") as err:
        fetch(f"{server}/resumable", dest, GOOD, progress=False)
    assert "image.tif" in str(err.value) and str(tmp_path) in str(err.value)
    assert not dest.exists()
    part = tmp_path / "image.tif.part"
    assert 0 < part.stat().st_size < len(PAYLOAD)
    # The second call asks for the rest with a Range request and verifies the whole file.
    fetch(f"{server}/resumable", dest, GOOD, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_truncated_without_hash_is_still_detected(server, tmp_path):
    _Handler.truncate_first["n"] = 1
    with pytest.raises(DownloadError, match="incomplete|interrupted"):
        fetch(f"{server}/truncated", tmp_path / "x.bin", None, progress=False)
    assert not (tmp_path / "x.bin").exists()


def test_http_error_and_offline_name_the_file_url_and_folder(server, tmp_path):
    for url in (f"{server}/missing", "http://127.0.0.1:9/offline"):
        with pytest.raises(DownloadError) as err:
            fetch(url, tmp_path / "spatial.tar.gz", GOOD, progress=False, timeout=5)
        msg = str(err.value)
        assert "spatial.tar.gz" in msg and url in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []


def test_unpacks_tar_once(server, tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("spatial/scalefactors_json.json")
        data = b'{"spot_diameter_fullres": 10}'
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    src = tmp_path / "src.tar.gz"
    src.write_bytes(buf.getvalue())
    dest = tmp_path / "slide" / "spatial.tar.gz"
    fetch(src.as_uri(), dest, hashlib.sha256(buf.getvalue()).hexdigest(), unpack="tar",
          progress=False)
    assert (tmp_path / "slide" / "spatial" / "scalefactors_json.json").read_bytes() == data
