"""Readers for the raw layouts of SpaRED's sources: Space Ranger 1.x/2.x, legacy ST, ``.h5ad``.

Every reader returns one slide as an AnnData in the project's contract (DESIGN.md): raw counts in
``X`` (CSR float32), ``var`` indexed by Ensembl id with ``gene_symbol``, ``obs`` with ``array_row``,
``array_col``, ``in_tissue``, ``obsm['spatial']`` in full-resolution pixels (x, y), and
``uns['spatial'][library_id]`` with images, scale factors (including ``spot_spacing_fullres``
measured from the data) and ``fullres_path``. Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .genes import symbols_to_ids

POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres",
                    "pxl_col_in_fullres"]
FULLRES_SUFFIXES = (".tif", ".tiff", ".btf", ".jpg", ".jpeg", ".png")
# Legacy Spatial Transcriptomics arrays: 100 µm spots on a 200 µm centre-to-centre pitch
# (Ståhl et al. 2016). The pitch is measured from the data; only the ratio is a constant.
ST_DIAMETER_OVER_PITCH = 100.0 / 200.0


# --------------------------------------------------------------------------- validation helpers
def _check_counts(X: sp.spmatrix, source: Path) -> sp.csr_matrix:
    """Raw counts as CSR float32; errors on empty, NaN, negative or non-integer values."""
    X = sp.csr_matrix(X, dtype=np.float32)
    if X.shape[0] == 0 or X.shape[1] == 0 or X.nnz == 0 or not X.data.any():
        raise ValueError(f"{source}: the count matrix is empty (shape {X.shape}, {X.nnz} non-zeros)")
    if not np.isfinite(X.data).all():
        raise ValueError(f"{source}: the count matrix holds NaN or infinite values")
    if (X.data < 0).any():
        raise ValueError(f"{source}: the count matrix holds negative values "
                         f"(min {X.data.min():g}); raw counts are expected")
    if not np.array_equal(X.data, np.round(X.data)):
        raise ValueError(f"{source}: the count matrix holds non-integer values; raw counts are "
                         "expected (normalised data cannot be re-processed like SpaRED)")
    X.eliminate_zeros()
    return X


def _check_unique(names: pd.Index, what: str, source: Path) -> None:
    dup = names[names.duplicated()]
    if len(dup):
        raise ValueError(f"{source}: {len(dup)} duplicate {what}, e.g. {list(dup[:3])}")


def _numeric(frame: pd.DataFrame, columns: list[str], source: Path) -> pd.DataFrame:
    """Columns converted to numbers; errors name the file, the column and an offending row."""
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            first = frame.index[bad.to_numpy()][0]
            raise ValueError(f"{source}: column {col!r} has {int(bad.sum())} missing or "
                             f"non-numeric values (first at {first!r}: {frame.loc[first, col]!r})")
        frame[col] = values
    return frame


def spot_spacing(array_rc: np.ndarray, pixel_xy: np.ndarray, grid: str) -> tuple[float, np.ndarray]:
    """Centre-to-centre distance of neighbouring spots in pixels, fitted from the data.

    Fits the affine map from array coordinates (row, col) to pixels by least squares over all
    given spots, then measures the step to a neighbour: ``(0, 2)`` on the Visium hex grid (array
    columns advance by 2 between neighbours in one row), ``(0, 1)`` on a square grid.

    Returns the spacing and the 2 x 2 linear part of the fit (pixels per array unit).

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


def _fill_symbols(var: pd.DataFrame) -> None:
    """Where a source repeats the id as its symbol, take the symbol from the GENCODE table."""
    from .genes import gene_table

    for organism, prefix in (("human", "ENSG0"), ("mouse", "ENSMUSG0")):
        todo = var.index.str.startswith(prefix) & (var["gene_symbol"].to_numpy() == var.index.to_numpy())
        if todo.any():
            table = gene_table(organism)["gene_symbol"]
            found = table.reindex(var.index[todo])
            var.loc[var.index[todo], "gene_symbol"] = found.fillna(pd.Series(var.index[todo],
                                                                             index=var.index[todo]))


