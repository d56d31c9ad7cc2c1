"""Every download of the project goes through :func:`fetch`: pinned URL, sha256, cache, resume.

What a cached file is trusted for:

* **pinned** files (a sha256 in ``dataset_files.csv``) are checked against it on every use;
* **unpinned** files are *trusted on first use*: the first download is checked for what it claims
  to be (Content-Length, no HTML error page, the format of its name: HDF5 signature, gzip
  integrity, the image decodes, JSON parses), and its sha256 is then recorded beside it in
  ``<file>.sha256`` (``sha256sum`` format) and checked on every later use.

Several processes may fetch the same file at once (Ray trials, DDP ranks): a file lock
(``filelock``) around each file lets one download while the others wait and then find the verified
copy; each download writes a temporary file of its own process and only a verified file is moved
into place. An interrupted transfer is kept as ``<file>.part`` and resumed with an HTTP ``Range``
request whose reply (``Content-Range``) must start where the part ends.

``$SPARED_DATA_MIRROR`` (:data:`MIRROR_ENV`) replaces the base of every registry URL: with it set
to ``http://host:port/prefix``, ``https://<server>/<path>`` is fetched from
``http://host:port/prefix/<server>/<path>`` (a mirror or caching proxy laid out by server name;
:func:`spared_lib.data.build_mirror` writes such a folder).

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from .registry import DatasetInfo

CHUNK = 1 << 20
MIRROR_ENV = "SPARED_DATA_MIRROR"
HASH_SUFFIX = ".sha256"
# A lock held longer than this means a stuck process; the error then names the lock file.
LOCK_TIMEOUT_S = 3600.0
_log = logging.getLogger("spared_lib.data")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checks; the message says how to fix it."""


class _Resumable(DownloadError):
    """The transfer stopped early; what arrived is kept as ``<file>.part`` for the next call."""


class _BadFile(DownloadError):
    """The transfer finished but the file failed its sha256 or format check (it is discarded)."""


class _WriteFailed(DownloadError):
    """The disk refused the file (full, read-only); nothing partial is kept."""


class _Restart(Exception):
    """Internal: the partial file cannot be resumed (server ignored or mangled the range)."""


def sha256sum(path: str | Path) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def mirrored(url: str) -> str:
    """``url`` as fetched through ``$SPARED_DATA_MIRROR`` when it is set (else unchanged).

    ``https://<server>/<path>`` becomes ``<mirror>/<server>/<path>``; ``file://`` URLs are local
    and stay as they are.

    Defined in ``notebooks/01_spared_database.py``.
    """
    base = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if not base or parts.scheme not in ("http", "https"):
        return url
    tail = parts.netloc + parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{base}/{tail}"


def _expected_hash(sha256: str | None) -> str | None:
    if sha256 is None or not str(sha256).strip():
        return None
    value = str(sha256).strip().lower()  # registries publish upper- and lower-case hex
    if not _SHA256.fullmatch(value):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return value


def _by_hand(dest: Path, url: str) -> str:
    return (f"Download {url} yourself and save it as {dest} (folder {dest.parent}); "
            "it is used from there without downloading again.")


def _disk_message(err: OSError, dest: Path, need: int | None) -> str | None:
    """An honest message for a full or read-only disk (None for other OS errors)."""
    folder = dest.parent
    if err.errno in _NO_SPACE:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        amounts = (f" ({free / 1e9:.2f} GB free" if free is not None else " (") + \
                  (f", the file needs {need / 1e9:.2f} GB)" if need else ")")
        return (f"no space left on the device of {folder}{amounts} while writing {dest.name}; nothing "
                f"partial was kept. Free space there, or set SPARED_DATA_DIR to a folder on a disk "
                f"with room, then call again.")
    if err.errno in _READ_ONLY:
        return (f"cannot write {dest.name} into {folder} ({os.strerror(err.errno)}); set "
                f"SPARED_DATA_DIR to a writable folder, then call again.")
    return None


def _write_error(err: OSError, dest: Path, url: str, need: int | None) -> DownloadError:
    msg = _disk_message(err, dest, need)
    if msg is None:
        msg = f"could not write {dest} ({err}). " + _by_hand(dest, url)
    return _WriteFailed(msg)


