"""Bad input to the downloads: a loopback server that misbehaves in every common way, broken
cached files, wrong registry entries, a full or read-only disk, a stuck lock.

Every case asserts the outcome (a clear DownloadError naming the file, the URL or folder and the
problem, or the correct file) and that the cache folder holds afterwards only what the operation
was meant to write (the lock file; ``<file>.part`` where a transfer is resumable; the file itself
when the outcome is a correct result). See tests/badinput.py.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time

import dlserver
import h5py
import numpy as np
import pytest
from badinput import ERROR, RESULT, case, raises_naming, unchanged
from localhttp import serve
from PIL import Image

from spared_lib.data import DatasetInfo, RemoteFile, load_dataset
from spared_lib.data import download as dl
from spared_lib.data.download import MIRROR_ENV, DownloadError, fetch, hash_record


def _h5_bytes():
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("matrix/data", data=np.arange(10.0))
    return buf.getvalue()


def _png_bytes():
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tar_bytes():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b'{"spot_diameter_fullres": 10}'
        info = tarfile.TarInfo("spatial/scalefactors_json.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GZ = gzip.compress(np.random.default_rng(1).integers(0, 255, 1_500_000, dtype=np.uint8).tobytes(), 1)
H5, PNG, TAR = _h5_bytes(), _png_bytes(), _tar_bytes()
FILES = {"data.tsv.gz": GZ, "counts.h5": H5, "image.png": PNG, "spatial.tar.gz": TAR,
         "bad.png": PNG[: len(PNG) // 2], "bad.json": b'{"spot_diameter_fullres": 1', "bad.zip": b"PK\x03\x04garbage",
         "bad.tar.gz": gzip.compress(b"not a tar archive" * 100)}
SHA = {name: hashlib.sha256(body).hexdigest() for name, body in FILES.items()}


@pytest.fixture()
def server():
    dlserver.reset()
    dlserver.FILES.update(FILES)
    with serve(dlserver.Handler) as url:
        yield url


def _dest(tmp_path, name):
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    return cache, cache / name


# --------------------------------------------------------------------------- server misbehaviour
# (mode, served file, saved as, pinned?, message fragments)
SERVER_ERRORS = [
    case(ERROR, "wrong-hash", "good", "data.tsv.gz", "data.tsv.gz", "0" * 64, ("checksum mismatch", "discarded")),
    case(ERROR, "http-404", "404", "data.tsv.gz", "data.tsv.gz", True, ("HTTP 404",)),
    case(ERROR, "http-500", "500", "data.tsv.gz", "data.tsv.gz", True, ("HTTP 500",)),
    case(ERROR, "html-page-with-status-200", "html", "counts.h5", "counts.h5", None, ("HTML page", "text/html")),
    case(ERROR, "html-page-with-status-200-pinned", "html", "counts.h5", "counts.h5", True, ("HTML page",)),
    case(ERROR, "html-served-as-binary-h5", "htmlbinary", "counts.h5", "counts.h5", None, ("HTML",)),
    case(ERROR, "html-served-as-binary-gz", "htmlbinary", "data.tsv.gz", "data.tsv.gz", None, ("HTML",)),
    case(ERROR, "empty-body", "empty", "data.tsv.gz", "data.tsv.gz", None, ("empty",)),
    case(ERROR, "silent-truncation-unpinned", "nolength", "data.tsv.gz", "data.tsv.gz", None, ("cannot read the gzip stream",)),
    case(ERROR, "silent-truncation-pinned", "nolength", "data.tsv.gz", "data.tsv.gz", True, ("checksum mismatch",)),
    case(ERROR, "h5-name-gz-bytes", "good", "data.tsv.gz", "counts.h5", None, ("not an HDF5 file",)),
    case(ERROR, "truncated-png", "good", "bad.png", "image.png", None, ("cannot read the image",)),
    case(ERROR, "broken-json", "good", "bad.json", "scalefactors_json.json", None, ("cannot read the JSON",)),
    case(ERROR, "not-a-zip", "good", "bad.zip", "archive.zip", None, ("zip",)),
    case(ERROR, "gz-but-not-tar", "good", "bad.tar.gz", "spatial.tar.gz", None, ("cannot read the tar archive",)),
]


@pytest.mark.parametrize(("mode", "served", "saved", "pin", "fragments"),
                         [p.values for p in SERVER_ERRORS], ids=[p.id for p in SERVER_ERRORS])
def test_server_errors_keep_nothing(server, tmp_path, mode, served, saved, pin, fragments):
    cache, dest = _dest(tmp_path, saved)
    sha = SHA[served] if pin is True else pin
    url = f"{server}/{mode}/{served}"
    with unchanged(cache, allow=[f".{saved}.lock"]), raises_naming(DownloadError, url, saved, *fragments) as err:
        fetch(url, dest, sha, progress=False)
    assert str(cache) in str(err.value) or "discarded" in str(err.value) or "kept" in str(err.value)


def test_offline_names_file_url_and_folder(tmp_path):
    cache, dest = _dest(tmp_path, "spatial.tar.gz")
    url = "http://127.0.0.1:9/offline/spatial.tar.gz"
    with unchanged(cache, allow=[".spatial.tar.gz.lock"]), raises_naming(DownloadError, url, "spatial.tar.gz", str(cache)):
        fetch(url, dest, SHA["spatial.tar.gz"], progress=False, timeout=5)


@pytest.mark.parametrize(("mode", "fragment"), [
    case(ERROR, "content-length-not-reached", "cut", "is incomplete"),
    case(ERROR, "incomplete-read-inside-a-chunk", "chunkcut", "interrupted after"),
])
def test_cut_transfer_keeps_a_resumable_part(server, tmp_path, mode, fragment):
    """The server hangs up early (issue 15 §4: http.client.IncompleteRead escaped raw): a clear
    error, and the bytes that arrived are kept as .part for the next call (never as the file)."""
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    url = f"{server}/{mode}/data.tsv.gz"
    with unchanged(cache, allow=[".data.tsv.gz.lock", "data.tsv.gz.part"]), \
            raises_naming(DownloadError, url, fragment, "call again to resume") as err:
        fetch(url, dest, SHA["data.tsv.gz"], progress=False)
    if mode == "chunkcut":
        assert "IncompleteRead" in str(err.value)
    assert not dest.exists() and (cache / "data.tsv.gz.part").read_bytes() == GZ[: len(GZ) // (3 if mode == "cut" else 4)]
    fetch(f"{server}/good/data.tsv.gz", dest, SHA["data.tsv.gz"], progress=False)  # resumes from the part
    assert dest.read_bytes() == GZ and dlserver.hits[("good", "data.tsv.gz", f"bytes={len(GZ) // (3 if mode == 'cut' else 4)}-")] == 1


@pytest.mark.parametrize("mode", [
    case(RESULT, "range-reply-starting-at-zero", "badrange"),
    case(RESULT, "range-reply-with-wrong-total", "shortrange"),
    case(RESULT, "416-to-an-incomplete-part", "always416"),
    case(RESULT, "server-ignores-range", "norange"),
])
@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
def test_bad_range_replies_never_splice(server, tmp_path, mode, pinned):
    """Issue 15 §2: a 206 was trusted without checking Content-Range; without a sha256 the
    spliced file was cached. A reply that does not continue the part restarts the download."""
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    (cache / "data.tsv.gz.part").write_bytes(GZ[:400_000])
    fetch(f"{server}/{mode}/data.tsv.gz", dest, SHA["data.tsv.gz"] if pinned else None, progress=False)
    assert dest.read_bytes() == GZ and not (cache / "data.tsv.gz.part").exists()


# --------------------------------------------------------------------------- the cached copy
def test_trusted_file_changed_upstream_is_refused(server, tmp_path):
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    fetch(f"{server}/good/data.tsv.gz", dest, None, progress=False)
    dest.write_bytes(GZ[:-8] + b"\0" * 8)  # damaged in the cache ...
    dlserver.FILES["data.tsv.gz"] = gzip.compress(b"a different release")  # ... and changed upstream
    with unchanged(cache), raises_naming(DownloadError, hash_record(dest), "changed since its first download",
                                         "checksum mismatch", "delete"):
        fetch(f"{server}/good/data.tsv.gz", dest, None, progress=False)


def test_garbage_hash_record(server, tmp_path):
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    fetch(f"{server}/good/data.tsv.gz", dest, None, progress=False)
    hash_record(dest).write_text("not-a-hash  data.tsv.gz\n")
    with unchanged(cache), raises_naming(DownloadError, hash_record(dest), "not a sha256 record"):
        fetch(f"{server}/good/data.tsv.gz", dest, None, progress=False)


def test_invalid_sha256_in_the_registry(tmp_path):
    cache, dest = _dest(tmp_path, "x.h5")
    with unchanged(cache), raises_naming(ValueError, "'abc123'", "not a sha256 hex digest"):
        fetch("http://127.0.0.1:9/x.h5", dest, "abc123", progress=False)


def test_corrupt_pinned_copy_while_offline_is_kept_and_explained(tmp_path):
    cache, dest = _dest(tmp_path, "counts.h5")
    dest.write_bytes(H5[:-1] + b"!")
    url = "http://127.0.0.1:9/counts.h5"
    with unchanged(cache, allow=[".counts.h5.lock"]), \
            raises_naming(DownloadError, dest, "does not match its sha256", "could not download"):
        fetch(url, dest, SHA["counts.h5"], progress=False, timeout=5)


def test_hand_placed_html_is_not_trusted(tmp_path):
    cache, dest = _dest(tmp_path, "counts.h5")
    dest.write_bytes(dlserver.HTML)
    with unchanged(cache, allow=[".counts.h5.lock"]), \
            raises_naming(DownloadError, "counts.h5", "the cached copy is not usable", "HTML"):
        fetch("http://127.0.0.1:9/counts.h5", dest, None, progress=False, timeout=5)


@pytest.mark.parametrize(("prepare", "pin", "served"), [
    case(RESULT, "corrupt-pinned-copy-repaired", lambda d: d.write_bytes(H5[:-1] + b"!"), True, "counts.h5"),
    case(RESULT, "uppercase-pin-keeps-the-copy", lambda d: d.write_bytes(H5), "upper", "404"),
    case(RESULT, "complete-part-answered-416", lambda d: d.with_name(d.name + ".part").write_bytes(H5), True, "always416"),
    case(RESULT, "hand-placed-valid-file-recorded", lambda d: d.write_bytes(H5), None, "404"),
])
def test_cache_correct_results(server, tmp_path, prepare, pin, served):
    cache, dest = _dest(tmp_path, "counts.h5")
    prepare(dest)
    sha = {True: SHA["counts.h5"], "upper": SHA["counts.h5"].upper(), None: None}[pin]
    mode = "good" if served == "counts.h5" else served
    fetch(f"{server}/{mode}/counts.h5", dest, sha, progress=False)
    assert dest.read_bytes() == H5
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == \
        (["counts.h5", "counts.h5.sha256"] if pin is None else ["counts.h5"])


# --------------------------------------------------------------------------- the disk
class _FailingFile(io.FileIO):
    """A file whose writes fail with ``code`` once ``limit`` bytes are written (a full disk)."""

    limit, code = 200_000, errno.ENOSPC

    def write(self, block):
        if self.tell() + len(block) > self.limit:
            raise OSError(self.code, "No space left on device")
        return super().write(block)


@pytest.mark.parametrize(("code", "fragments"), [
    case(ERROR, "disk-full", errno.ENOSPC, ("no space left", "GB free", "nothing partial was kept", "SPARED_DATA_DIR")),
    case(ERROR, "quota-exceeded", errno.EDQUOT, ("no space left", "SPARED_DATA_DIR")),
])
def test_full_disk_leaves_no_part(server, tmp_path, monkeypatch, code, fragments):
    """Issue 15 §4: a full disk was told to 'call again to resume' and left the .part behind.
    (The full disk is simulated by the writer raising the OS error.)"""
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    monkeypatch.setattr(_FailingFile, "code", code)
    monkeypatch.setattr(dl, "open", lambda path, mode: _FailingFile(path, mode.replace("b", "")), raising=False)
    with unchanged(cache, allow=[".data.tsv.gz.lock"]), raises_naming(DownloadError, cache, *fragments) as err:
        fetch(f"{server}/good/data.tsv.gz", dest, SHA["data.tsv.gz"], progress=False)
    assert "call again to resume" not in str(err.value)


def test_read_only_folder(server, tmp_path, monkeypatch):
    cache, dest = _dest(tmp_path, "data.tsv.gz")

    def read_only(path, mode):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(dl, "open", read_only, raising=False)
    with unchanged(cache, allow=[".data.tsv.gz.lock"]), \
            raises_naming(DownloadError, cache, "Read-only file system", "set SPARED_DATA_DIR to a writable folder"):
        fetch(f"{server}/good/data.tsv.gz", dest, SHA["data.tsv.gz"], progress=False)


class _NoLockFile:
    """A lock whose file cannot be created (a read-only folder)."""

    lock_file = "(read-only)"

    def __init__(self, *args, **kwargs):
        pass

    def acquire(self, timeout=None):
        raise OSError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize(("pin", "content", "usable"), [
    case(RESULT, "read-only-cache-with-a-good-pinned-file", True, H5, True),
    case(RESULT, "read-only-cache-with-a-good-unrecorded-file", None, H5, True),
    case(ERROR, "read-only-cache-with-a-corrupt-pinned-file", True, H5[:-1] + b"!", False),
    case(ERROR, "read-only-cache-without-the-file", True, None, False),
])
def test_read_only_cache(tmp_path, monkeypatch, pin, content, usable):
    """A cache folder nobody may write to (a lab-wide, read-only copy) is used as it is when its
    files pass their checks; otherwise the error says the folder is read-only."""
    import filelock

    cache, dest = _dest(tmp_path, "counts.h5")
    if content is not None:
        dest.write_bytes(content)
    monkeypatch.setattr(filelock, "FileLock", _NoLockFile)
    sha = SHA["counts.h5"] if pin else None
    with unchanged(cache):
        if usable:
            assert fetch("http://127.0.0.1:9/counts.h5", dest, sha, progress=False) == dest
        else:
            with raises_naming(DownloadError, cache, "Read-only file system", "SPARED_DATA_DIR"):
                fetch("http://127.0.0.1:9/counts.h5", dest, sha, progress=False)


def test_destination_folder_is_a_file(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with unchanged(tmp_path), raises_naming(DownloadError, blocker, "could not write"):
        fetch("http://127.0.0.1:9/x.h5", blocker / "x.h5", None, progress=False)


# --------------------------------------------------------------------------- registry, mirror, fallback, lock
def test_fallback_also_failing_lists_both(server, tmp_path):
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    first, second = f"{server}/404/data.tsv.gz", f"{server}/500/data.tsv.gz"
    with unchanged(cache, allow=[".data.tsv.gz.lock"]), raises_naming(DownloadError, first, second, "[1]", "[2]"):
        fetch(first, dest, SHA["data.tsv.gz"], progress=False, fallback_url=second)


def test_unreachable_mirror_names_the_mirrored_url(tmp_path, monkeypatch):
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/mirror")
    with unchanged(cache, allow=[".data.tsv.gz.lock"]), \
            raises_naming(DownloadError, "http://127.0.0.1:9/mirror/example.org/data.tsv.gz", "could not download"):
        fetch("https://example.org/data.tsv.gz", dest, None, progress=False, timeout=5)


def test_lock_held_too_long(tmp_path, monkeypatch):
    cache, dest = _dest(tmp_path, "data.tsv.gz")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock\n"
        f"with FileLock({str(cache / '.data.tsv.gz.lock')!r}):\n"
        "    print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(dl, "LOCK_TIMEOUT_S", 0.5)
        t0 = time.perf_counter()
        with unchanged(cache), raises_naming(DownloadError, cache / ".data.tsv.gz.lock", "another process",
                                             "delete that lock file"):
            fetch("http://127.0.0.1:9/data.tsv.gz", dest, None, progress=False)
        assert time.perf_counter() - t0 < 10
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_archive_cannot_unpack(server, tmp_path):
    cache, dest = _dest(tmp_path, "spatial.tar.gz")
    with unchanged(cache, allow=[".spatial.tar.gz.lock", "spatial.tar.gz"]), \
            raises_naming(DownloadError, dest, "cannot unpack", "delete it"):
        fetch(f"{server}/good/bad.tar.gz", dest, SHA["bad.tar.gz"], unpack="tar", progress=False)
    assert not (cache / ".spatial.tar.gz.unpacked").exists()


def _info(files, **kw):
    return DatasetInfo(key="mine", organism="human", n_genes=32, combat_key="slide_id", cell_min_counts=10,
                       train_slides=("S1",), val_slides=("S2",), files=files, **kw)


def test_dataset_without_files(tmp_path):
    with unchanged(tmp_path), raises_naming(DownloadError, tmp_path / "mine", "lists no files", "<slide_id>"):
        load_dataset(_info(()), data_dir=tmp_path)


def test_archive_without_the_slides(server, tmp_path):
    files = (RemoteFile(f"{server}/good/spatial.tar.gz", "archive/spatial.tar.gz", SHA["spatial.tar.gz"], "tar"),)
    root = tmp_path / "mine"
    with unchanged(tmp_path, allow=["mine", "mine/archive", "mine/archive/*", "mine/archive/spatial/*"]), \
            raises_naming(DownloadError, root, "no Space Ranger folder was recognised", "['S1', 'S2']"):
        load_dataset(_info(files), data_dir=tmp_path)


def test_registry_dataset_without_download(tmp_path):
    with unchanged(tmp_path), raises_naming(FileNotFoundError, tmp_path / "her2st", "her2st_E", "download=True",
                                            "ST-cnts/E1.tsv.gz"):
        load_dataset("her2st_E", data_dir=tmp_path, download=False)


def test_scalefactors_json_bytes_are_checked_as_json(server, tmp_path):
    """A correct result for contrast: a valid PNG and JSON pass the format checks."""
    cache, dest = _dest(tmp_path, "image.png")
    fetch(f"{server}/good/image.png", dest, None, progress=False)
    assert dest.read_bytes() == PNG
    dlserver.FILES["sf.json"] = json.dumps({"spot_diameter_fullres": 89.4}).encode()
    fetch(f"{server}/good/sf.json", cache / "sf.json", None, progress=False)
    assert json.loads((cache / "sf.json").read_text()) == {"spot_diameter_fullres": 89.4}
