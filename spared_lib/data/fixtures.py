"""The real fixtures in ``shared/data`` described as datasets ``load_dataset`` understands.

The her2st fixtures are the registry's her2st entries pointed at the local copy (the files there
are byte-identical to the pinned downloads); the two Visium fixtures exist only locally.
Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

from dataclasses import replace

from .paths import fixtures_dir
from .registry import EXTRA_DATASETS, DatasetInfo

_VISIUM_FIXTURES = {
    "visium_mouse_cytassist": dict(key="visium_mouse_cytassist", organism="mouse", n_genes=128,
                                   combat_key="slide_id", cell_min_counts=10,
                                   train_slides=("visium_mouse_cytassist",), val_slides=(),
                                   abbreviation="CYT", tissue="mouse (CytAssist)", grid="hex",
                                   layout="visium", patients={"visium_mouse_cytassist": "mouse"},
                                   spots=2898, doi="https://doi.org/10.5281/zenodo.14881190",
                                   source="https://github.com/Perik-Zavodskii/CoexpressDeconvolve"),
    "visium_human_heart_subset": dict(key="visium_human_heart_subset", organism="human", n_genes=32,
                                      combat_key="slide_id", cell_min_counts=10,
                                      train_slides=("visium_human_heart_subset",), val_slides=(),
                                      abbreviation="HRT", tissue="heart", grid="hex", layout="visium",
                                      patients={"visium_human_heart_subset": "heart"}, spots=100,
                                      source="https://github.com/scverse/scanpy (test data)"),
}

#: Names accepted by :func:`fixture_dataset`: ``her2st`` (28 sections, 7 patients, split by
#: patient), ``her2st_<P>`` for each patient (consecutive sections), ``her2st_hne`` (C2, C3 train,
#: C4 val: the sections with H&E) and the two Visium slides.
FIXTURES: tuple[str, ...] = (*EXTRA_DATASETS, *_VISIUM_FIXTURES)


def fixture_dataset(name: str) -> DatasetInfo:
    """A real fixture (one of :data:`FIXTURES`) as a :class:`DatasetInfo` for :func:`load_dataset`.

    The her2st fixtures are the registry entries of the same name reading the local copy (no
    download); single-slide Visium fixtures put their slide in ``train``.

    Raises ``FileNotFoundError`` when the fixtures folder is absent.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if name not in FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; choose from {list(FIXTURES)}")
    base = fixtures_dir()
    if base is None:
        raise FileNotFoundError("the real fixtures folder (shared/data) was not found; set "
                                "SPARED_FIXTURES_DIR to its path")
    if name in EXTRA_DATASETS:
        info = EXTRA_DATASETS[name]
        return replace(info, root=str(base / (info.folder or info.key)))
    return DatasetInfo(**_VISIUM_FIXTURES[name], root=str(base))
