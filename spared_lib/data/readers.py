"""Readers for the raw layouts of SpaRED's sources: Space Ranger 1.x/2.x and ``.h5ad`` (legacy ST,
the her2st layout, is in ``st.py``).

Every reader returns one slide as an AnnData in the project's contract (DESIGN.md): raw counts in
``X`` (CSR float32), ``var`` indexed by Ensembl id with ``gene_symbol``, ``obs`` with ``array_row``,
``array_col``, ``in_tissue``, ``obsm['spatial']`` in full-resolution pixels (x, y), and
``uns['spatial'][library_id]`` with images, scale factors (including ``spot_spacing_fullres``
measured from the data) and ``fullres_path``. Every file is checked before it is trusted
(``checks.py``): a bad one raises :class:`~spared_lib.data.DataFileError` naming it and the
problem, and nothing is written anywhere. Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .checks import (DataFileError, check_counts, check_finite, check_flag, check_pixels,
                     check_unique, check_whole, check_within_image, looks_like, numeric_columns,
                     positive_number, reading)
from .genes import fill_symbols
from .images import TIFF_SUFFIXES, image_size, read_rgb, require_complete_tiff

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres"]
FULLRES_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")


def array_spot_spacing(array_rc: np.ndarray, pixel_xy: np.ndarray, grid: str) -> tuple[float, np.ndarray]:
    """Centre-to-centre distance of neighbouring spots in pixels, fitted from the data.

    Fits the affine map from array coordinates (row, col) to pixels by least squares over all
    given spots, then measures the step to a neighbour: ``(0, 2)`` on the Visium hex grid (array
    columns advance by 2 between neighbours in one row), ``(0, 1)`` on a square grid.

    Returns the spacing and the 2 x 2 linear part of the fit (pixels per array unit). The readers
    store it as ``scalefactors['spot_spacing_fullres']``; neighbour radii use
    :func:`spared_lib.preprocessing.spot_spacing`, the median nearest-spot distance of the spots
    actually present (the two agree on a full grid).

    Defined in ``notebooks/01_spared_database.py``.
    """
    rc = np.asarray(array_rc, dtype=float)
    xy = np.asarray(pixel_xy, dtype=float)
    if len(rc) < 3 or np.linalg.matrix_rank(np.c_[rc, np.ones(len(rc))]) < 3:
        raise ValueError("spot spacing needs at least 3 spots not on one line of the array")
    design = np.c_[rc, np.ones(len(rc))]
    coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
    linear = coef[:2].T  # pixel (x, y) per unit of (row, col)
    step = np.array([0.0, 2.0]) if grid == "hex" else np.array([0.0, 1.0])
    return float(np.linalg.norm(linear @ step)), linear


def fitted_spacing(array_rc, pixel_xy, grid: str, path) -> float:
    """:func:`array_spot_spacing` for a file's spots; a degenerate layout (all spots on one line, or
    pixel positions that do not follow the array) is an error naming the file."""
    try:
        spacing, _ = array_spot_spacing(array_rc, pixel_xy, grid)
    except ValueError as err:
        raise DataFileError(path, f"cannot fit the spot spacing: {err}") from err
    if not np.isfinite(spacing) or spacing <= 0:
        raise DataFileError(path, "the pixel coordinates do not follow the array coordinates "
                                  f"(fitted spot spacing {spacing:g} px)")
    return spacing


# --------------------------------------------------------------------------- Space Ranger
def _header_row(first_row: list[str]) -> bool:
    return bool({c.strip().strip('"').lower() for c in first_row} & set(POSITION_COLUMNS))


def read_positions(path: str | Path) -> pd.DataFrame:
    """A Space Ranger spot-position table indexed by barcode.

    Space Ranger 2.x writes a header: columns are then read **by name** (their order may differ);
    1.x files have none and follow the fixed order ``barcode, in_tissue, array_row, array_col,
    pxl_row_in_fullres, pxl_col_in_fullres``. Validates duplicate barcodes, numbers, finite
    pixel coordinates, whole non-negative array indices and 0/1 ``in_tissue``.

    Defined in ``notebooks/01_spared_database.py``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"spot positions not found: {path}")
    with reading(path, "the spot positions (CSV)"):
        table = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_values=[""])
    if len(table) == 0:
        raise DataFileError(path, "the spot positions table is empty")
    if _header_row(table.iloc[0].astype(str).tolist()):
        names = [str(c).strip().strip('"').lower() for c in table.iloc[0]]
        missing = [c for c in POSITION_COLUMNS if c not in names]
        if missing:
            raise DataFileError(path, f"the header lacks column(s) {missing}; found {names}")
        table = table.iloc[1:].set_axis(names, axis=1)[POSITION_COLUMNS]
    elif table.shape[1] != 6:
        hint = looks_like(path)
        raise DataFileError(path, f"expected 6 columns {POSITION_COLUMNS} (no header row), found "
                                  f"{table.shape[1]}" + (f"; {hint}" if hint else ""))
    else:
        table.columns = POSITION_COLUMNS
    table = table.set_index("barcode")
    check_unique(table.index, "barcodes", path)
    table = numeric_columns(table, POSITION_COLUMNS[1:], path)
    index = table.index
    check_flag(table["in_tissue"].to_numpy(float), "in_tissue", path, index)
    for col in ("array_row", "array_col"):
        check_whole(table[col].to_numpy(float), col, path, index)
    for col in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        check_finite(table[col].to_numpy(float), col, path, index)
    table["in_tissue"] = table["in_tissue"].astype(bool)
    table[["array_row", "array_col"]] = table[["array_row", "array_col"]].astype(np.int64)
    return table