def open_image(path: str | Path):
    """Open a (possibly very large, trusted) histology image with PIL.

    Whole-slide H&E images exceed PIL's decompression-bomb limit (~89 Mpx); the images come from
    the dataset's own files, so the limit is lifted for this call only.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old
    return img


def _read_image(path: Path) -> np.ndarray:
    with open_image(path) as img:
        return np.asarray(img.convert("RGB"))


# --------------------------------------------------------------------------- Space Ranger
def read_positions(path: str | Path) -> pd.DataFrame:
    """A Space Ranger spot-position table (1.x without header or 2.x with), indexed by barcode.

    Validates the columns, duplicate barcodes and numeric coordinates.

    Defined in ``notebooks/01_spared_database.py``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"spot positions not found: {path}")
    first = path.open().readline()
    has_header = first.split(",")[0].strip().lower() == "barcode"
    table = pd.read_csv(path, header=0 if has_header else None, dtype=str, keep_default_na=False,
                        na_values=[""])
    if table.shape[1] != 6:
        raise ValueError(f"{path}: expected 6 columns {POSITION_COLUMNS}, found {table.shape[1]}")
    table.columns = POSITION_COLUMNS
    table = table.set_index("barcode")
    _check_unique(table.index, "barcodes", path)
    table = _numeric(table, POSITION_COLUMNS[1:], path)
    table["in_tissue"] = table["in_tissue"].astype(bool)
    table[["array_row", "array_col"]] = table[["array_row", "array_col"]].astype(np.int64)
    return table


def _find_fullres(folder: Path) -> Path | None:
    candidates = sorted(p for p in folder.iterdir()
                        if p.is_file() and p.suffix.lower() in FULLRES_SUFFIXES)
    return candidates[0] if candidates else None


