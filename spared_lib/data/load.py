"""``load_dataset``: all slides of a dataset stitched into one AnnData (the DESIGN.md contract).

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .paths import cache_dir
from .registry import DatasetInfo, get_dataset


def _resolve(key_or_info) -> DatasetInfo:
    if isinstance(key_or_info, DatasetInfo):
        return key_or_info
    text = str(key_or_info)
    candidate = Path(text)
    if (candidate / "dataset.json").is_file():
        return DatasetInfo.from_json(candidate / "dataset.json").with_root(candidate.resolve())
    if candidate.suffix == ".json" and candidate.is_file():
        return DatasetInfo.from_json(candidate)
    return get_dataset(text)


def dataset_root(info: DatasetInfo, data_dir: str | Path | None = None) -> Path:
    """The folder holding a dataset's slides: ``info.root``, else ``<data_dir>/<folder>``, where
    ``folder`` is the key unless several datasets share one folder (the her2st family).

    Defined in ``notebooks/01_spared_database.py``.
    """
    if info.root is not None:
        return Path(info.root)
    name = info.folder or info.key
    return Path(data_dir) / name if data_dir is not None else cache_dir() / name


def _read_slide(info: DatasetInfo, root: Path, slide_id: str, load_images: bool):
    from .readers import read_visium
    from .st import read_st

    if info.layout == "st":
        return read_st(root, slide_id, organism=info.organism, load_images=load_images,
                       require_image=info.requires_image)
    return read_visium(root / slide_id, library_id=slide_id, load_images=load_images)


def load_dataset(key_or_info, data_dir: str | Path | None = None, download: bool = True,
                 load_images: bool = True):
    """Load all slides of a dataset into one AnnData with raw counts.

    Parameters
    ----------
    key_or_info
        A registry key (see :func:`spared_lib.data.datasets_table`), a :class:`DatasetInfo`
        (e.g. from :func:`make_synthetic_dataset`), or a folder holding a ``dataset.json``.
    data_dir
        Where registry datasets are stored (default ``$SPARED_DATA_DIR`` or the user cache); each
        dataset lives in ``<data_dir>/<key>/<slide_id>/``.
    download
        Fetch missing files (pinned URLs, checksums). With ``False`` a missing slide is an error
        that names the folder to fill by hand.
    load_images
        Decode the hires/lowres images into ``uns['spatial'][slide]['images']`` (``False`` is
        faster when only counts and positions are needed; ``fullres_path`` is set either way).

    Returns
    -------
    AnnData
        ``X`` raw counts (CSR float32); ``obs``: ``slide_id`` (categorical), ``patient``, ``split``,
        ``array_row``, ``array_col``, ``in_tissue``, ``barcode``; ``obsm['spatial']`` full-res pixels;
        ``uns['spatial'][slide_id]``; ``uns['dataset']``; ``var`` indexed by Ensembl id with
        ``gene_symbol`` (genes common to all slides).

    Defined in ``notebooks/01_spared_database.py``.
    """
    info = _resolve(key_or_info)
    root = dataset_root(info, data_dir)
    _ensure_present(info, root, download)
    slides = [_read_labelled(info, root, slide_id, split, load_images) for slide_id, split in info.slides.items()]
    return _stitch(info, slides)


def _ensure_present(info: DatasetInfo, root: Path, download: bool) -> None:
    """Fetch what is missing of a registry dataset, or say exactly what is missing and where."""
    missing = {s: _slide_missing(info, root, s) for s in info.slides}
    missing = {s: m for s, m in missing.items() if m}
    if not missing:
        return
    if info.root is not None or not download:
        where = ("each slide's Space Ranger output in {root}/<slide_id>/" if info.layout == "visium"
                 else "the files listed above (the her2st layout)").format(root=root)
        raise FileNotFoundError(
            f"dataset {info.key!r}: slide(s) missing under {root}: "
            + "; ".join(f"{s} ({m})" for s, m in missing.items()) + ". "
            + ("Call with download=True, or place" if info.root is None else "Place")
            + f" {where}.")
    from .download import fetch_dataset

    fetch_dataset(info, root)


def _read_labelled(info: DatasetInfo, root: Path, slide_id: str, split: str, load_images: bool):
    """One slide with its dataset labels; spot names made unique across slides."""
    a = _read_slide(info, root, slide_id, load_images)
    a.obs["barcode"] = a.obs_names.astype(str)
    a.obs["slide_id"] = slide_id
    a.obs["patient"] = info.patient_of(slide_id)
    a.obs["split"] = split
    a.obs_names = slide_id + ":" + a.obs_names.astype(str)
    return a


def _stitch(info: DatasetInfo, slides: list):
    """The slides concatenated over the genes they share, with the contract's obs columns."""
    import anndata as ad

    genes = slides[0].var_names
    for a in slides[1:]:
        genes = genes.intersection(a.var_names, sort=False)
    if len(genes) == 0:
        raise ValueError(f"dataset {info.key!r}: the slides share no gene ids")
    adata = ad.concat([a[:, genes] for a in slides], join="inner", merge="first")
    adata.var = slides[0].var.loc[genes].copy()
    adata.obs["slide_id"] = pd.Categorical(adata.obs["slide_id"], categories=list(info.slides))
    adata.obs["split"] = pd.Categorical(adata.obs["split"], categories=["train", "val", "test"])
    adata.obs["patient"] = adata.obs["patient"].astype("category")
    adata.obs = adata.obs[["slide_id", "patient", "split", "array_row", "array_col", "in_tissue",
                           "barcode"]]
    adata.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=float)
    adata.uns["spatial"] = {s: a.uns["spatial"][s] for s, a in zip(info.slides, slides)}
    adata.uns["dataset"] = {"key": info.key, "organism": info.organism, "n_genes": info.n_genes,
                            "combat_key": info.combat_key,
                            "cell_min_counts": info.cell_min_counts,
                            "grid": slides[0].uns.get("grid", info.grid)}
    return adata


def _slide_missing(info: DatasetInfo, root: Path, slide_id: str) -> str:
    """What is missing of one slide ("" when nothing). her2st-layout slides: the registry's files of
    that slide where it lists them (a half-finished download is fetched again), else the counts,
    spot file and (where required) the JPEG. Visium: the slide's folder, which a user may fill by
    hand with Space Ranger's output (no archive needed)."""
    if info.layout == "st":
        listed = [f.target for f in info.files if f.slide == slide_id]
        if listed:
            return ", ".join(t for t in listed if not (root / t).exists())
        need = [f"ST-cnts/{slide_id}.tsv.gz", f"ST-spotfiles/{slide_id}_selection.tsv"]
        absent = [t for t in need if not (root / t).exists()]
        if info.requires_image and not list((root / "ST-imgs" / slide_id[0] / slide_id).glob("*.jpg")):
            absent.append(f"ST-imgs/{slide_id[0]}/{slide_id}/*.jpg")
        return ", ".join(absent)
    return "" if (root / slide_id).is_dir() else f"folder {slide_id}/"