def _find_fullres(folder: Path) -> Path | None:
    candidates = sorted(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES)
    return candidates[0] if candidates else None


def _csc_from_parts(data, indices, indptr, shape, path: Path) -> sp.csc_matrix:
    """A genes x spots CSC matrix from its arrays, after checking what scipy does not: lengths,
    monotone pointers, row indices in range and no duplicate (gene, spot) entries."""
    shape = np.asarray(shape).ravel()
    if shape.size != 2 or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise DataFileError(path, f"matrix/shape must be two non-negative integers, found {shape.tolist()}")
    n_genes, n_cells = (int(v) for v in shape)
    data, indices, indptr = np.asarray(data), np.asarray(indices), np.asarray(indptr)
    if indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
        raise DataFileError(path, "matrix/indices and matrix/indptr must be integer arrays")
    if len(indptr) != n_cells + 1:
        raise DataFileError(path, f"matrix/indptr has {len(indptr)} entries; {n_cells} spots need {n_cells + 1}")
    if len(data) != len(indices):
        raise DataFileError(path, f"matrix/data ({len(data)}) and matrix/indices ({len(indices)}) differ in length")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise DataFileError(path, "matrix/indptr must start at 0, never decrease and end at the number "
                                  f"of entries ({len(indices)}); found {indptr[0]} .. {indptr[-1]}")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_genes):
        raise DataFileError(path, f"matrix/indices holds gene indices outside 0..{n_genes - 1} "
                                  f"(min {indices.min()}, max {indices.max()})")
    # Duplicates: within each spot the gene indices must strictly increase (Space Ranger writes
    # them sorted); only an unsorted file pays for the full check.
    step = np.diff(indices.astype(np.int64))
    inside = np.ones(len(step), bool)
    inside[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < len(indices))] - 1] = False
    if len(step) and (step[inside] <= 0).any():
        spot = np.repeat(np.arange(n_cells, dtype=np.int64), np.diff(indptr))
        pairs = spot * max(n_genes, 1) + indices
        if len(np.unique(pairs)) != len(pairs):
            raise DataFileError(path, "matrix/indices lists a gene twice for one spot")
    return sp.csc_matrix((data, indices, indptr), shape=(n_genes, n_cells))


