"""The real fixtures in ``shared/data``: registry entries read from the local copy, and the command
that lays the folder out from the fixtures' public sources.

Every fixture is a registry entry (``EXTRA_DATASETS``) whose files are byte-identical to the
copies in ``shared/data`` and pinned to a public commit: her2st (almaan/her2st), the CytAssist
slide (Perik-Zavodskii/CoexpressDeconvolve) and the heart subset (scverse/scanpy's test data).
:func:`fixture_dataset` points an entry at the local copy; :func:`fetch_fixtures` (or
``python -m spared_lib.data.fixtures fetch DEST``) downloads them into ``DEST`` in the
``shared/data`` layout, through :func:`spared_lib.data.fetch` with the pins.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .paths import fixtures_dir
from .registry import EXTRA_DATASETS, DatasetInfo

#: Names accepted by :func:`fixture_dataset`: ``her2st`` (28 sections, 7 patients, split by
#: patient), ``her2st_<P>`` for each patient (consecutive sections), ``her2st_hne`` (C2, C3 train,
#: C4 val: the sections with H&E), ``visium_mouse_cytassist`` and ``visium_human_heart_subset``.
FIXTURES: tuple[str, ...] = tuple(EXTRA_DATASETS)
# The entries whose files together make up shared/data (the her2st family shares one folder).
_FOLDERS = ("her2st", "visium_mouse_cytassist", "visium_human_heart_subset")


def fixture_dataset(name: str) -> DatasetInfo:
    """A real fixture (one of :data:`FIXTURES`) as a :class:`DatasetInfo` for :func:`load_dataset`,
    reading the local copy in ``shared/data`` (no download). Single-slide Visium fixtures put
    their slide in ``train``.

    Raises ``FileNotFoundError`` when the fixtures folder is absent.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; choose from {list(FIXTURES)}")
    base = fixtures_dir()
    if base is None:
        raise FileNotFoundError("the real fixtures folder (shared/data) was not found; set "
                                "SPARED_FIXTURES_DIR to its path, or lay it out with "
                                "`python -m spared_lib.data.fixtures fetch DEST`")
    info = EXTRA_DATASETS[name]
    return replace(info, root=str(base / (info.folder or info.key)))


def resolve_dataset(name: str) -> DatasetInfo:
    """The dataset ``name`` from its local copy when the fixtures folder holds it (CI, a clone
    with ``shared/data``), else the registry entry, which :func:`load_dataset` downloads on first
    use (Colab). Both give the same files: the fixtures are byte-identical to the pinned downloads.

    Defined in ``notebooks/01_spared_database.py``.
    """
    from .registry import get_dataset

    if name in FIXTURES and fixtures_dir() is not None:
        return fixture_dataset(name)
    return get_dataset(name)


def fetch_fixtures(dest, progress: bool = True) -> Path:
    """Download every file of ``shared/data`` from its public source into ``dest`` (same layout),
    checking each pinned sha256; files already there with the right hash are kept.

    Defined in ``notebooks/01_spared_database.py``.
    """
    from .download import fetch_dataset

    dest = Path(dest)
    for key in _FOLDERS:
        info = EXTRA_DATASETS[key]
        fetch_dataset(info, dest / (info.folder or info.key), progress=progress)
    return dest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spared_lib.data.fixtures",
                                     description="Lay out the real fixtures (shared/data) from their public sources.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download every fixture file into DEST (sha256-pinned)")
    fetch.add_argument("dest")
    fetch.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    print(fetch_fixtures(args.dest, progress=not args.quiet))


if __name__ == "__main__":
    main()
