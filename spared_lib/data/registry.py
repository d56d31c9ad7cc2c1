"""The dataset registry: SpaRED's 26 datasets, and her2st, as data the project owns.

``spared_lib/resources/datasets.csv`` holds one row per dataset (the paper's Table 1 plus the
slide splits; column ``collection`` says ``SpaRED`` or ``her2st``) and ``dataset_files.csv`` the
files to fetch for each (URL, where the file goes in the dataset folder, sha256 where known and where
that hash comes from, a fallback URL, whether to unpack it). Introduced in
``notebooks/01_spared_database.py``.

her2st (Andersson et al. 2021) is not one of SpaRED's datasets. It is here because the book's real
fixtures come from it: ``her2st`` (28 sections of 7 patients, split by patient), ``her2st_<P>``
(one patient, consecutive sections) and ``her2st_hne`` (the three sections with H&E). All of them
share one download folder, ``<data_dir>/her2st``, and take their files from the ``her2st`` rows of
``dataset_files.csv`` (the files of their own slides only).
"""
from __future__ import annotations

import dataclasses
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
    slide: str | None = None  # the slide the file belongs to (None: the whole dataset, e.g. an archive)
    fallback_url: str | None = None  # a second source serving the same bytes (squidpy's mirror)
    sha256_source: str = ""  # where the pinned hash comes from ("" when there is none)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, read and describe one dataset.

    ``root`` is set for local datasets (the synthetic ones, or a user's folder); registry datasets
    leave it ``None`` and live in ``<data_dir>/<key>``. ``layout`` says how each slide is stored:
    ``'visium'`` (one Space Ranger folder per slide id) or ``'st'`` (the her2st layout).
    ``folder`` names the download folder when several datasets share one (the her2st family;
    ``"."`` puts the slide folders straight into the data folder, as ``shared/data`` does);
    ``requires_image`` says whether every slide must have its full-resolution H&E (``False`` for
    her2st's counts-only sections). ``collection`` is ``'SpaRED'`` for the paper's 26 datasets.

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
    collection: str = ""
    folder: str | None = None
    requires_image: bool = True

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
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a readable dataset description (a JSON object expected)")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.name not in data)
        if unknown or missing:
            raise ValueError(f"{path}: not a readable dataset description ("
                             + "; ".join(([f"unknown field(s) {unknown}"] if unknown else [])
                                         + ([f"missing field(s) {missing}"] if missing else [])) + ")")
        try:
            data["files"] = tuple(RemoteFile(**f) for f in data.get("files", ()))
        except TypeError as err:
            raise ValueError(f"{path}: not a readable dataset description (files: {err})") from err
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


def _patients(text: str) -> dict | None:
    """``"A1=A;A2=A"`` -> ``{"A1": "A", "A2": "A"}``; empty -> None (the serial rule applies)."""
    pairs = [item.split("=", 1) for item in _split(text)]
    return {slide: patient for slide, patient in pairs} or None


def _remote(f: dict) -> RemoteFile:
    return RemoteFile(url=f["url"], target=f["target"], sha256=f["sha256"].lower() or None,
                      unpack=f["unpack"] or None, slide=f["slide"] or None,
                      fallback_url=f["fallback_url"] or None, sha256_source=f["sha256_source"])


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
        slides = {*_split(row["train_slides"]), *_split(row["val_slides"]), *_split(row["test_slides"])}
        # A dataset sharing another's folder takes that folder's files of its own slides
        # (folder "." = the data folder itself, as shared/data lays out the Visium fixtures).
        owner = row["folder"] if row["folder"] not in ("", ".") else row["key"]
        own = files[(files["key"] == owner)
                    & ((files["slide"] == "") | files["slide"].isin(slides))]
        out[row["key"]] = DatasetInfo(
            key=row["key"], organism=row["organism"], n_genes=int(row["n_genes"]),
            combat_key=row["combat_key"], cell_min_counts=int(row["cell_min_counts"]),
            train_slides=_split(row["train_slides"]), val_slides=_split(row["val_slides"]),
            test_slides=_split(row["test_slides"]), abbreviation=row["abbreviation"],
            tissue=row["tissue"], grid=row["grid"], spots=int(row["spots"]),
            raw_missing=_percent(row["raw_missing"]),
            processed_missing=_percent(row["processed_missing"]),
            doi="" if row["doi"] == "-" else row["doi"], source=row["source"],
            files=tuple(_remote(f) for f in own.to_dict("records")),
            patients=_patients(row["slide_patients"]), collection=row["collection"],
            folder=row["folder"] or None, requires_image=row["requires_image"] == "yes",
            # Legacy ST data (square grid) come in the her2st file layout, Visium in Space Ranger's.
            layout="st" if row["grid"] == "square" else "visium",
        )
    return out


_ALL = _build()
#: SpaRED's 26 datasets (the paper's Table 1), by key.
DATASETS: dict[str, DatasetInfo] = {k: v for k, v in _ALL.items() if v.collection == "SpaRED"}
#: Public datasets beyond SpaRED that the book uses: the her2st family (see the module docstring).
EXTRA_DATASETS: dict[str, DatasetInfo] = {k: v for k, v in _ALL.items() if v.collection != "SpaRED"}


def get_dataset(key: str) -> DatasetInfo:
    """The registry entry of ``key``; a clear error lists the valid keys.

    Defined in ``notebooks/01_spared_database.py``.
    """
    if key not in _ALL:
        close = [k for k in _ALL if key.lower() in k or k in key.lower()]
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"unknown SpaRED dataset key {key!r}.{hint} Valid keys: {sorted(_ALL)}")
    return _ALL[key]


def integrity(info: DatasetInfo) -> str:
    """How a dataset's downloads are checked: ``'pinned'`` (every file has a sha256 in the
    registry), ``'trust on first use'`` (none has: the hash of the first download is recorded
    beside the file and checked on every later use) or ``'partly pinned'``.

    Defined in ``notebooks/01_spared_database.py``.
    """
    pinned = sum(f.sha256 is not None for f in info.files)
    if info.files and pinned == len(info.files):
        return "pinned"
    return "trust on first use" if pinned == 0 else "partly pinned"


def datasets_table(collection: str = "SpaRED") -> pd.DataFrame:
    """The registry as a DataFrame indexed by key (one row per dataset; numbers as numbers).

    ``collection``: ``'SpaRED'`` (the paper's 26, default), ``'her2st'``, ``'Visium'`` (the two
    Visium fixtures) or ``'all'``.
    Columns: collection, abbreviation, organism, tissue, n_genes, combat_key, cell_min_counts, the three
    split lists, n_slides, patients, spots, raw_missing and processed_missing (fractions), doi,
    source, n_files, n_hashed (files with a pinned sha256) and integrity (:func:`integrity`).

    Defined in ``notebooks/01_spared_database.py``.
    """
    chosen = [i for i in _ALL.values() if collection in ("all", i.collection)]
    if not chosen:
        known = sorted({i.collection for i in _ALL.values()})
        raise ValueError(f"unknown collection {collection!r}; choose from {known} or 'all'")
    rows = []
    for info in chosen:
        rows.append(dict(
            key=info.key, collection=info.collection, abbreviation=info.abbreviation, organism=info.organism,
            tissue=info.tissue, n_genes=info.n_genes, combat_key=info.combat_key,
            cell_min_counts=info.cell_min_counts, train_slides=";".join(info.train_slides),
            val_slides=";".join(info.val_slides), test_slides=";".join(info.test_slides),
            n_slides=len(info.slides),
            patients=len({info.patient_of(s) for s in info.slides}), spots=info.spots,
            raw_missing=info.raw_missing, processed_missing=info.processed_missing,
            doi=info.doi, source=info.source, n_files=len(info.files),
            n_hashed=sum(f.sha256 is not None for f in info.files), integrity=integrity(info),
        ))
    return pd.DataFrame(rows).set_index("key")