def _read_10x_h5(path: Path):
    """(spots x genes CSR, barcodes, gene ids, symbols, feature types) from a 10x HDF5 (v3)."""
    import h5py

    if not h5py.is_hdf5(path):
        hint = looks_like(path)
        raise DataFileError(path, "not an HDF5 file (no HDF5 signature)" + (f"; {hint}" if hint else ""))
    with reading(path, "the 10x HDF5 counts"), h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise DataFileError(path, "not a Cell Ranger/Space Ranger v3 HDF5 file (no 'matrix' group)")
        m = f["matrix"]
        absent = [k for k in ("data", "indices", "indptr", "shape", "barcodes", "features") if k not in m]
        if absent:
            raise DataFileError(path, f"the 'matrix' group lacks {absent}")
        feats = m["features"]
        absent = [k for k in ("id", "name") if k not in feats]
        if absent:
            raise DataFileError(path, f"matrix/features lacks {absent}")
        parts = [m[k][()] for k in ("data", "indices", "indptr", "shape")]
        barcodes = m["barcodes"][()].astype(str)
        ids, names = feats["id"][()].astype(str), feats["name"][()].astype(str)
        types = (feats["feature_type"][()].astype(str) if "feature_type" in feats
                 else np.full(len(ids), "Gene Expression"))
    X = _csc_from_parts(*parts, path)
    n_genes, n_cells = X.shape
    if len(barcodes) != n_cells:
        raise DataFileError(path, f"matrix/barcodes has {len(barcodes)} entries; the matrix has {n_cells} spots")
    if not (len(ids) == len(names) == len(types) == n_genes):
        raise DataFileError(path, f"matrix/features has {len(ids)} ids, {len(names)} names and "
                                  f"{len(types)} types; the matrix has {n_genes} genes")
    return X.T.tocsr(), barcodes, ids, names, types


def _read_10x_mtx(folder: Path):
    """The same from a 10x ``matrix.mtx.gz`` / ``features.tsv.gz`` / ``barcodes.tsv.gz`` folder."""
    import scipy.io

    files = {n: folder / f"{n}.gz" if (folder / f"{n}.gz").exists() else folder / n
             for n in ("matrix.mtx", "features.tsv", "barcodes.tsv")}
    if not files["features.tsv"].exists() and (folder / "genes.tsv").exists():
        files["features.tsv"] = folder / "genes.tsv"
    for f in files.values():
        if not f.exists():
            raise FileNotFoundError(f"{folder}: missing {f.name}")
    with reading(files["matrix.mtx"], "the Matrix Market counts"):
        X = sp.csr_matrix(scipy.io.mmread(files["matrix.mtx"])).T.tocsr()
    with reading(files["features.tsv"], "the features table (TSV)"):
        feats = pd.read_csv(files["features.tsv"], sep="\t", header=None, dtype=str)
    with reading(files["barcodes.tsv"], "the barcodes (TSV)"):
        barcodes = pd.read_csv(files["barcodes.tsv"], sep="\t", header=None, dtype=str)[0].to_numpy()
    if feats.shape[1] < 2:
        raise DataFileError(files["features.tsv"], f"expected at least 2 columns (id, name), found {feats.shape[1]}")
    types = feats[2].to_numpy() if feats.shape[1] > 2 else np.full(len(feats), "Gene Expression")
    if X.shape != (len(barcodes), len(feats)):
        raise DataFileError(files["matrix.mtx"], f"shape {X.shape[::-1]} (genes x spots) does not match "
                                                 f"{len(feats)} features and {len(barcodes)} barcodes")
    sources = {"counts": files["matrix.mtx"], "barcodes": files["barcodes.tsv"], "genes": files["features.tsv"]}
    return X, barcodes, feats[0].to_numpy(), feats[1].to_numpy(), types, sources


