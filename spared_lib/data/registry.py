"""The SpaRED registry: the 26 datasets as data the project owns.

``spared_lib/resources/datasets.csv`` holds one row per dataset (the paper's Table 1 plus the
slide splits) and ``dataset_files.csv`` the files to fetch for each (URL, where the file goes in the
dataset folder, sha256 where known, whether to unpack it). Introduced in
``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it comes from and where it goes in the dataset folder."""

    url: str
    target: str
    sha256: str | None = None
    unpack: str | None = None  # "zip", "tar" or None


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, read and describe one dataset.

    ``root`` is set for local datasets (the synthetic ones, or a user's folder); registry datasets
    leave it ``None`` and live in ``<data_dir>/<key>``. ``layout`` says how each slide is stored:
    ``'visium'`` (one Space Ranger folder per slide id) or ``'st'`` (the her2st layout).

    Defined in ``notebooks/01_spared_database.py``.
    """

    key: str
    organism: str
    n_genes: int
    combat_key: str
    cell_min_counts: int
    train_slides: tuple[str, ...]
    val_slides: tuple[str, ...]
    test_slides: tuple[str, ...] = ()
    abbreviation: str = ""
    tissue: str = ""
    grid: str = "hex"
    layout: str = "visium"
    patients: dict | None = None
    spots: int | None = None
    raw_missing: float | None = None
    processed_missing: float | None = None
    doi: str = ""
    source: str = ""
    files: tuple[RemoteFile, ...] = ()
    root: str | None = None

    @property
    def slides(self) -> dict[str, str]:
        """Slide id → split (``train``/``val``/``test``), in registry order."""
        out = {s: "train" for s in self.train_slides}
        out.update({s: "val" for s in self.val_slides})
        out.update({s: "test" for s in self.test_slides})
        return out

    def patient_of(self, slide_id: str) -> str:
        """The patient (donor) of a slide: explicit where given, else the capture-slide serial.

        SpaRED names slides ``<serial>_<area>`` and groups patients by the serial
        (e.g. ``V11L12-038_A1`` → ``V11L12-038``).
        """
        if self.patients and slide_id in self.patients:
            return str(self.patients[slide_id])
        return slide_id.split("_")[0]

    def to_json(self, path: str | Path) -> None:
        """Write this description as JSON (``load_dataset`` accepts the folder holding it)."""
        data = asdict(self)
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "DatasetInfo":
        """Read a description written by :meth:`to_json`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable dataset description ({err})") from err
        data["files"] = tuple(RemoteFile(**f) for f in data.get("files", ()))
        for name in ("train_slides", "val_slides", "test_slides"):
            data[name] = tuple(data.get(name, ()))
        return cls(**data)

    def with_root(self, root: str | Path) -> "DatasetInfo":
        """A copy pointing at a local folder."""
        return replace(self, root=str(root))


def _percent(text: str) -> float | None:
    text = str(text).strip()
    return float(text.rstrip("%")) / 100 if text else None


def _split(text) -> tuple[str, ...]:
    return tuple(s for s in str(text).split(";") if s) if isinstance(text, str) else ()


@lru_cache(maxsize=None)
def _read_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    pkg = resources.files("spared_lib.resources")
    with resources.as_file(pkg / "datasets.csv") as p:
        table = pd.read_csv(p, dtype=str, keep_default_na=False)
    with resources.as_file(pkg / "dataset_files.csv") as p:
        files = pd.read_csv(p, dtype=str, keep_default_na=False)
    return table, files


def _build() -> dict[str, DatasetInfo]:
    table, files = _read_tables()
    out = {}
    for row in table.to_dict("records"):
        own = files[files["key"] == row["key"]]
        out[row["key"]] = DatasetInfo(
            key=row["key"], organism=row["organism"], n_genes=int(row["n_genes"]),
            combat_key=row["combat_key"], cell_min_counts=int(row["cell_min_counts"]),
            train_slides=_split(row["train_slides"]), val_slides=_split(row["val_slides"]),
            test_slides=_split(row["test_slides"]), abbreviation=row["abbreviation"],
            tissue=row["tissue"], grid=row["grid"], spots=int(row["spots"]),
            raw_missing=_percent(row["raw_missing"]),
            processed_missing=_percent(row["processed_missing"]),
            doi="" if row["doi"] == "-" else row["doi"], source=row["source"],
            files=tuple(RemoteFile(url=f["url"], target=f["target"], sha256=f["sha256"] or None,
                                   unpack=f["unpack"] or None) for f in own.to_dict("records")),
        )
    return out


DATASETS: dict[str, DatasetInfo] = _build()


def get_dataset(key: str) -> DatasetInfo:
    """The registry entry of ``key``; a clear error lists the valid keys.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if key not in DATASETS:
        close = [k for k in DATASETS if key.lower() in k or k in key.lower()]
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown SpaRED dataset key {key!r}.{hint} Valid keys: {sorted(DATASETS)}")
    return DATASETS[key]


def datasets_table() -> pd.DataFrame:
    """The registry as a DataFrame indexed by key (one row per dataset; numbers as numbers).

    Columns: abbreviation, organism, tissue, n_genes, combat_key, cell_min_counts, the three
    split lists, n_slides, patients, spots, raw_missing and processed_missing (fractions), doi,
    source, n_files and n_hashed (files with a pinned sha256).

    Defined in ``notebooks/01_spared_database.py``.
    """
    rows = []
    for info in DATASETS.values():
        rows.append(dict(
            key=info.key, abbreviation=info.abbreviation, organism=info.organism,
            tissue=info.tissue, n_genes=info.n_genes, combat_key=info.combat_key,
            cell_min_counts=info.cell_min_counts, train_slides=";".join(info.train_slides),
            val_slides=";".join(info.val_slides), test_slides=";".join(info.test_slides),
            n_slides=len(info.slides),
            patients=len({info.patient_of(s) for s in info.slides}), spots=info.spots,
            raw_missing=info.raw_missing, processed_missing=info.processed_missing,
            doi=info.doi, source=info.source, n_files=len(info.files),
            n_hashed=sum(f.sha256 is not None for f in info.files),
        ))
    return pd.DataFrame(rows).set_index("key")
