"""Every download of the project goes through :func:`fetch`: pinned URL, sha256, cache, resume.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .registry import DatasetInfo

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A file could not be fetched or failed its checksum; the message says how to fix it."""


def sha256sum(path: str | Path) -> str:
    """The sha256 hex digest of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(dest: Path, url: str) -> str:
    return (f"Download {url} yourself and save it as {dest} (folder {dest.parent}); "
            "it is used from there without downloading again.")


def fetch(url: str, dest: str | Path, sha256: str | None = None, *, unpack: str | None = None,
          timeout: float = 60.0, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    The transfer goes to ``<dest>.part``; an interrupted download resumes from there with an HTTP
    ``Range`` request. The finished file is checked against ``sha256`` (when known) before it is
    moved into place, so ``dest`` only ever holds a complete, verified file.

    Parameters
    ----------
    url
        Pinned source URL (``http(s)://`` or ``file://``).
    dest
        Final path of the file (in the dataset cache, see :func:`spared_lib.data.cache_dir`).
    sha256
        Expected hex digest, or ``None`` where the source publishes none.
    unpack
        ``'zip'`` or ``'tar'``: extract into ``dest``'s folder once, after verification.
    timeout
        Seconds without data before giving up.
    progress
        Show a tqdm bar.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    DownloadError
        Offline, HTTP error, truncated transfer or checksum mismatch; the message names the file,
        the URL and the folder where the file can be placed by hand.

    Defined in ``notebooks/01_spared_database.py``.
    """
    dest = Path(dest)
    if dest.exists():
        if sha256 is None or sha256sum(dest) == sha256:
            _unpack_once(dest, unpack)
            return dest
        # A stale or corrupt copy in our own cache: fetch it again.
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "spared-book"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"could not download {dest.name} from {url}: {err}. "
                            + _by_hand(dest, url)) from err
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:  # the server ignored the Range request: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                       leave=False)
        received = have
        try:
            with open(part, "ab" if have else "wb") as out:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
        except (OSError, urllib.error.URLError) as err:
            raise DownloadError(f"download of {dest.name} from {url} was interrupted after "
                                f"{received} bytes ({err}); call again to resume. "
                                + _by_hand(dest, url)) from err
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received < total:
        raise DownloadError(f"download of {dest.name} from {url} is incomplete: {received} of "
                            f"{total} bytes; call again to resume. " + _by_hand(dest, url))
    if sha256 is not None:
        got = sha256sum(part)
        if got != sha256:
            part.unlink()
            raise DownloadError(f"checksum mismatch for {dest.name} from {url}: expected sha256 "
                                f"{sha256}, got {got}; the file was discarded. "
                                + _by_hand(dest, url))
    os.replace(part, dest)
    _unpack_once(dest, unpack)
    return dest


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
    except (zipfile.BadZipFile, tarfile.TarError) as err:
        raise DownloadError(f"{archive}: cannot unpack ({err}); delete it and download again") from err
    marker.touch()


def _find_slide_folder(root: Path, slide_id: str) -> Path | None:
    """A Space Ranger folder for ``slide_id`` somewhere under ``root`` (archives differ in layout)."""
    for folder in sorted(root.rglob(f"*{slide_id}*")):
        if folder.is_dir() and ((folder / "spatial").is_dir() or
                                any(folder.glob("filtered_feature_bc_matrix*"))):
            return folder
    return None


def fetch_dataset(info: DatasetInfo, root: str | Path, progress: bool = True) -> Path:
    """Fetch every file of a registry dataset into ``root`` and arrange one folder per slide.

    Per-slide files (10x Genomics, figshare) land directly in ``<root>/<slide_id>/``. Archives
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
              progress=progress)
    if info.layout == "st":  # the her2st layout: files already sit where the reader looks
        return root
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
    return root