def _read_counts_10x(folder: Path, count_file: str | None):
    # Own small readers instead of scanpy's: importing scanpy costs seconds, which would dominate
    # loading a dataset; the formats are simple and fixed.
    h5 = folder / (count_file or "filtered_feature_bc_matrix.h5")
    mtx = folder / (count_file or "filtered_feature_bc_matrix")
    if h5.is_file():
        X, barcodes, ids, names, types = _read_10x_h5(h5)
        sources = {"counts": h5, "barcodes": h5, "genes": h5}
    elif mtx.is_dir():
        X, barcodes, ids, names, types, sources = _read_10x_mtx(mtx)
    else:
        raise FileNotFoundError(f"{folder}: no counts found (expected filtered_feature_bc_matrix.h5 "
                                "or a filtered_feature_bc_matrix/ folder)")
    source = sources["counts"]
    gex = types == "Gene Expression"
    if not gex.any():
        raise DataFileError(sources["genes"], f"no 'Gene Expression' features (feature types: {sorted(set(types))[:5]})")
    X = X.tocsc()[:, gex] if not gex.all() else X
    var = pd.DataFrame({"gene_symbol": names[gex].astype(str)},
                       index=pd.Index(ids[gex].astype(str)).str.replace(r"\.\d+$", "", regex=True))
    var.index.name = None
    fill_symbols(var)
    barcodes = pd.Index(barcodes.astype(str))
    check_unique(barcodes, "barcodes", sources["barcodes"])
    check_unique(var.index, "gene ids", sources["genes"])
    X = check_counts(X, source)
    return X, barcodes, var, source


