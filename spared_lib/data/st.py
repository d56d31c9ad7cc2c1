"""Reader for legacy Spatial Transcriptomics sections in the her2st layout (Andersson et al. 2021).

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .checks import (DataFileError, check_counts, check_flag, check_pixels, check_unique,
                     check_whole, check_within_image, numeric_columns, reading, require_columns)
from .genes import GENE_TABLES, symbols_to_ids
from .images import downscaled, image_size
from .readers import fitted_spacing

# Legacy Spatial Transcriptomics arrays: 100 µm spots on a 200 µm centre-to-centre pitch
# (Ståhl et al. 2016). The pitch is measured from the data; only the ratio is a constant.
ST_DIAMETER_OVER_PITCH = 100.0 / 200.0
SPOT_COLUMNS = ["x", "y", "pixel_x", "pixel_y", "selected"]
# Below this share of symbols found in the organism's GENCODE table the organism is wrong (her2st
# maps > 90 %); reading on would silently drop most genes.
MIN_MAPPED = 0.5


def st_files(root: str | Path, sample: str) -> tuple[Path, Path, Path]:
    """(counts, spot file, image folder) of a section in the her2st layout."""
    root = Path(root)
    return (root / "ST-cnts" / f"{sample}.tsv.gz", root / "ST-spotfiles" / f"{sample}_selection.tsv",
            root / "ST-imgs" / sample[:1] / sample)


def _plain_integer_table(raw: bytes):
    """(spot names, symbols, CSR counts) of a TSV holding only non-negative integers, parsed with
    vectorised NumPy over the bytes (several times faster than pandas on her2st's ~15,000 columns);
    ``None`` for anything else (floats, signs, NaN, ragged rows, CRLF), which pandas then reads so
    that the checks can say what is wrong."""
    header, _, body = raw.partition(b"\n")
    body = body.rstrip(b"\n")
    if not body or b"\r" in raw:
        return None
    symbols = header.decode("utf-8").split("\t")[1:]
    per_row = len(symbols) + 1
    buf = np.frombuffer(body, np.uint8)
    is_sep = (buf == 9) | (buf == 10)
    ends = np.append(np.flatnonzero(is_sep), len(buf))  # one past each cell's last byte
    if len(ends) % per_row:
        return None
    E = ends.reshape(-1, per_row)
    if (buf[E[:-1, -1]] != 10).any() or (buf[E[:, :-1]] != 9).any():
        return None
    S = np.empty_like(E)
    S.ravel()[0], S.ravel()[1:] = 0, ends[:-1] + 1
    # Every byte outside the first (spot name) column and the separators must be a digit.
    mark = np.zeros(len(buf) + 1, np.int8)
    mark[S[:, 0]] += 1
    mark[E[:, 0]] -= 1
    in_name = np.cumsum(mark[:-1], dtype=np.int8).astype(bool)
    if not (((buf >= 48) & (buf <= 57)) | is_sep | in_name).all():
        return None
    start, length = S[:, 1:], E[:, 1:] - S[:, 1:]
    if (length == 0).any() or length.max() > 9:
        return None
    rows, cols = np.nonzero(~((length == 1) & (buf[start] == 48)))  # cells other than "0"
    first, n_digits = start[rows, cols], length[rows, cols]
    values = np.zeros(len(first), np.int64)
    for k in range(int(n_digits.max()) if len(first) else 0):  # at most 9 digit positions
        digit = buf[np.minimum(first + k, len(buf) - 1)].astype(np.int64) - 48
        values = np.where(k < n_digits, values * 10 + digit, values)
    width = int((E[:, 0] - S[:, 0]).max())
    at = S[:, :1] + np.arange(width)
    chars = np.where(at < E[:, :1], buf[np.minimum(at, len(buf) - 1)], 0).astype(np.uint8)
    names = pd.Index(np.ascontiguousarray(chars).view(f"S{width}").ravel().astype(str))
    return names, pd.Index(symbols), sp.csr_matrix((values, (rows, cols)), shape=(len(E), len(symbols)))


def _read_counts(path: Path) -> tuple[pd.Index, pd.Index, sp.csr_matrix]:
    import gzip

    with reading(path, "the counts table (gzip TSV, spots x gene symbols)"):
        with gzip.open(path, "rb") as f:
            raw = f.read()
        if not raw.partition(b"\n")[2].strip():  # (pandas takes many seconds on 15,000 empty columns)
            raise DataFileError(path, "the count matrix is empty (a header line and no spots)")
        parsed = _plain_integer_table(raw)
        if parsed is None:
            counts = pd.read_csv(path, sep="\t", index_col=0, low_memory=False)
            parsed = (counts.index.astype(str), counts.columns.astype(str), counts)
    names, symbols, values = parsed
    if len(names) == 0 or len(symbols) == 0:
        raise DataFileError(path, f"the count matrix is empty (shape {(len(names), len(symbols))})")
    check_unique(names, "spots", path)
    if isinstance(values, pd.DataFrame):
        try:
            values = sp.csr_matrix(values.to_numpy(dtype=np.float64))
        except (ValueError, TypeError) as err:
            raise DataFileError(path, f"non-numeric counts ({err})") from err
    return names, symbols, values


def _read_spots(path: Path) -> pd.DataFrame:
    with reading(path, "the spot file (TSV)"):
        spots = pd.read_csv(path, sep="\t")
    require_columns(spots, SPOT_COLUMNS, path, "the spot file")
    spots = numeric_columns(spots, SPOT_COLUMNS, path)
    for col in ("x", "y"):
        check_whole(spots[col].to_numpy(float), col, path, spots.index)
    check_flag(spots["selected"].to_numpy(float), "selected", path, spots.index)
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    check_unique(spots.index, "spot coordinates", path)
    return spots


def _map_symbols(symbols: pd.Index, organism: str, path: Path) -> np.ndarray:
    """Ensembl ids of the symbols (None where unknown); a wrong organism is an error that says how
    many symbols matched each organism."""
    if organism not in GENE_TABLES:
        raise ValueError(f"organism must be one of {sorted(GENE_TABLES)}, got {organism!r}")
    ids = symbols_to_ids(symbols, organism)
    mapped = int(sum(i is not None for i in ids))
    if mapped >= MIN_MAPPED * len(symbols):
        return ids
    others = {o: int(sum(i is not None for i in symbols_to_ids(symbols, o)))
              for o in GENE_TABLES if o != organism}
    best = max(others, key=others.get)
    hint = (f"; {others[best]} match {best} symbols: pass organism={best!r}"
            if others[best] > mapped else "; they are not gene symbols of either organism")
    raise DataFileError(path, f"only {mapped} of {len(symbols)} column names are {organism} gene "
                              f"symbols (GENCODE){hint}")


def _aggregate(values: np.ndarray, symbols: pd.Index, ids: np.ndarray, path: Path):
    """Counts per Ensembl id (columns of symbols sharing an id summed) and the first symbol of each."""
    keep = np.array([i is not None for i in ids])
    uniq, inverse = np.unique(ids[keep].astype(str), return_inverse=True)
    agg = sp.csr_matrix((np.ones(len(inverse)), (np.arange(len(inverse)), inverse)),
                        shape=(len(inverse), len(uniq)))
    X = check_counts(values[:, np.flatnonzero(keep)] @ agg, path)
    first_symbol = pd.Series(symbols[keep]).groupby(inverse).first()
    var = pd.DataFrame({"gene_symbol": first_symbol.to_numpy()}, index=pd.Index(uniq, name=None))
    return X, var, int(keep.sum())


def read_st(path: str | Path, sample: str, organism: str = "human", load_images: bool = True,
            require_image: bool = False, hires_max_px: int = 2000, lowres_max_px: int = 600):
    """Read one legacy Spatial Transcriptomics section in the her2st layout.

    Files: ``ST-cnts/<sample>.tsv.gz`` (rows ``"{x}x{y}"``, columns gene symbols),
    ``ST-spotfiles/<sample>_selection.tsv`` (x, y, new_x, new_y, pixel_x, pixel_y, selected) and,
    where the section has one, the full-resolution H&E ``ST-imgs/<patient>/<sample>/*.jpg``.
    Symbols are mapped to Ensembl ids through the GENCODE table (unmapped symbols are dropped;
    counts of symbols sharing an id are summed). The grid is square; the pitch is fitted from the
    spot file and the spot diameter is half the pitch (100 µm spots, 200 µm apart).

    Parameters
    ----------
    path, sample
        The her2st folder (holding ``ST-cnts`` ...) and the section, e.g. ``"C2"``.
    organism
        ``'human'`` or ``'mouse'``: whose GENCODE symbols the columns are. If fewer than half of
        the symbols match, the error says how many match each organism.
    load_images
        Decode hires/lowres copies of the JPEG (when there is one) into ``images``.
    require_image
        Make a section without its JPEG an error (datasets for image models). By default a
        counts-only section reads with ``images == {}`` and ``fullres_path = None``.

    Returns
    -------
    AnnData with raw counts, one section; ``uns['spatial'][sample]`` holds ``scalefactors``
    (``spot_spacing_fullres`` fitted from the array, ``spot_diameter_fullres``, and the
    hires/lowres scale factors when images are loaded), ``images``, ``fullres_path`` and
    ``metadata`` (symbols read and mapped).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import anndata as ad

    root = Path(path)
    counts_file, spots_file, image_dir = st_files(root, sample)
    for f in (counts_file, spots_file):
        if not f.exists():
            raise FileNotFoundError(f"her2st section {sample!r}: file not found: {f}")
    jpegs = sorted(image_dir.glob("*.jpg")) if image_dir.is_dir() else []
    if require_image and not jpegs:
        raise FileNotFoundError(f"her2st section {sample!r}: no full-resolution JPEG in {image_dir}")
    fullres = jpegs[0] if jpegs else None

    spot_names, symbols, values = _read_counts(counts_file)
    spots = _read_spots(spots_file)
    missing = spot_names.difference(spots.index)
    if len(missing):
        raise DataFileError(counts_file, f"{len(missing)} spots have no row in {spots_file} "
                                         f"(e.g. {list(missing[:3])}); counts and positions do not match")
    ids = _map_symbols(symbols, organism, counts_file)
    X, var, n_mapped = _aggregate(values, symbols, ids, counts_file)

    pos = spots.loc[spot_names]
    xy = pos[["pixel_x", "pixel_y"]].to_numpy(float)
    check_pixels(xy, spots_file, spot_names)
    # The fit uses the sub-spot array coordinates the ST pipeline detected (new_x/new_y) where
    # present: the printed array is slightly warped, the integer indices are nominal.
    fit_cols = ["new_y", "new_x"] if {"new_x", "new_y"} <= set(spots.columns) else ["y", "x"]
    spots = numeric_columns(spots, fit_cols, spots_file)
    spacing = fitted_spacing(spots[fit_cols].to_numpy(), spots[["pixel_x", "pixel_y"]].to_numpy(),
                             "square", spots_file)
    scalefactors = {"spot_diameter_fullres": spacing * ST_DIAMETER_OVER_PITCH,
                    "spot_spacing_fullres": spacing}
    images = {}
    if fullres is not None:
        if load_images:
            images, scales, full_size = downscaled(fullres, {"hires": hires_max_px, "lowres": lowres_max_px})
            scalefactors.update(scales)
        else:
            full_size = image_size(fullres)
        check_within_image(xy, full_size, fullres, 1.0, "full resolution")

    obs = pd.DataFrame({"array_row": pos["y"].astype(np.int64).to_numpy(),
                        "array_col": pos["x"].astype(np.int64).to_numpy(),
                        "in_tissue": pos["selected"].astype(bool).to_numpy()}, index=spot_names)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    adata.uns["spatial"] = {sample: {
        "images": images, "scalefactors": scalefactors,
        "fullres_path": None if fullres is None else str(fullres),
        "metadata": {"layout": "her2st", "source": str(root), "has_image": fullres is not None,
                     "n_symbols": int(len(symbols)), "n_symbols_mapped": n_mapped},
    }}
    adata.uns["grid"] = "square"
    return adata