# --------------------------------------------------------------------------- format checks
def check_format(path: Path, name: str | None = None) -> None:
    """Raise :class:`~spared_lib.data.DataFileError` unless ``path`` is what its name says.

    ``name`` (default ``path.name``) decides the format: ``.h5``/``.h5ad`` the HDF5 signature,
    ``.gz`` a complete gzip stream (CRC checked), ``.zip``/``.tar`` a readable archive, images
    decode, ``.json`` parses, text is UTF-8. Any file must be non-empty and not an HTML page.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import gzip
    import json

    from .checks import DataFileError, looks_like, reading
    from .images import require_decodes

    path = Path(path)
    name = (name or path.name).lower()
    shown = path.with_name(name) if name != path.name.lower() else path
    hint = looks_like(path)
    if hint and not hint.startswith("the file is gzip"):
        raise DataFileError(shown, hint)
    if name.endswith((".h5", ".hdf5", ".h5ad")):
        import h5py

        if not h5py.is_hdf5(path):
            raise DataFileError(shown, "not an HDF5 file (no HDF5 signature)")
    elif name.endswith((".gz", ".tgz")):
        with reading(shown, "the gzip stream"), gzip.open(path, "rb") as f:
            while f.read(CHUNK):
                pass
        if name.endswith((".tar.gz", ".tgz")):
            with reading(shown, "the tar archive"), tarfile.open(path) as t:
                t.getmembers()
    elif name.endswith(".zip"):
        with reading(shown, "the zip archive"), zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise DataFileError(shown, f"the zip archive is corrupt (first bad member {bad!r})")
    elif name.endswith(".tar"):
        with reading(shown, "the tar archive"), tarfile.open(path) as t:
            t.getmembers()
    elif name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".btf")):
        require_decodes(path, name)
    elif name.endswith(".json"):
        with reading(shown, "the JSON"):
            json.loads(path.read_text(encoding="utf-8"))
    elif name.endswith((".csv", ".tsv", ".txt", ".mtx")):
        with reading(shown, "the text"), open(path, "rb") as f:
            f.read(1 << 16).decode("utf-8", errors="strict")


# --------------------------------------------------------------------------- the cached copy
def hash_record(dest: Path) -> Path:
    """Where the trust-on-first-use sha256 of ``dest`` is kept: ``<dest>.sha256``."""
    return dest.with_name(dest.name + HASH_SUFFIX)


def _read_record(dest: Path) -> str | None:
    record = hash_record(dest)
    if not record.exists():
        return None
    text = record.read_text().split()
    if not text or not _SHA256.fullmatch(text[0].lower()):
        raise DownloadError(f"{record}: not a sha256 record (expected '<64 hex digits>  {dest.name}'); "
                            "delete it to record the file's hash again")
    return text[0].lower()


def _write_record(dest: Path, digest: str) -> None:
    record = hash_record(dest)
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{digest}  {dest.name}\n")
    os.replace(tmp, record)


def _cached_ok(dest: Path, want: str | None) -> tuple[bool, str, str | None]:
    """Whether the cached ``dest`` can be used as it is; why not (for the error message); and the
    sha256 a new download must have (the pin, else the hash recorded at the first download)."""
    recorded = _read_record(dest) if want is None else None
    expected = want or recorded
    if not dest.exists():
        return False, "", expected
    got = sha256sum(dest)
    if want is not None:
        return got == want, f"the cached copy {dest} does not match its sha256 (expected {want}, got {got})", want
    if recorded is not None:
        return got == recorded, (f"the cached copy {dest} changed since its first download (sha256 "
                                 f"{recorded} recorded in {hash_record(dest)}, now {got})"), recorded
    # Placed by hand, or cached before hashes were recorded: check its format, then trust it.
    from .checks import DataFileError

    try:
        check_format(dest)
    except DataFileError as err:
        return False, f"the cached copy is not usable ({err})", None
    _write_record(dest, got)
    return True, "", None


# --------------------------------------------------------------------------- one transfer
def _open(url: str, have: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "spared-book"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _resume_point(response, have: int) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's total size (None if unknown).

    A 206 must carry ``Content-Range: bytes <have>-<end>/<total>``; anything else means the
    bytes would be spliced at the wrong place, so the part is dropped (:class:`_Restart`).
    """
    status = getattr(response, "status", None) or 200
    length = response.headers.get("Content-Length")
    length = int(length) if length is not None and length.strip().isdigit() else None
    if status != 206:
        return 0, length  # a full reply (also: the server ignored the Range request)
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != have:
        raise _Restart
    total = None if match.group(3) == "*" else int(match.group(3))
    end = int(match.group(2))
    if (total is not None and end != total - 1) or (length is not None and length != end - have + 1):
        raise _Restart
    return have, end + 1


