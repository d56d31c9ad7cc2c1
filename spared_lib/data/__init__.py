"""SpaRED data: the 26-dataset registry (and her2st), readers, pinned downloads and a synthetic
generator.

Introduced in ``notebooks/01_spared_database.py``. Heavy libraries (scanpy, anndata) are imported
inside the functions that need them.
"""
from .checks import DataFileError
from .genes import gene_table, symbols_to_ids
from .images import image_size, open_image
from .load import dataset_root, load_dataset
from .paths import cache_dir, fixtures_dir
from .readers import read_h5ad, read_positions, read_scalefactors, read_visium, array_spot_spacing
from .registry import (DATASETS, EXTRA_DATASETS, DatasetInfo, RemoteFile, datasets_table,
                       get_dataset, integrity)
from .st import read_st
from .subset import assign_splits, crop_slides
from .synthetic import make_synthetic_dataset, synthetic_truth, visium_array

__all__ = [
    "DATASETS", "DataFileError", "DatasetInfo", "DownloadError", "EXTRA_DATASETS", "FIXTURES",
    "MIRROR_ENV", "RemoteFile", "assign_splits", "build_mirror", "cache_dir", "crop_slides", "dataset_root", "datasets_table",
    "check_format", "fetch", "fetch_dataset", "fixture_dataset", "fixtures_dir", "gene_table", "get_dataset",
    "image_size", "integrity", "load_dataset", "make_synthetic_dataset", "open_image", "read_h5ad",
    "read_positions", "read_scalefactors", "read_st", "read_visium", "resolve_dataset", "array_spot_spacing",
    "symbols_to_ids", "synthetic_truth", "visium_array",
]


def __getattr__(name):
    # Downloads (urllib, filelock) are loaded on first use only.
    if name in ("check_format", "fetch", "fetch_dataset", "DownloadError", "MIRROR_ENV"):
        from . import download

        return getattr(download, name)
    # Loaded on first use too, so that `python -m spared_lib.data.fixtures` runs a module the package
    # has not imported already (runpy warns otherwise).
    if name in ("FIXTURES", "fixture_dataset", "resolve_dataset"):
        from . import fixtures

        return getattr(fixtures, name)
    if name == "build_mirror":
        from .mirror import build_mirror

        return build_mirror
    raise AttributeError(f"module 'spared_lib.data' has no attribute {name!r}")
