"""A local mirror of the registry's downloads, laid out as ``$SPARED_DATA_MIRROR`` expects.

``https://<server>/<path>`` is served from ``<mirror>/<server>/<path>``. :func:`build_mirror`
fills such a folder with every registry file that has a byte-identical local copy (the real
fixtures in ``shared/data``: today the 59 her2st files), checking each pinned sha256, so that the
offline rehearsal downloads her2st exactly as a user would::

    python -m spared_lib.data.mirror /tmp/mirror --serve 8765   # build, then serve on 127.0.0.1
    SPARED_DATA_MIRROR=http://127.0.0.1:8765 python -c "from spared_lib import data; data.load_dataset('her2st')"

``SPARED_DATA_MIRROR=file:///tmp/mirror`` works without a server.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import argparse
import shutil
import urllib.parse
from pathlib import Path

from .download import sha256sum
from .paths import fixtures_dir
from .registry import DATASETS, EXTRA_DATASETS


def mirror_path(url: str) -> str:
    """The path of ``url`` inside a mirror folder: ``<server>/<path>``."""
    parts = urllib.parse.urlsplit(url)
    return (parts.netloc + parts.path).lstrip("/")


def build_mirror(dest, source=None, keys=None) -> dict[str, tuple[int, int]]:
    """Copy every registry file found in ``source`` into the mirror folder ``dest``.

    Parameters
    ----------
    dest
        The mirror folder (created).
    source
        Where local copies live, one folder per dataset folder name (``<source>/her2st/ST-cnts/...``);
        default :func:`spared_lib.data.fixtures_dir`.
    keys
        Registry keys to mirror (default: every dataset, SpaRED's and her2st's).

    Returns
    -------
    dict
        key -> (files mirrored, files listed), for the datasets with at least one local file.

    Raises
    ------
    ValueError
        A local copy whose sha256 differs from the registry's pin (it is not copied).

    Defined in ``notebooks/01_spared_database.py``.
    """
    dest = Path(dest)
    source = Path(source) if source is not None else fixtures_dir()
    if source is None or not source.is_dir():
        raise FileNotFoundError(f"no local copies to mirror: source folder {source} not found "
                                "(set SPARED_FIXTURES_DIR or pass source=)")
    registry = {**DATASETS, **EXTRA_DATASETS}
    unknown = sorted(set(keys or ()) - set(registry))
    if unknown:
        raise KeyError(f"unknown dataset keys {unknown}")
    done: dict[str, tuple[int, int]] = {}
    for key in keys or registry:
        info = registry[key]
        local = source / (info.folder or info.key)
        found = 0
        for remote in info.files:
            copy = local / remote.target
            if not copy.is_file():
                continue
            if remote.sha256 is not None and sha256sum(copy) != remote.sha256:
                raise ValueError(f"{copy}: sha256 differs from the registry's pin for {remote.url}; "
                                 "not a copy of that file")
            target = dest / mirror_path(remote.url)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.stat().st_size != copy.stat().st_size:
                shutil.copyfile(copy, target)
            found += 1
        if found:
            done[key] = (found, len(info.files))
    return done


def serve(folder, port: int = 0, quiet: bool = True):
    """An HTTP server on 127.0.0.1 serving ``folder`` (call ``.serve_forever()``; port 0 = any).
    ``quiet`` drops the per-request log lines."""
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            if not quiet:
                super().log_message(*args)

    handler = functools.partial(Handler, directory=str(folder))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spared_lib.data.mirror",
                                     description="Build a local mirror of the registry's files from shared/data.")
    parser.add_argument("dest", help="mirror folder to fill")
    parser.add_argument("--source", help="folder of local copies (default: the fixtures folder)")
    parser.add_argument("--keys", nargs="*", help="dataset keys (default: all)")
    parser.add_argument("--serve", type=int, metavar="PORT", help="then serve it on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    done = build_mirror(args.dest, args.source, args.keys)
    for key, (found, listed) in done.items():
        print(f"{key}: {found} of {listed} files")
    if args.serve is not None:
        httpd = serve(args.dest, args.serve, quiet=False)
        print(f"SPARED_DATA_MIRROR=http://127.0.0.1:{httpd.server_address[1]}", flush=True)
        httpd.serve_forever()


if __name__ == "__main__":
    main()