def _stream(response, tmp: Path, start: int, bar, dest: Path, url: str, total: int | None) -> int:
    """Copy the body into ``tmp`` from byte ``start``; returns the bytes now in ``tmp``."""
    received = start
    try:
        out = open(tmp, "r+b" if start else "wb")
    except OSError as err:
        raise _write_error(err, dest, url, total) from err
    with out:
        out.truncate(start)
        out.seek(start)
        while True:
            try:
                block = response.read(CHUNK)
            except (OSError, http.client.HTTPException, urllib.error.URLError) as err:
                # Includes IncompleteRead (the server hung up early) and timeouts: resumable.
                partial = _partial_bytes(err)
                if partial:  # the bytes of the cut read arrived too: keep them for the resume
                    try:
                        out.write(partial)
                        received += len(partial)
                    except OSError as disk:
                        raise _DiskError(disk) from disk
                raise _Interrupted(received, err) from err
            if not block:
                break
            try:
                out.write(block)
            except OSError as err:
                raise _DiskError(err) from err
            received += len(block)
            if bar is not None:
                bar.update(len(block))
    return received


def _partial_bytes(err: BaseException) -> bytes:
    """The bytes an ``IncompleteRead`` carries. For chunked replies http.client re-raises it with
    the chunks read so far, the cut chunk's own bytes sitting in the cause: both, in order."""
    if not isinstance(err, http.client.IncompleteRead):
        return b""
    inner = err.__cause__ if isinstance(err.__cause__, http.client.IncompleteRead) else None
    return bytes(err.partial or b"") + (bytes(inner.partial or b"") if inner is not None else b"")


class _Interrupted(Exception):
    def __init__(self, received: int, err: Exception):
        self.received, self.err = received, err


class _DiskError(Exception):
    def __init__(self, err: OSError):
        self.err = err


def _transfer(url: str, dest: Path, tmp: Path, timeout: float, progress: bool) -> int:
    """One HTTP(S)/file transfer into ``tmp`` (resuming from its current size). Returns its size."""
    have = tmp.stat().st_size if tmp.exists() else 0
    try:
        response = _open(url, have, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            # Range not satisfiable: the part may already be complete (total == have).
            total = re.search(r"/(\d+)", err.headers.get("Content-Range", "") if err.headers else "")
            if total is not None and int(total.group(1)) == have:
                return have
            raise _Restart from err
        raise DownloadError(f"could not download {dest.name} from {url}: HTTP {err.code} {err.reason}. "
                            + _by_hand(dest, url)) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        raise DownloadError(f"could not download {dest.name} from {url}: {err}. "
                            + _by_hand(dest, url)) from err
    with response:
        start, total = _resume_point(response, have)
        kind = response.headers.get("Content-Type", "") or ""
        if "text/html" in kind.lower() and not dest.name.lower().endswith((".html", ".htm")):
            raise DownloadError(f"{url} answered with an HTML page (Content-Type {kind!r}), not the "
                                f"data file {dest.name}: an error or login page? Nothing was kept. "
                                + _by_hand(dest, url))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=dest.name, leave=False)
        try:
            received = _stream(response, tmp, start, bar, dest, url, total)
        except _DiskError as err:
            tmp.unlink(missing_ok=True)
            raise _write_error(err.err, dest, url, total) from err.err
        except _Interrupted as err:
            raise _Resumable(f"download of {dest.name} from {url} was interrupted after "
                                f"{err.received} bytes ({type(err.err).__name__}: {err.err}); call again "
                                "to resume. " + _by_hand(dest, url)) from err.err
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _Resumable(f"download of {dest.name} from {url} is incomplete: {received} of "
                            f"{total} bytes; call again to resume. " + _by_hand(dest, url))
    return received


def _verify(tmp: Path, dest: Path, url: str, want: str | None) -> str:
    """The finished file's sha256 after its checks (hash when known, else format)."""
    got = sha256sum(tmp)
    if want is not None and got != want:
        record = hash_record(dest)
        accept = (f" If the source changed the file on purpose, delete {record} to trust the new one."
                  if record.exists() else "")
        raise _BadFile(f"checksum mismatch for {dest.name} from {url}: expected sha256 {want}, "
                       f"got {got}; the file was discarded.{accept} " + _by_hand(dest, url))
    if want is None:
        from .checks import DataFileError

        try:
            check_format(tmp, dest.name)
        except DataFileError as err:
            raise _BadFile(f"{url} did not serve a valid {dest.name} ({err.problem}); nothing was "
                           "kept. " + _by_hand(dest, url)) from err
    return got