def _read_10x_h5(path: Path):
    """(spots x genes CSR, barcodes, gene ids, symbols, feature types) from a 10x HDF5 (v3)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ValueError(f"{path}: not a Cell Ranger/Space Ranger v3 HDF5 file (no 'matrix' group)")
        m = f["matrix"]
        n_genes, n_cells = m["shape"][()]
        X = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]),
                          shape=(n_genes, n_cells)).T
        def dec(a):
            return a.astype(str)

        barcodes = dec(m["barcodes"][()])
        feats = m["features"]
        ids, names = dec(feats["id"][()]), dec(feats["name"][()])
        types = dec(feats["feature_type"][()]) if "feature_type" in feats else np.full(len(ids), "Gene Expression")
    return X, barcodes, ids, names, types


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
    X = sp.csr_matrix(scipy.io.mmread(files["matrix.mtx"])).T
    feats = pd.read_csv(files["features.tsv"], sep="\t", header=None, dtype=str)
    barcodes = pd.read_csv(files["barcodes.tsv"], sep="\t", header=None, dtype=str)[0].to_numpy()
    types = feats[2].to_numpy() if feats.shape[1] > 2 else np.full(len(feats), "Gene Expression")
    if X.shape != (len(barcodes), len(feats)):
        raise ValueError(f"{files['matrix.mtx']}: shape {X.shape[::-1]} (genes x spots) does not match "
                         f"{len(feats)} features and {len(barcodes)} barcodes")
    return X, barcodes, feats[0].to_numpy(), feats[1].to_numpy(), types


def _read_counts_10x(folder: Path, count_file: str | None):
    # Own small readers instead of scanpy's: importing scanpy costs seconds, which would dominate
    # loading a dataset; the formats are simple and fixed.
    h5 = folder / (count_file or "filtered_feature_bc_matrix.h5")
    mtx = folder / (count_file or "filtered_feature_bc_matrix")
    if h5.is_file():
        X, barcodes, ids, names, types = _read_10x_h5(h5)
        source = h5
    elif mtx.is_dir():
        X, barcodes, ids, names, types = _read_10x_mtx(mtx)
        source = mtx
    else:
        raise FileNotFoundError(f"{folder}: no counts found (expected filtered_feature_bc_matrix.h5 "
                                "or a filtered_feature_bc_matrix/ folder)")
    gex = types == "Gene Expression"
    X = X.tocsc()[:, gex] if not gex.all() else X
    var = pd.DataFrame({"gene_symbol": names[gex].astype(str)},
                       index=pd.Index(ids[gex].astype(str)).str.replace(r"\.\d+$", "", regex=True))
    var.index.name = None
    _fill_symbols(var)
    barcodes = pd.Index(barcodes.astype(str))
    _check_unique(barcodes, "barcodes", source)
    _check_unique(var.index, "gene ids", source)
    X = _check_counts(X, source)
    return X, barcodes, var, source


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
    error; positions without counts (off-tissue) are dropped.

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
    sf_file = spatial / "scalefactors_json.json"
    if not sf_file.exists():
        raise FileNotFoundError(f"scale factors not found: {sf_file}")
    X, barcodes, var, count_source = _read_counts_10x(folder, count_file)
    positions = read_positions(pos_file)
    missing = barcodes.difference(positions.index)
    if len(missing):
        raise ValueError(f"{count_source}: {len(missing)} of {len(barcodes)} barcodes have no row in "
                         f"{pos_file} (e.g. {list(missing[:3])}); counts and positions do not match")
    scalefactors = json.loads(sf_file.read_text())
    if "spot_diameter_fullres" not in scalefactors:
        raise ValueError(f"{sf_file}: no spot_diameter_fullres")
    spacing, _ = spot_spacing(positions[["array_row", "array_col"]].to_numpy(),
                              positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(), "hex")
    scalefactors["spot_spacing_fullres"] = spacing

    images = {}
    for res in ("hires", "lowres"):
        png = spatial / f"tissue_{res}_image.png"
        if png.exists() and load_images:
            images[res] = _read_image(png)
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

    pos = positions.loc[barcodes]
    obs = pd.DataFrame({"array_row": pos["array_row"].to_numpy(),
                        "array_col": pos["array_col"].to_numpy(),
                        "in_tissue": pos["in_tissue"].to_numpy()}, index=barcodes)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    library_id = library_id or folder.name
    adata.uns["spatial"] = {library_id: {
        "images": images, "scalefactors": scalefactors,
        "fullres_path": None if fullres is None else str(fullres),
        "metadata": {"layout": "spaceranger_2" if pos_file.name == "tissue_positions.csv"
                     else "spaceranger_1", "source": str(folder)},
    }}
    adata.uns["grid"] = "hex"
    return adata


# --------------------------------------------------------------------------- legacy ST (her2st)
def read_st(path: str | Path, sample: str, organism: str = "human", load_images: bool = True,
            hires_max_px: int = 2000, lowres_max_px: int = 600):
    """Read one legacy Spatial Transcriptomics section in the her2st layout.

    Files: ``ST-cnts/<sample>.tsv.gz`` (rows ``"{x}x{y}"``, columns gene symbols),
    ``ST-spotfiles/<sample>_selection.tsv`` (x, y, new_x, new_y, pixel_x, pixel_y, selected) and
    the full-resolution H&E ``ST-imgs/<patient>/<sample>/*.jpg``. Symbols are mapped to Ensembl ids
    through the GENCODE table (unmapped symbols are dropped; counts of symbols sharing an id are
    summed). The grid is square; the pitch is fitted from the spot file and the spot diameter is
    half the pitch (100 µm spots, 200 µm apart).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import anndata as ad

    root = Path(path)
    counts_file = root / "ST-cnts" / f"{sample}.tsv.gz"
    spots_file = root / "ST-spotfiles" / f"{sample}_selection.tsv"
    image_dir = root / "ST-imgs" / sample[0] / sample
    for f in (counts_file, spots_file):
        if not f.exists():
            raise FileNotFoundError(f"her2st section {sample!r}: file not found: {f}")
    images = sorted(image_dir.glob("*.jpg")) if image_dir.is_dir() else []
    if not images:
        raise FileNotFoundError(f"her2st section {sample!r}: no full-resolution JPEG in {image_dir}")

    counts = pd.read_csv(counts_file, sep="\t", index_col=0)
    _check_unique(counts.index, "spots", counts_file)
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"{counts_file}: the count matrix is empty (shape {counts.shape})")
    try:
        values = counts.to_numpy(dtype=np.float32)
    except ValueError as err:
        raise ValueError(f"{counts_file}: non-numeric counts ({err})") from err
    spots = pd.read_csv(spots_file, sep="\t")
    spots = _numeric(spots, ["x", "y", "pixel_x", "pixel_y", "selected"], spots_file)
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    _check_unique(spots.index, "spot coordinates", spots_file)
    missing = counts.index.difference(spots.index)
    if len(missing):
        raise ValueError(f"{counts_file}: {len(missing)} spots have no row in {spots_file} "
                         f"(e.g. {list(missing[:3])}); counts and positions do not match")

    ids = symbols_to_ids(counts.columns.astype(str), organism)
    keep = np.array([i is not None for i in ids])
    ids_kept = pd.Index(ids[keep].astype(str))
    # Sum columns that map to one id with a sparse (genes x ids) aggregation matrix.
    uniq, inverse = np.unique(ids_kept, return_inverse=True)
    agg = sp.csr_matrix((np.ones(len(inverse), np.float32), (np.arange(len(inverse)), inverse)),
                        shape=(len(inverse), len(uniq)))
    X = _check_counts(sp.csr_matrix(values[:, keep]) @ agg, counts_file)
    first_symbol = pd.Series(counts.columns[keep].astype(str)).groupby(inverse).first()
    var = pd.DataFrame({"gene_symbol": first_symbol.to_numpy()}, index=pd.Index(uniq, name=None))

    pos = spots.loc[counts.index]
    obs = pd.DataFrame({"array_row": pos["y"].astype(np.int64).to_numpy(),
                        "array_col": pos["x"].astype(np.int64).to_numpy(),
                        "in_tissue": pos["selected"].astype(bool).to_numpy()},
                       index=counts.index.astype(str))
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = pos[["pixel_x", "pixel_y"]].to_numpy(float)
    # The fit uses the sub-spot array coordinates the ST pipeline detected (new_x/new_y) where
    # present: the printed array is slightly warped, the integer indices are nominal.
    fit_cols = ["new_y", "new_x"] if {"new_x", "new_y"} <= set(spots.columns) else ["y", "x"]
    spots = _numeric(spots, fit_cols, spots_file)
    spacing, _ = spot_spacing(spots[fit_cols].to_numpy(), spots[["pixel_x", "pixel_y"]].to_numpy(),
                              "square")
    scalefactors = {"spot_diameter_fullres": spacing * ST_DIAMETER_OVER_PITCH,
                    "spot_spacing_fullres": spacing}
    imgs = {}
    if load_images:
        imgs, scales = _downscaled_jpeg(images[0], hires_max_px, lowres_max_px)
        scalefactors.update(scales)
    adata.uns["spatial"] = {sample: {
        "images": imgs, "scalefactors": scalefactors, "fullres_path": str(images[0]),
        "metadata": {"layout": "her2st", "source": str(root),
                     "n_symbols": int(counts.shape[1]), "n_symbols_mapped": int(keep.sum())},
    }}
    adata.uns["grid"] = "square"
    return adata


def _downscaled_jpeg(path: Path, hires_max_px: int, lowres_max_px: int):
    """hires/lowres copies of a large JPEG, decoded at reduced size (JPEG draft mode is fast)."""
    from PIL import Image

    images, scales = {}, {}
    with open_image(path) as img:
        full_w, full_h = img.size
        img.draft("RGB", (hires_max_px, hires_max_px))
        hires = img.convert("RGB")
    for name, max_px in (("hires", hires_max_px), ("lowres", lowres_max_px)):
        scale = max_px / max(full_w, full_h)
        size = (max(1, round(full_w * scale)), max(1, round(full_h * scale)))
        images[name] = np.asarray(hires.resize(size, Image.Resampling.LANCZOS))
        scales[f"tissue_{name}_scalef"] = size[0] / full_w
    return images, scales


# --------------------------------------------------------------------------- h5ad
def read_h5ad(path: str | Path):
    """Read an ``.h5ad`` written by this project (or one following DESIGN.md) and check it.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import anndata as ad

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"h5ad file not found: {path}")
    adata = ad.read_h5ad(path)
    if "spatial" not in adata.obsm:
        raise ValueError(f"{path}: obsm['spatial'] is missing (not a spatial dataset)")
    coords = np.asarray(adata.obsm["spatial"], dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2 or not np.isfinite(coords).all():
        raise ValueError(f"{path}: obsm['spatial'] must be finite (n, 2) coordinates")
    adata.X = _check_counts(adata.X, path)
    return adata
