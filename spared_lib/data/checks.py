"""What every reader checks before it trusts a file: one error type that names the file and the
problem, a wrapper that turns any parser's exception into it, and the value checks no real slide
can fail (finite, non-negative coordinates; integer array indices; 0/1 tissue flags; positive spot
diameters; counts that float32 holds exactly).

Introduced in ``notebooks/01_spared_database.py``.
"""
from __future__ import annotations

import contextlib
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

# float32 holds every integer up to 2**24 exactly; a larger count would be silently rounded.
FLOAT32_EXACT = 2 ** 24
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class DataFileError(ValueError):
    """A data file that cannot be used as it is. The message starts with the file's path and says
    what is wrong with it; ``path`` and ``problem`` hold the two parts.

    Defined in ``notebooks/01_spared_database.py``.
    """

    def __init__(self, path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def looks_like(path: Path) -> str:
    """A short description of what a file that failed to parse actually holds ('' if nothing
    telling): empty, an HTML page (a web error page saved in place of the data), or truncated
    gzip. Used to make parser errors say what to do."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if size == 0:
        return "the file is empty (0 bytes)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in text[:200]:
        return "the file is an HTML/XML page, not data (a web error page saved in its place?)"
    if head[:2] == b"\x1f\x8b" and path.suffix != ".gz":
        return "the file is gzip-compressed but its name does not end in .gz"
    return ""


# Parsers (pandas, h5py, gzip, zlib, scipy.io, json, PIL, anndata) raise their own types, all of
# which derive from these; anything else is a bug of ours and must not be disguised.
PARSE_ERRORS = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error,
                struct.error, UnicodeDecodeError, zipfile.BadZipFile, tarfile.TarError)


@contextlib.contextmanager
def reading(path, what: str):
    """Run a parse; any parser error becomes a :class:`DataFileError` naming ``path``, ``what``
    was being read, the parser's own message and, where telling, what the file looks like.

    ``FileNotFoundError`` and our own :class:`DataFileError` pass through unchanged.
    """
    path = Path(path)
    try:
        yield
    except (DataFileError, FileNotFoundError):
        raise
    except PARSE_ERRORS as err:
        hint = looks_like(path) if path.is_file() else ""
        detail = f"{type(err).__name__}: {err}".strip().rstrip(":")
        raise DataFileError(path, f"cannot read {what} ({detail})" + (f"; {hint}" if hint else "")) from err


def check_finite(values: np.ndarray, column: str, path, index=None) -> None:
    """Every value finite (no inf/NaN)."""
    bad = ~np.isfinite(values)
    if bad.any():
        where = f" (first at {index[np.flatnonzero(bad)[0]]!r})" if index is not None else ""
        raise DataFileError(path, f"column {column!r} has {int(bad.sum())} infinite or NaN "
                                  f"value(s){where}")


def check_whole(values: np.ndarray, column: str, path, index=None, minimum: int | None = 0) -> None:
    """Whole numbers (array indices), at least ``minimum``."""
    check_finite(values, column, path, index)
    frac = values != np.round(values)
    if frac.any():
        i = np.flatnonzero(frac)[0]
        where = f" at {index[i]!r}" if index is not None else ""
        raise DataFileError(path, f"column {column!r} must hold whole numbers (array indices); "
                                  f"found {values[i]!r}{where}")
    if minimum is not None and (values < minimum).any():
        i = np.flatnonzero(values < minimum)[0]
        where = f" at {index[i]!r}" if index is not None else ""
        raise DataFileError(path, f"column {column!r} must be >= {minimum}; found {values[i]!r}{where}")


def check_flag(values: np.ndarray, column: str, path, index=None) -> None:
    """A 0/1 flag (``in_tissue``, ``selected``)."""
    check_finite(values, column, path, index)
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        i = np.flatnonzero(bad)[0]
        where = f" at {index[i]!r}" if index is not None else ""
        raise DataFileError(path, f"column {column!r} must be 0 or 1; found {values[i]!r}{where}")


def check_pixels(xy: np.ndarray, path, index=None, what: str = "spot pixel coordinates") -> None:
    """Finite, non-negative full-resolution pixel coordinates of the spots that are used."""
    xy = np.asarray(xy, dtype=float)
    bad = ~np.isfinite(xy).all(1)
    if bad.any():
        where = f" (first at {index[np.flatnonzero(bad)[0]]!r})" if index is not None else ""
        raise DataFileError(path, f"{int(bad.sum())} {what} are infinite or NaN{where}")
    neg = (xy < 0).any(1)
    if neg.any():
        i = np.flatnonzero(neg)[0]
        where = f" at {index[i]!r}" if index is not None else ""
        raise DataFileError(path, f"{int(neg.sum())} {what} are negative (e.g. {xy[i].tolist()}{where}); "
                                  "pixel coordinates of a slide's spots lie inside its image")


def positive_number(value, key: str, path) -> float:
    """A scale-factor entry: a real number > 0 (not a string such as ``"89.4px"``, not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataFileError(path, f"{key!r} must be a number, found {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise DataFileError(path, f"{key!r} must be a positive number, found {value!r}")
    return float(value)


def check_within_image(xy: np.ndarray, size_px: tuple[float, float], image: Path, scale: float,
                       scale_name: str) -> None:
    """Spots must fall inside the image they will be cut from.

    ``size_px`` is the image's (width, height) in its own pixels and ``scale`` its size relative to
    full resolution, so it covers ``size_px / scale`` full-resolution pixels. A 2 % margin allows
    for spots on the image's edge; an image much smaller than the coordinates (wrong file, or a
    wrong scale factor) would otherwise yield uniform patches.
    """
    extent = np.asarray(size_px, dtype=float) / scale
    reach = np.asarray(xy, dtype=float).max(0)
    if (reach > extent * 1.02).any():
        raise DataFileError(image, (
            f"the image is {int(size_px[0])} x {int(size_px[1])} px, i.e. "
            f"{extent[0]:.0f} x {extent[1]:.0f} full-resolution px at {scale_name} = {scale:g}, but "
            f"spots reach x = {reach[0]:.0f}, y = {reach[1]:.0f}: the image (or the scale factor) "
            "does not belong to these spot positions"))


def numeric_columns(frame: pd.DataFrame, columns, path) -> pd.DataFrame:
    """Columns converted to numbers; errors name the file, the column and an offending row."""
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            first = frame.index[bad.to_numpy()][0]
            raise DataFileError(path, f"column {col!r} has {int(bad.sum())} missing or non-numeric "
                                      f"values (first at {first!r}: {frame.loc[first, col]!r})")
        frame[col] = values
    return frame


def require_columns(frame: pd.DataFrame, columns, path, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataFileError(path, f"{what} lacks column(s) {missing}; found {list(frame.columns)}")


def check_unique(names: pd.Index, what: str, path) -> None:
    dup = names[names.duplicated()]
    if len(dup):
        raise DataFileError(path, f"{len(dup)} duplicate {what}, e.g. {list(dup[:3])}")


def check_counts(X: sp.spmatrix, source: Path) -> sp.csr_matrix:
    """Raw counts as CSR float32; errors on empty, NaN, negative, non-integer values and on
    counts float32 cannot hold exactly (checked before the conversion, on the file's own dtype)."""
    X = sp.csr_matrix(X)
    if X.shape[0] == 0 or X.shape[1] == 0 or X.nnz == 0 or not X.data.any():
        raise DataFileError(source, f"the count matrix is empty (shape {X.shape}, {X.nnz} non-zeros)")
    data = X.data
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataFileError(source, "the count matrix holds NaN or infinite values")
    if data.dtype.kind not in "biuf":
        raise DataFileError(source, f"the count matrix holds non-numeric values (dtype {data.dtype})")
    if (data < 0).any():
        raise DataFileError(source, f"the count matrix holds negative values (min {data.min():g}); "
                                    "raw counts are expected")
    if data.dtype.kind == "f" and not np.array_equal(data, np.round(data)):
        raise DataFileError(source, "the count matrix holds non-integer values; raw counts are "
                                    "expected (normalised data cannot be re-processed like SpaRED)")
    if data.max() > FLOAT32_EXACT:
        raise DataFileError(source, f"a count of {data.max():.0f} exceeds 2^24 = {FLOAT32_EXACT}, "
                                    "above which float32 rounds integers; no spot holds that many "
                                    "UMIs of one gene (not raw counts?)")
    X = X.astype(np.float32)
    X.eliminate_zeros()
    return X