def _download(url: str, dest: Path, want: str | None, timeout: float, progress: bool) -> str:
    """Download ``url`` into place at ``dest`` (caller holds the lock). Returns the sha256."""
    part = dest.with_name(dest.name + ".part")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    for stale in dest.parent.glob(f".{dest.name}.*.tmp"):  # left by killed processes (we hold the lock)
        if stale != tmp:
            stale.unlink(missing_ok=True)
    resumed = part.exists()
    if resumed:
        os.replace(part, tmp)  # claim the partial file for this process
    for attempt in (0, 1):
        try:
            _transfer(url, dest, tmp, timeout, progress)
            got = _verify(tmp, dest, url, want)
            break
        except _Restart:
            tmp.unlink(missing_ok=True)  # the server cannot continue this part: start over once
            if attempt:
                raise DownloadError(f"{url} cannot resume {dest.name} and the fresh download failed too. "
                                    + _by_hand(dest, url)) from None
        except DownloadError as err:
            if not isinstance(err, (_BadFile, _WriteFailed)) and tmp.exists() and tmp.stat().st_size:
                os.replace(tmp, part)  # keep what arrived (offline, interrupted) for the next call
            else:
                tmp.unlink(missing_ok=True)  # a bad file, or a disk that refused it: keep nothing
            if isinstance(err, _BadFile) and resumed and attempt == 0:
                resumed = False  # an old part spoiled the file: one clean download
                continue
            raise
        except BaseException:
            # Ctrl-C or an unexpected error: keep what arrived for a later resume (it is checked
            # like any download before it is used).
            if tmp.exists() and tmp.stat().st_size:
                os.replace(tmp, part)
            else:
                tmp.unlink(missing_ok=True)
            raise
    try:
        os.replace(tmp, dest)
        if want is None:
            _write_record(dest, got)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _write_error(err, dest, url, None) from err
    return got


# --------------------------------------------------------------------------- the entry point
def _lock(dest: Path, url: str):
    from filelock import FileLock

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _write_error(err, dest, url, None) from err
    return FileLock(str(dest.parent / f".{dest.name}.lock"))