def read_scalefactors(path: Path) -> dict:
    """Space Ranger's ``scalefactors_json.json``: a JSON object whose ``spot_diameter_fullres``
    (required) and ``tissue_{hires,lowres}_scalef`` (where present) are positive numbers.

    Defined in ``notebooks/01_spared_database.py``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scale factors not found: {path}")
    with reading(path, "the scale factors (JSON)"):
        scalefactors = json.loads(path.read_text())
    if not isinstance(scalefactors, dict):
        raise DataFileError(path, f"expected a JSON object, found {type(scalefactors).__name__}")
    if "spot_diameter_fullres" not in scalefactors:
        raise DataFileError(path, "no spot_diameter_fullres")
    for key in ("spot_diameter_fullres", "tissue_hires_scalef", "tissue_lowres_scalef"):
        if key in scalefactors:
            scalefactors[key] = positive_number(scalefactors[key], key, path)
    return scalefactors


def _check_images(xy: np.ndarray, spatial: Path, scalefactors: dict, fullres: Path | None) -> None:
    """The spots must lie inside every image that comes with the slide (sizes from the headers)."""
    for res in ("hires", "lowres"):
        png = spatial / f"tissue_{res}_image.png"
        key = f"tissue_{res}_scalef"
        if png.exists() and key in scalefactors:
            check_within_image(xy, image_size(png), png, scalefactors[key], key)
    if fullres is not None:
        if fullres.suffix.lower() in TIFF_SUFFIXES:
            require_complete_tiff(fullres)  # patches are cut from it later: fail here, naming it
        check_within_image(xy, image_size(fullres), fullres, 1.0, "full resolution")


def read_visium(path: str | Path, count_file: str | None = None, library_id: str | None = None,
                load_images: bool = True, fullres_path: str | Path | None = None):
    """Read one Space Ranger output folder (1.x or 2.x layout) into the project's AnnData.

    Parameters
    ----------
    path
        The slide folder: counts as ``filtered_feature_bc_matrix.h5`` or a
        ``filtered_feature_bc_matrix/`` mtx folder, and ``spatial/`` with
        ``tissue_positions_list.csv`` (1.x, no header) or ``tissue_positions.csv`` (2.x, header),
        ``scalefactors_json.json`` and the hires/lowres PNGs.
    count_file
        Another counts file or folder name inside ``path``.
    library_id
        Key in ``uns['spatial']`` (default: the folder name).
    load_images
        Load the hires/lowres PNGs into ``uns['spatial'][library_id]['images']``.
    fullres_path
        The full-resolution image. Default: the first image file at the top of ``path``.

    Returns
    -------
    AnnData with raw counts, one slide. Spots in the counts but absent from the positions are an
    error; positions without counts (off-tissue) are dropped. The spots' pixel coordinates must
    be non-negative and inside every image of the slide.

    Raises
    ------
    FileNotFoundError
        A required file is missing (the message names it).
    DataFileError
        A file is unreadable or holds impossible values (the message names it and the problem).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import anndata as ad

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Visium folder not found: {folder}")
    spatial = folder / "spatial"
    pos_file = next((p for p in (spatial / "tissue_positions.csv",
                                 spatial / "tissue_positions_list.csv") if p.exists()), None)
    if pos_file is None:
        raise FileNotFoundError(f"{spatial}: no tissue_positions.csv (Space Ranger 2.x) or "
                                "tissue_positions_list.csv (1.x)")
    scalefactors = read_scalefactors(spatial / "scalefactors_json.json")
    X, barcodes, var, count_source = _read_counts_10x(folder, count_file)
    positions = read_positions(pos_file)
    missing = barcodes.difference(positions.index)
    if len(missing):
        raise DataFileError(count_source, f"{len(missing)} of {len(barcodes)} barcodes have no row in "
                                          f"{pos_file} (e.g. {list(missing[:3])}); counts and positions "
                                          "do not match")
    pos = positions.loc[barcodes]
    xy = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    check_pixels(xy, pos_file, barcodes)
    scalefactors["spot_spacing_fullres"] = fitted_spacing(
        positions[["array_row", "array_col"]].to_numpy(),
        positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(), "hex", pos_file)

    if fullres_path is not None:
        fullres = Path(fullres_path)
        if not fullres.exists():
            raise FileNotFoundError(f"full-resolution image not found: {fullres}")
    else:
        fullres = _find_fullres(folder)
    if not any((spatial / f"tissue_{r}_image.png").exists() for r in ("hires", "lowres")) \
            and fullres is None:
        raise FileNotFoundError(f"{folder}: no image (no spatial/tissue_hires_image.png, "
                                "tissue_lowres_image.png, nor a full-resolution image)")
    _check_images(xy, spatial, scalefactors, fullres)
    images = {res: read_rgb(spatial / f"tissue_{res}_image.png") for res in ("hires", "lowres")
              if load_images and (spatial / f"tissue_{res}_image.png").exists()}

    obs = pd.DataFrame({"array_row": pos["array_row"].to_numpy(),
                        "array_col": pos["array_col"].to_numpy(),
                        "in_tissue": pos["in_tissue"].to_numpy()}, index=barcodes)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    library_id = library_id or folder.name
    adata.uns["spatial"] = {library_id: {
        "images": images, "scalefactors": scalefactors,
        "fullres_path": None if fullres is None else str(fullres),
        "metadata": {"layout": "spaceranger_2" if pos_file.name == "tissue_positions.csv"
                     else "spaceranger_1", "source": str(folder)},
    }}
    adata.uns["grid"] = "hex"
    return adata


# --------------------------------------------------------------------------- h5ad
def read_h5ad(path: str | Path):
    """Read an ``.h5ad`` written by this project (or one following DESIGN.md) and check it.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"h5ad file not found: {path}")
    with reading(path, "the .h5ad file"):
        adata = ad.read_h5ad(path)
    if "spatial" not in adata.obsm:
        raise DataFileError(path, "obsm['spatial'] is missing (not a spatial dataset)")
    coords = np.asarray(adata.obsm["spatial"], dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise DataFileError(path, f"obsm['spatial'] must be (n, 2) coordinates, found shape {coords.shape}")
    check_pixels(coords, path, adata.obs_names, "obsm['spatial'] coordinates")
    adata.X = check_counts(adata.X, path)
    return adata
