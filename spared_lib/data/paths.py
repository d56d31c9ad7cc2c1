"""Where data lives: the real test fixtures and the download cache.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

FIXTURES_ENV = "SPARED_FIXTURES_DIR"
DATA_ENV = "SPARED_DATA_DIR"


def _shared_data_near(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        candidate = folder / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def fixtures_dir() -> Path | None:
    """The folder of real fixtures (``shared/data`` beside the repository), or ``None``.

    ``$SPARED_FIXTURES_DIR`` wins when set. Otherwise the first ``shared/data`` folder found by
    walking up from this package and then from the working directory.

    Defined in ``notebooks/01_spared_database.py``.
    """
    env = os.environ.get(FIXTURES_ENV)
    if env:
        return Path(env) if Path(env).is_dir() else None
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        found = _shared_data_near(start)
        if found is not None:
            return found
    return None


def cache_dir() -> Path:
    """The folder where datasets are downloaded: ``$SPARED_DATA_DIR``, else the user cache.

    Never inside site-packages or the working directory, so notebooks run anywhere.

    Defined in ``notebooks/01_spared_database.py``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("spared-book")) / "datasets"