def fetch(url: str, dest: str | Path, sha256: str | None = None, *, unpack: str | None = None,
          timeout: float = 60.0, progress: bool = True, fallback_url: str | None = None) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Steps: take the file's lock → use the cached copy if it passes its check (pinned sha256, or
    the hash recorded at its first download) → otherwise download (resuming ``<dest>.part``)
    into a temporary file of this process, check it, move it into place and record its hash if
    unpinned → unpack once if asked. See the module docstring for what is checked.

    Parameters
    ----------
    url
        Pinned source URL (``http(s)://`` or ``file://``); ``$SPARED_DATA_MIRROR`` rewrites it.
    dest
        Final path of the file (in the dataset cache, see :func:`spared_lib.data.cache_dir`).
    sha256
        Expected hex digest (either case), or ``None`` where the source publishes none (the file
        is then trusted on first use).
    unpack
        ``'zip'`` or ``'tar'``: extract into ``dest``'s folder once, after verification.
    timeout
        Seconds without data before giving up.
    progress
        Show a tqdm bar.
    fallback_url
        A second source of the same bytes, tried when ``url`` fails (e.g. squidpy's mirror of the
        10x files).

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    DownloadError
        Offline, HTTP error, truncated transfer, HTML instead of data, checksum or format
        mismatch, full or read-only disk; the message names the file, the URL and the folder where
        the file can be placed by hand (or what to free or delete).

    Defined in ``notebooks/01_spared_database.py``.
    """
    from filelock import Timeout

    dest = Path(dest)
    want = _expected_hash(sha256)
    lock = _lock(dest, url)
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except Timeout as err:
        raise DownloadError(f"another process has held the lock {lock.lock_file} for "
                            f"{LOCK_TIMEOUT_S:.0f} s while fetching {dest.name}; if no download is "
                            "running, delete that lock file and call again") from err
    except OSError as err:  # no lock file can be made: a read-only folder (e.g. a shared cache)
        if _usable_without_writing(dest, want, unpack):
            return dest
        raise _write_error(err, dest, url, None) from err
    try:
        ok, why, expected = _cached_ok(dest, want)
        if not ok:
            _download_any(url, fallback_url, dest, expected, timeout, progress, why)
        _unpack_once(dest, unpack)
    finally:
        lock.release()
    return dest


def _usable_without_writing(dest: Path, want: str | None, unpack: str | None) -> bool:
    """Whether a cached file in a folder we cannot write to passes its check as it is (nothing
    is recorded or unpacked there)."""
    from .checks import DataFileError

    if not dest.is_file() or (unpack and not dest.with_name(f".{dest.name}.unpacked").exists()):
        return False
    if want is not None:
        return sha256sum(dest) == want
    recorded = _read_record(dest)
    if recorded is not None:
        return sha256sum(dest) == recorded
    try:
        check_format(dest)
    except DataFileError:
        return False
    return True


def _download_any(url, fallback_url, dest, want, timeout, progress, why: str) -> None:
    """Try the (mirrored) URL, then the fallback; the error lists every attempt."""
    urls = [mirrored(url)] + ([mirrored(fallback_url)] if fallback_url else [])
    errors = []
    for candidate in urls:
        try:
            _download(candidate, dest, want, timeout, progress)
            return
        except DownloadError as err:
            errors.append(err)
            if isinstance(err, _WriteFailed):
                break  # another source will not help
            if len(urls) > 1:
                _log.warning("%s", err)
    message = str(errors[0]) if len(errors) == 1 else " | ".join(f"[{i + 1}] {e}" for i, e in enumerate(errors))
    raise DownloadError((f"{why}; " if why else "") + message) from errors[-1]


def _unpack_once(archive: Path, kind: str | None) -> None:
    if kind is None:
        return
    marker = archive.with_name(f".{archive.name}.unpacked")
    if marker.exists():
        return
    target = archive.parent
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(target)
        elif kind == "tar":
            with tarfile.open(archive) as t:
                t.extractall(target, filter="data")
        else:
            raise ValueError(f"unknown archive kind {kind!r} for {archive}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise DownloadError(f"{archive}: cannot unpack ({err}); delete it and download again") from err
    except OSError as err:
        raise _write_error(err, archive, archive.as_uri(), None) from err
    marker.touch()


# --------------------------------------------------------------------------- datasets
def _find_slide_folder(root: Path, slide_id: str) -> Path | None:
    """A Space Ranger folder for ``slide_id`` somewhere under ``root`` (archives differ in layout)."""
    for folder in sorted(root.rglob(f"*{slide_id}*")):
        if folder.is_dir() and ((folder / "spatial").is_dir() or
                                any(folder.glob("filtered_feature_bc_matrix*"))):
            return folder
    return None


def _arrange_slides(info: DatasetInfo, root: Path) -> None:
    """Link each slide's Space Ranger folder found in an unpacked archive as ``<root>/<slide_id>``."""
    missing = []
    for slide_id in info.slides:
        folder = root / slide_id
        if folder.is_dir():
            continue
        found = _find_slide_folder(root / "archive", slide_id) if (root / "archive").is_dir() else None
        if found is None:
            missing.append(slide_id)
            continue
        try:
            folder.symlink_to(found.resolve(), target_is_directory=True)
        except OSError:  # file systems without symlinks
            shutil.copytree(found, folder)
    if missing:
        raise DownloadError(f"dataset {info.key!r}: downloaded to {root}, but no Space Ranger "
                            f"folder was recognised for slides {missing}. Place each slide's "
                            f"folder (counts + spatial/) at {root}/<slide_id>/.")


def fetch_dataset(info: DatasetInfo, root: str | Path, progress: bool = True) -> Path:
    """Fetch every file of a registry dataset into ``root`` and arrange one folder per slide.

    Per-slide files (10x Genomics, figshare) land directly in ``<root>/<slide_id>/``; her2st's
    files land in its own layout (``ST-cnts/``, ``ST-spotfiles/``, ``ST-imgs/``). Archives
    (Mendeley Data, GEO) are unpacked under ``<root>/archive/`` and each slide's Space Ranger
    folder is linked as ``<root>/<slide_id>``; a slide that cannot be found raises an error that
    says where to place it.

    Defined in ``notebooks/01_spared_database.py``.
    """
    root = Path(root)
    if not info.files:
        raise DownloadError(f"dataset {info.key!r} lists no files to download; place each slide's "
                            f"Space Ranger output in {root}/<slide_id>/")
    for remote in info.files:
        fetch(remote.url, root / remote.target, remote.sha256, unpack=remote.unpack,
              progress=progress, fallback_url=remote.fallback_url)
    if info.layout == "visium":
        _arrange_slides(info, root)
    return root
