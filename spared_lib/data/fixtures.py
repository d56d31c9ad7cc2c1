"""The real fixtures in ``shared/data`` described as datasets ``load_dataset`` understands.

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

from .paths import fixtures_dir
from .registry import DatasetInfo

_FIXTURES = {
    # her2st patient C: three consecutive legacy-ST sections (square grid, full-res H&E).
    "her2st": dict(key="her2st_patient_c", organism="human", n_genes=32, combat_key="slide_id",
                   cell_min_counts=10, train_slides=("C2", "C3"), val_slides=("C4",),
                   abbreviation="HER2ST-C", tissue="breast cancer (HER2+)", grid="square",
                   layout="st", patients={"C2": "C", "C3": "C", "C4": "C"},
                   doi="https://doi.org/10.1038/s41467-021-26271-2",
                   source="https://github.com/almaan/her2st"),
    "visium_mouse_cytassist": dict(key="visium_mouse_cytassist", organism="mouse", n_genes=128,
                                   combat_key="slide_id", cell_min_counts=10, train_slides=("visium_mouse_cytassist",),
                                   val_slides=(), abbreviation="CYT",
                                   tissue="mouse (CytAssist)", grid="hex", layout="visium",
                                   patients={"visium_mouse_cytassist": "mouse"},
                                   doi="https://doi.org/10.5281/zenodo.14881190"),
    "visium_human_heart_subset": dict(key="visium_human_heart_subset", organism="human", n_genes=32,
                                      combat_key="slide_id", cell_min_counts=10, train_slides=("visium_human_heart_subset",),
                                      val_slides=(), abbreviation="HRT",
                                      tissue="heart", grid="hex", layout="visium",
                                      patients={"visium_human_heart_subset": "heart"}),
}


def fixture_dataset(name: str) -> DatasetInfo:
    """A real fixture (``her2st``, ``visium_mouse_cytassist``, ``visium_human_heart_subset``) as a
    :class:`DatasetInfo` for :func:`load_dataset`. Single-slide fixtures put their slide in ``train``.

    Raises ``FileNotFoundError`` when the fixtures folder is absent.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if name not in _FIXTURES:
        raise KeyError(f"unknown fixture {name!r}; choose from {sorted(_FIXTURES)}")
    base = fixtures_dir()
    if base is None:
        raise FileNotFoundError("the real fixtures folder (shared/data) was not found; set "
                                "SPARED_FIXTURES_DIR to its path")
    spec = dict(_FIXTURES[name])
    root = base / name if spec["layout"] == "st" else base
    return DatasetInfo(**spec, root=str(root))
