"""Bad input to the readers (Space Ranger 1.x/2.x, 10x HDF5, legacy ST, h5ad, dataset folders).

Each case edits a copy of a real fixture (or of a synthetic Space Ranger 2.x slide) and asserts
the outcome — a clear error naming the file and the problem, or the correct result — and that the
input folder is byte-identical afterwards (readers write nothing). See tests/badinput.py.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from badinput import ERROR, RESULT, case, raises_naming, unchanged
from PIL import Image

from spared_lib.data import (DataFileError, fixture_dataset, load_dataset,
                             make_synthetic_dataset, read_h5ad, read_st, read_visium)

HTML = b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"


# --------------------------------------------------------------------------- templates
@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpl")
    info = make_synthetic_dataset(root / "ds", n_slides=2, n_spots=40, n_genes=60, seed=1)
    return root / "ds" / info.train_slides[0]


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".*"))
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def _csv_edit(path: Path, fn, header=True, **read):
    frame = pd.read_csv(path, dtype=str, header=0 if header else None, keep_default_na=False, **read)
    frame = fn(frame)
    frame.to_csv(path, index=False, header=header)


def _rewrite_h5(path: Path, **changes):
    """Rewrite a 10x HDF5 with some datasets replaced (None deletes one)."""
    with h5py.File(path, "r") as f:
        items = {}
        f.visititems(lambda name, obj: items.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    for key, value in changes.items():
        key = key.replace("__", "/")
        if value is None:
            items.pop(key)
        else:
            items[key] = value(items[key]) if callable(value) else value
    path.unlink()
    with h5py.File(path, "w") as f:
        for name, value in items.items():
            f.create_dataset(name, data=value)


def _truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _gz_text(path: Path, fn):
    with gzip.open(path, "rt") as f:
        text = f.read()
    with gzip.open(path, "wt", compresslevel=1) as f:  # fast: the edit is what matters
        f.write(fn(text))


# --------------------------------------------------------------------------- Space Ranger 1.x (heart, h5)
def _pos1(fn):
    return lambda s: _csv_edit(s / "spatial/tissue_positions_list.csv", fn, header=False)


def _pos1_cell(col, value, row=3):
    def fn(frame):
        frame.loc[row, col] = value
        return frame
    return _pos1(fn)


def _in_counts_rows(frame, slide):
    with h5py.File(slide / "filtered_feature_bc_matrix.h5") as f:
        bcs = set(f["matrix/barcodes"][()].astype(str))
    return frame.index[frame[0].isin(bcs)]


def _drop_counted(slide):
    path = slide / "spatial/tissue_positions_list.csv"
    frame = pd.read_csv(path, header=None, dtype=str)
    frame.drop(index=_in_counts_rows(frame, slide)).to_csv(path, header=False, index=False)


def _set_first_counted(col, value):
    def edit(slide):
        path = slide / "spatial/tissue_positions_list.csv"
        frame = pd.read_csv(path, header=None, dtype=str)
        frame.loc[_in_counts_rows(frame, slide)[0], col] = value
        frame.to_csv(path, header=False, index=False)
    return edit


def _sf(fn):
    def edit(slide):
        path = slide / "spatial/scalefactors_json.json"
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))
    return edit


def _small_png(name, px=60):
    return lambda s: Image.new("RGB", (px, px), "white").save(s / f"spatial/tissue_{name}_image.png")


def _h5(**changes):
    return lambda s: _rewrite_h5(s / "filtered_feature_bc_matrix.h5", **changes)


def _dup_entry(indices):
    out = indices.copy()
    out[1] = out[0]  # spot 0 lists one gene twice (if spot 0 has >= 2 entries)
    return out


HEART_ERRORS = [
    # positions (1.x, no header)
    case(ERROR, "positions-5-columns", _pos1(lambda f: f.iloc[:, :5]), "spatial/tissue_positions_list.csv", "expected 6 columns"),
    case(ERROR, "in_tissue-2", _pos1_cell(1, "2"),
         "spatial/tissue_positions_list.csv", "'in_tissue' must be 0 or 1"),
    case(ERROR, "array_row-1.5", _pos1_cell(2, "1.5"),
         "spatial/tissue_positions_list.csv", "'array_row' must hold whole numbers"),
    case(ERROR, "array_col-negative", _pos1_cell(3, "-2"),
         "spatial/tissue_positions_list.csv", "'array_col' must be >= 0"),
    case(ERROR, "pixel-inf", _pos1_cell(4, "inf"),
         "spatial/tissue_positions_list.csv", "infinite or NaN"),
    case(ERROR, "pixel-text", _pos1_cell(5, "12px"),
         "spatial/tissue_positions_list.csv", "missing or non-numeric"),
    case(ERROR, "pixel-negative-counted-spot", _set_first_counted(5, "-40"),
         "spatial/tissue_positions_list.csv", "negative"),
    case(ERROR, "positions-duplicate-barcode", _pos1(lambda f: pd.concat([f, f.iloc[:1]])),
         "spatial/tissue_positions_list.csv", "duplicate barcodes"),
    case(ERROR, "positions-empty-file", lambda s: (s / "spatial/tissue_positions_list.csv").write_bytes(b""),
         "spatial/tissue_positions_list.csv", "empty"),
    case(ERROR, "positions-html", lambda s: (s / "spatial/tissue_positions_list.csv").write_bytes(HTML),
         "spatial/tissue_positions_list.csv", "expected 6 columns", "HTML"),
    case(ERROR, "positions-missing-counted-barcodes", lambda s: _drop_counted(s),
         "filtered_feature_bc_matrix.h5", "100 of 100 barcodes have no row in", "do not match"),
    # scale factors
    case(ERROR, "diameter-zero", _sf(lambda d: {**d, "spot_diameter_fullres": 0}),
         "spatial/scalefactors_json.json", "'spot_diameter_fullres' must be a positive number"),
    case(ERROR, "diameter-negative", _sf(lambda d: {**d, "spot_diameter_fullres": -89.4}),
         "spatial/scalefactors_json.json", "positive number"),
    case(ERROR, "diameter-with-unit", _sf(lambda d: {**d, "spot_diameter_fullres": "89.4px"}),
         "spatial/scalefactors_json.json", "must be a number, found '89.4px'"),
    case(ERROR, "diameter-missing", _sf(lambda d: {k: v for k, v in d.items() if k != "spot_diameter_fullres"}),
         "spatial/scalefactors_json.json", "no spot_diameter_fullres"),
    case(ERROR, "hires-scalef-zero", _sf(lambda d: {**d, "tissue_hires_scalef": 0.0}),
         "spatial/scalefactors_json.json", "'tissue_hires_scalef' must be a positive number"),
    case(ERROR, "scalefactors-truncated-json", lambda s: _truncate(s / "spatial/scalefactors_json.json"),
         "spatial/scalefactors_json.json", "cannot read the scale factors (JSON)"),
    case(ERROR, "scalefactors-is-a-list", lambda s: (s / "spatial/scalefactors_json.json").write_text("[1, 2]"),
         "spatial/scalefactors_json.json", "expected a JSON object"),
    case(ERROR, "hires-scalef-10x-too-big", _sf(lambda d: {**d, "tissue_hires_scalef": d["tissue_hires_scalef"] * 10}),
         "spatial/tissue_hires_image.png", "does not belong to these spot positions"),
    # images
    case(ERROR, "lowres-png-too-small", _small_png("lowres"), "spatial/tissue_lowres_image.png",
         "does not belong to these spot positions"),
    case(ERROR, "lowres-png-truncated", lambda s: _truncate(s / "spatial/tissue_lowres_image.png", 0.3),
         "spatial/tissue_lowres_image.png", "cannot read the image"),
    case(ERROR, "hires-png-is-html", lambda s: (s / "spatial/tissue_hires_image.png").write_bytes(HTML),
         "spatial/tissue_hires_image.png", "HTML"),
    # the 10x HDF5
    case(ERROR, "h5-truncated", lambda s: _truncate(s / "filtered_feature_bc_matrix.h5"),
         "filtered_feature_bc_matrix.h5", "cannot read the 10x HDF5 counts"),
    case(ERROR, "h5-empty", lambda s: (s / "filtered_feature_bc_matrix.h5").write_bytes(b""),
         "filtered_feature_bc_matrix.h5", "not an HDF5 file", "empty"),
    case(ERROR, "h5-is-html", lambda s: (s / "filtered_feature_bc_matrix.h5").write_bytes(HTML),
         "filtered_feature_bc_matrix.h5", "not an HDF5 file", "HTML"),
    case(ERROR, "h5-no-matrix-group", lambda s: h5py.File(s / "filtered_feature_bc_matrix.h5", "w").close(),
         "filtered_feature_bc_matrix.h5", "no 'matrix' group"),
    case(ERROR, "h5-gene-index-out-of-range", _h5(matrix__indices=lambda a: np.where(np.arange(len(a)) == 5, 100, a)),
         "filtered_feature_bc_matrix.h5", "gene indices outside 0..99"),
    case(ERROR, "h5-indptr-short", _h5(matrix__indptr=lambda a: a[:-1]),
         "filtered_feature_bc_matrix.h5", "indptr has 100 entries"),
    case(ERROR, "h5-indptr-decreasing", _h5(matrix__indptr=lambda a: np.r_[a[:10], a[9] - 1, a[11:]]),
         "filtered_feature_bc_matrix.h5", "never decrease"),
    case(ERROR, "h5-data-shorter-than-indices", _h5(matrix__data=lambda a: a[:-1]),
         "filtered_feature_bc_matrix.h5", "differ in length"),
    case(ERROR, "h5-barcodes-missing-one", _h5(matrix__barcodes=lambda a: a[:-1]),
         "filtered_feature_bc_matrix.h5", "matrix/barcodes has 99 entries"),
    case(ERROR, "h5-features-missing-one", _h5(matrix__features__id=lambda a: a[:-1]),
         "filtered_feature_bc_matrix.h5", "matrix/features has 99 ids"),
    case(ERROR, "h5-shape-three-values", _h5(matrix__shape=np.array([100, 100, 1], np.int32)),
         "filtered_feature_bc_matrix.h5", "two non-negative integers"),
    case(ERROR, "h5-duplicate-entry", _h5(matrix__indices=_dup_entry),
         "filtered_feature_bc_matrix.h5", "lists a gene twice"),
    case(ERROR, "h5-count-above-2^24", _h5(matrix__data=lambda a: np.where(np.arange(len(a)) == 0, 2.0 ** 24 + 1, a)),
         "filtered_feature_bc_matrix.h5", "exceeds 2^24"),
    case(ERROR, "h5-negative-count", _h5(matrix__data=lambda a: np.where(np.arange(len(a)) == 0, -3.0, a)),
         "filtered_feature_bc_matrix.h5", "negative values"),
    case(ERROR, "h5-fractional-count", _h5(matrix__data=lambda a: a + 0.5),
         "filtered_feature_bc_matrix.h5", "non-integer values"),
    case(ERROR, "h5-nan-count", _h5(matrix__data=lambda a: np.where(np.arange(len(a)) == 0, np.nan, a)),
         "filtered_feature_bc_matrix.h5", "NaN"),
    case(ERROR, "h5-no-feature-ids", _h5(matrix__features__id=None),
         "filtered_feature_bc_matrix.h5", "matrix/features lacks ['id']"),
    case(ERROR, "h5-no-gene-expression", _h5(matrix__features__feature_type=lambda a: np.full(len(a), b"Antibody Capture")),
         "filtered_feature_bc_matrix.h5", "no 'Gene Expression' features"),
    case(ERROR, "h5-duplicate-gene-ids", _h5(matrix__features__id=lambda a: np.r_[a[:1], a[:-1]]),
         "filtered_feature_bc_matrix.h5", "duplicate gene ids"),
]


@pytest.mark.parametrize(("edit", "bad_file", "fragments"), [(p.values[0], p.values[1], p.values[2:]) for p in HEART_ERRORS],
                         ids=[p.id for p in HEART_ERRORS])
def test_heart_h5_errors(fixtures, tmp_path, edit, bad_file, fragments):
    slide = _copy(fixtures / "visium_human_heart_subset", tmp_path / "heart")
    edit(slide)
    with unchanged(slide), raises_naming(DataFileError, slide / bad_file, *fragments):
        read_visium(slide)


def _unsorted_indices(slide):
    """Reverse the gene order inside each spot (valid CSC, just not sorted)."""
    path = slide / "filtered_feature_bc_matrix.h5"
    with h5py.File(path) as f:
        indptr, indices, data = f["matrix/indptr"][()], f["matrix/indices"][()], f["matrix/data"][()]
    order = np.concatenate([np.arange(a, b)[::-1] for a, b in zip(indptr[:-1], indptr[1:])])
    _rewrite_h5(path, matrix__indices=indices[order], matrix__data=data[order])


def _extra_feature_type(slide):
    _rewrite_h5(slide / "filtered_feature_bc_matrix.h5",
                matrix__features__feature_type=lambda a: np.where(np.arange(len(a)) < 3, b"Antibody Capture", a))


def _pixel_negative_off_tissue(slide):
    path = slide / "spatial/tissue_positions_list.csv"
    frame = pd.read_csv(path, header=None, dtype=str)
    counted = set(_in_counts_rows(frame, slide))
    off = [i for i in frame.index if i not in counted][0]
    frame.loc[off, 4] = "-12"
    frame.to_csv(path, header=False, index=False)


@pytest.mark.parametrize(("edit", "check"), [
    case(RESULT, "h5-unsorted-gene-indices", _unsorted_indices, lambda a, b: (a.X != b.X).nnz == 0),
    case(RESULT, "h5-other-feature-types-dropped", _extra_feature_type,
         lambda a, b: a.n_vars == 97 and (a.X != b[:, a.var_names].X).nnz == 0),
    case(RESULT, "negative-pixel-of-a-spot-without-counts", _pixel_negative_off_tissue,
         lambda a, b: np.array_equal(a.obsm["spatial"], b.obsm["spatial"])),
    case(RESULT, "load-images-false-skips-a-truncated-png", lambda s: _truncate(s / "spatial/tissue_lowres_image.png", 0.3),
         lambda a, b: a.uns["spatial"]["heart"]["images"] == {} and (a.X != b.X).nnz == 0),
])
def test_heart_h5_correct_results(fixtures, tmp_path, edit, check):
    original = read_visium(fixtures / "visium_human_heart_subset", library_id="heart")
    slide = _copy(fixtures / "visium_human_heart_subset", tmp_path / "heart")
    edit(slide)
    with unchanged(slide):
        a = read_visium(slide, library_id="heart", load_images=False)
    assert check(a, original)


# --------------------------------------------------------------------------- Space Ranger 2.x (cytassist, header)
def _pos2(fn):
    return lambda s: _csv_edit(s / "spatial/tissue_positions.csv", fn)


def test_positions_header_read_by_name(fixtures, tmp_path):
    """Issue 15 §5: a 2.x file listing pxl_col_in_fullres before pxl_row_in_fullres was read with
    x and y swapped for every spot (columns were renamed by position)."""
    original = read_visium(fixtures / "visium_mouse_cytassist", load_images=False)
    slide = _copy(fixtures / "visium_mouse_cytassist", tmp_path / "cyt")
    cols = ["barcode", "in_tissue", "array_row", "array_col", "pxl_col_in_fullres", "pxl_row_in_fullres"]
    _pos2(lambda f: f[cols].assign(extra_column="x"))(slide)
    with unchanged(slide):
        a = read_visium(slide, load_images=False)
    np.testing.assert_array_equal(a.obsm["spatial"], original.obsm["spatial"])
    assert a.uns["spatial"]["cyt"]["scalefactors"]["spot_spacing_fullres"] == pytest.approx(
        original.uns["spatial"]["visium_mouse_cytassist"]["scalefactors"]["spot_spacing_fullres"])


@pytest.mark.parametrize(("edit", "fragments"), [
    case(ERROR, "header-lacks-a-column", _pos2(lambda f: f.drop(columns="pxl_row_in_fullres")),
         ("lacks column(s) ['pxl_row_in_fullres']",)),
    case(ERROR, "header-in_tissue-yes", _pos2(lambda f: f.assign(in_tissue=f["in_tissue"].where(f.index != 0, "yes"))),
         ("'in_tissue'", "non-numeric")),
    case(ERROR, "header-array-row-fraction", _pos2(lambda f: f.assign(array_row=f["array_row"].where(f.index != 0, "0.5"))),
         ("whole numbers",)),
    case(ERROR, "header-pixel-nan-word", _pos2(lambda f: f.assign(pxl_col_in_fullres=f["pxl_col_in_fullres"].where(f.index != 0, "nan"))),
         ("'pxl_col_in_fullres'",)),
])
def test_cytassist_positions_errors(fixtures, tmp_path, edit, fragments):
    slide = _copy(fixtures / "visium_mouse_cytassist", tmp_path / "cyt")
    edit(slide)
    with unchanged(slide), raises_naming(DataFileError, slide / "spatial/tissue_positions.csv", *fragments):
        read_visium(slide, load_images=False)


# --------------------------------------------------------------------------- Space Ranger 2.x mtx (synthetic)
MTX = "filtered_feature_bc_matrix/matrix.mtx.gz"
FEATURES = "filtered_feature_bc_matrix/features.tsv.gz"
BARCODES = "filtered_feature_bc_matrix/barcodes.tsv.gz"


def _mtx_lines(fn):
    def edit(slide):
        _gz_text(slide / MTX, lambda t: fn(t.splitlines()))
    return edit


def _replace_entry(value):
    def fn(lines):
        header = [i for i, l in enumerate(lines) if not l.startswith("%")][0]
        r, c, _ = lines[header + 1].split()
        lines[header + 1] = f"{r} {c} {value}"
        return "\n".join(lines).replace("integer", "real") + "\n"
    return _mtx_lines(fn)


def _tif_truncated(slide):
    _truncate(next(slide.glob("*.tif")), 0.6)


MTX_ERRORS = [
    case(ERROR, "mtx-gzip-truncated", lambda s: _truncate(s / MTX, 0.5), MTX, ("cannot read the Matrix Market counts",)),
    case(ERROR, "mtx-not-gzip", lambda s: (s / MTX).write_bytes(b"%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 1\n"),
         MTX, ("cannot read the Matrix Market counts",)),
    case(ERROR, "mtx-garbage-header", _mtx_lines(lambda ls: "hello world\n" + "\n".join(ls[1:]) + "\n"), MTX,
         ("cannot read the Matrix Market counts",)),
    case(ERROR, "mtx-negative-count", _replace_entry("-1"), MTX, ("negative values",)),
    case(ERROR, "mtx-nan-count", _replace_entry("nan"), MTX, ("NaN",)),
    case(ERROR, "mtx-fractional-count", _replace_entry("0.5"), MTX, ("non-integer values",)),
    case(ERROR, "mtx-count-above-2^24", _replace_entry(str(2 ** 24 + 7)), MTX, ("exceeds 2^24",)),
    case(ERROR, "features-one-column", lambda s: _gz_text(s / FEATURES, lambda t: "\n".join(l.split("\t")[0] for l in t.splitlines()) + "\n"),
         FEATURES, ("at least 2 columns",)),
    case(ERROR, "features-one-row-short", lambda s: _gz_text(s / FEATURES, lambda t: "\n".join(t.splitlines()[:-1]) + "\n"),
         MTX, ("does not match",)),
    case(ERROR, "features-html", lambda s: (s / FEATURES).write_bytes(HTML), FEATURES, ("cannot read the features table",)),
    case(ERROR, "barcodes-gzip-corrupt", lambda s: (s / BARCODES).write_bytes(b"\x1f\x8b\x08\x00garbage"), BARCODES,
         ("cannot read the barcodes",)),
    case(ERROR, "barcodes-duplicate", lambda s: _gz_text(s / BARCODES, lambda t: (lambda ls: "\n".join([ls[0]] + ls[:-1]) + "\n")(t.splitlines())),
         BARCODES, ("duplicate barcodes",)),
    case(ERROR, "fullres-tif-truncated", _tif_truncated, "SYN01_A1_image.tif", ("TIFF",)),
    case(ERROR, "scalefactors-not-json", lambda s: (s / "spatial/scalefactors_json.json").write_bytes(HTML),
         "spatial/scalefactors_json.json", ("cannot read the scale factors", "HTML")),
]


@pytest.mark.parametrize(("edit", "bad_file", "fragments"), [(p.values[0], p.values[1], p.values[2]) for p in MTX_ERRORS],
                         ids=[p.id for p in MTX_ERRORS])
def test_spaceranger_mtx_errors(synthetic_slide, tmp_path, edit, bad_file, fragments):
    slide = _copy(synthetic_slide, tmp_path / synthetic_slide.name)
    edit(slide)
    with unchanged(slide), raises_naming(DataFileError, slide / bad_file, *fragments):
        read_visium(slide, load_images=False)


@pytest.mark.parametrize(("remove", "fragment"), [
    case(ERROR, "no-barcodes-file", BARCODES, "missing barcodes.tsv"),
    case(ERROR, "no-scalefactors", "spatial/scalefactors_json.json", "scale factors not found"),
    case(ERROR, "no-positions", "spatial/tissue_positions.csv", "no tissue_positions.csv"),
])
def test_spaceranger_missing_files(synthetic_slide, tmp_path, remove, fragment):
    slide = _copy(synthetic_slide, tmp_path / synthetic_slide.name)
    (slide / remove).unlink()
    with unchanged(slide), raises_naming(FileNotFoundError, slide.name, fragment):
        read_visium(slide)


# --------------------------------------------------------------------------- legacy ST (her2st C2)
def _her2st_copy(fixtures, dest, image=True) -> Path:
    src = fixtures / "her2st"
    subs = ["ST-cnts/C2.tsv.gz", "ST-spotfiles/C2_selection.tsv"]
    if image:
        subs.append("ST-imgs/C/C2/5714_HE_BT_C2.jpg")
    for sub in subs:
        (dest / sub).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / sub, dest / sub)
    return dest


COUNTS = "ST-cnts/C2.tsv.gz"
SPOTS = "ST-spotfiles/C2_selection.tsv"
JPEG = "ST-imgs/C/C2/5714_HE_BT_C2.jpg"


def _counts_cell(value, row=1, col=3):
    def fn(text):
        lines = text.split("\n")
        cells = lines[row].split("\t")
        cells[col] = value
        lines[row] = "\t".join(cells)
        return "\n".join(lines)
    return lambda root: _gz_text(root / COUNTS, fn)


def _spots(fn):
    def edit(root):
        frame = pd.read_csv(root / SPOTS, sep="\t", dtype=str)
        fn(frame).to_csv(root / SPOTS, sep="\t", index=False)
    return edit


def _first_spot(col, value):
    def fn(frame):
        frame.loc[0, col] = value
        return frame
    return _spots(fn)


def _small_jpeg(root):
    Image.new("RGB", (500, 500), "white").save(root / JPEG)


ST_ERRORS = [
    case(ERROR, "spotfile-without-pixel_x", _spots(lambda f: f.drop(columns="pixel_x")), SPOTS, ("lacks column(s) ['pixel_x']",)),
    case(ERROR, "spotfile-without-selected", _spots(lambda f: f.drop(columns="selected")), SPOTS, ("lacks column(s) ['selected']",)),
    case(ERROR, "spotfile-pixel-inf", _first_spot("pixel_x", "inf"), SPOTS, ("spot pixel coordinates are infinite",)),
    case(ERROR, "spotfile-pixel-negative", _first_spot("pixel_y", "-3.5"), SPOTS, ("negative",)),
    case(ERROR, "spotfile-selected-2", _first_spot("selected", "2"), SPOTS, ("'selected' must be 0 or 1",)),
    case(ERROR, "spotfile-x-fraction", _first_spot("x", "25.5"), SPOTS, ("'x' must hold whole numbers",)),
    case(ERROR, "spotfile-pixel-text", _first_spot("pixel_x", "6930px"), SPOTS, ("'pixel_x'", "non-numeric")),
    case(ERROR, "spotfile-duplicate-spot", _spots(lambda f: pd.concat([f, f.iloc[:1]])), SPOTS, ("duplicate spot coordinates",)),
    case(ERROR, "spotfile-empty", lambda r: (r / SPOTS).write_bytes(b""), SPOTS, ("cannot read the spot file", "empty")),
    case(ERROR, "spotfile-misses-a-counted-spot", _spots(lambda f: f.iloc[1:]), COUNTS, ("have no row in",)),
    case(ERROR, "counts-gzip-truncated", lambda r: _truncate(r / COUNTS, 0.5), COUNTS, ("cannot read the counts table",)),
    case(ERROR, "counts-is-html", lambda r: (r / COUNTS).write_bytes(HTML), COUNTS, ("cannot read the counts table", "HTML")),
    case(ERROR, "counts-non-numeric", _counts_cell("abc"), COUNTS, ("non-numeric counts",)),
    case(ERROR, "counts-negative", _counts_cell("-1"), COUNTS, ("negative values",)),
    case(ERROR, "counts-empty-cell", _counts_cell(""), COUNTS, ("NaN",)),
    case(ERROR, "counts-fraction", _counts_cell("0.5"), COUNTS, ("non-integer values",)),
    case(ERROR, "counts-above-2^24", _counts_cell(str(2 ** 25)), COUNTS, ("exceeds 2^24",)),
    case(ERROR, "counts-header-only", lambda r: _gz_text(r / COUNTS, lambda t: t.split("\n")[0] + "\n"), COUNTS, ("empty",)),
    case(ERROR, "counts-ensembl-ids-not-symbols",
         lambda r: _gz_text(r / COUNTS, lambda t: "\t".join([""] + [f"ENSG{i:011d}" for i in range(len(t.split("\n")[0].split("\t")) - 1)])
                            + "\n" + t.split("\n", 1)[1]),
         COUNTS, ("are human gene symbols", "not gene symbols of either organism")),
    case(ERROR, "jpeg-truncated", lambda r: _truncate(r / JPEG, 0.4), JPEG, ("cannot read the image's pixels",)),
    case(ERROR, "jpeg-much-smaller-than-coordinates", _small_jpeg, JPEG, ("does not belong to these spot positions",)),
    case(ERROR, "jpeg-is-html", lambda r: (r / JPEG).write_bytes(HTML), JPEG, ("cannot read the image", "HTML")),
]


@pytest.mark.parametrize(("edit", "bad_file", "fragments"), [(p.values[0], p.values[1], p.values[2]) for p in ST_ERRORS],
                         ids=[p.id for p in ST_ERRORS])
def test_her2st_errors(fixtures, tmp_path, edit, bad_file, fragments):
    root = _her2st_copy(fixtures, tmp_path / "her2st")
    edit(root)
    with unchanged(root), raises_naming(DataFileError, root / bad_file, *fragments):
        read_st(root, "C2", load_images=bad_file == JPEG)  # decoding only where the image is the case


def test_her2st_wrong_organism_says_how_many_matched(fixtures, tmp_path):
    """Issue 15 §9: a wrong organism silently dropped 99.9 % of the genes."""
    root = _her2st_copy(fixtures, tmp_path / "her2st", image=False)
    with unchanged(root), raises_naming(DataFileError, root / COUNTS, "mouse gene symbols",
                                        "match human symbols: pass organism='human'") as err:
        read_st(root, "C2", organism="mouse")
    n_mapped, n_total = (int(v) for v in str(err.value).split("only ")[1].split(" column")[0].split(" of "))
    assert n_total > 14000 and n_mapped < 0.05 * n_total


@pytest.mark.parametrize(("edit", "check"), [
    case(RESULT, "counts-written-as-floats", lambda r: _gz_text(r / COUNTS, lambda t: t.replace("\t1\t", "\t1.0\t")),
         lambda a, b: (a.X != b.X).nnz == 0),
    case(RESULT, "counts-with-crlf-line-ends", lambda r: _gz_text(r / COUNTS, lambda t: t.replace("\n", "\r\n")),
         lambda a, b: (a.X != b.X).nnz == 0 and a.obs_names.equals(b.obs_names)),
    case(RESULT, "spotfile-extra-column", _spots(lambda f: f.assign(note="x")),
         lambda a, b: np.array_equal(a.obsm["spatial"], b.obsm["spatial"])),
    case(RESULT, "spotfile-without-new_x-new_y", _spots(lambda f: f.drop(columns=["new_x", "new_y"])),
         lambda a, b: abs(a.uns["spatial"]["C2"]["scalefactors"]["spot_spacing_fullres"]
                          / b.uns["spatial"]["C2"]["scalefactors"]["spot_spacing_fullres"] - 1) < 0.05),
    case(RESULT, "jpeg-removed-reads-counts-only", lambda r: (r / JPEG).unlink(),
         lambda a, b: a.uns["spatial"]["C2"]["fullres_path"] is None and (a.X != b.X).nnz == 0),
])
def test_her2st_correct_results(fixtures, tmp_path, edit, check):
    original = read_st(fixtures / "her2st", "C2", load_images=False)
    root = _her2st_copy(fixtures, tmp_path / "her2st")
    edit(root)
    with unchanged(root):
        a = read_st(root, "C2", load_images=False)
    assert check(a, original)


def test_her2st_missing_counts_file(fixtures, tmp_path):
    root = _her2st_copy(fixtures, tmp_path / "her2st")
    (root / COUNTS).unlink()
    with unchanged(root), raises_naming(FileNotFoundError, root / COUNTS, "file not found"):
        read_st(root, "C2")


# --------------------------------------------------------------------------- h5ad and dataset folders
@pytest.fixture(scope="module")
def h5ad_file(synthetic_slide, tmp_path_factory):
    a = read_visium(synthetic_slide, load_images=False)
    a.uns = {}
    path = tmp_path_factory.mktemp("h5ad") / "slide.h5ad"
    a.write_h5ad(path)
    return path


def _h5ad_edit(fn):
    def edit(path):
        import anndata as ad

        a = ad.read_h5ad(path)
        fn(a)
        a.write_h5ad(path)
    return edit


@pytest.mark.parametrize(("edit", "fragments"), [
    case(ERROR, "h5ad-truncated", lambda p: _truncate(p), ("cannot read the .h5ad file",)),
    case(ERROR, "h5ad-is-html", lambda p: p.write_bytes(HTML), ("cannot read the .h5ad file", "HTML")),
    case(ERROR, "h5ad-without-spatial", _h5ad_edit(lambda a: a.obsm.pop("spatial")), ("obsm['spatial'] is missing",)),
    case(ERROR, "h5ad-negative-coordinates", _h5ad_edit(lambda a: a.obsm.__setitem__("spatial", a.obsm["spatial"] - 1e6)),
         ("negative",)),
    case(ERROR, "h5ad-normalised-counts", _h5ad_edit(lambda a: setattr(a, "X", a.X * 0.37)), ("non-integer values",)),
])
def test_h5ad_errors(h5ad_file, tmp_path, edit, fragments):
    path = tmp_path / "in" / "slide.h5ad"
    path.parent.mkdir()
    shutil.copyfile(h5ad_file, path)
    edit(path)
    with unchanged(path.parent), raises_naming(DataFileError, path, *fragments):
        read_h5ad(path)


@pytest.mark.parametrize(("edit", "exc", "fragments"), [
    case(ERROR, "dataset-json-truncated", lambda d: _truncate(d / "dataset.json"), ValueError,
         ("dataset.json", "not a readable dataset description")),
    case(ERROR, "dataset-json-unknown-field", lambda d: (d / "dataset.json").write_text(
        json.dumps({**json.loads((d / "dataset.json").read_text()), "colour": "red"})), ValueError,
         ("dataset.json", "colour")),
    case(ERROR, "dataset-slide-folder-missing", lambda d: shutil.rmtree(next(p for p in d.iterdir() if p.is_dir())),
         FileNotFoundError, ("slide(s) missing under", "folder")),
    case(ERROR, "dataset-json-is-a-list", lambda d: (d / "dataset.json").write_text("[]"), ValueError,
         ("dataset.json", "a JSON object expected")),
])
def test_dataset_folder_errors(synthetic_slide, tmp_path, edit, exc, fragments):
    folder = _copy(synthetic_slide.parent, tmp_path / "ds")
    edit(folder)
    with unchanged(folder), raises_naming(exc, folder, *fragments):
        load_dataset(folder)


def test_her2st_dataset_with_a_missing_spot_file(fixtures, tmp_path):
    root = tmp_path / "her2st"
    for f in fixture_dataset("her2st_C").files:
        (root / f.target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fixtures / "her2st" / f.target, root / f.target)
    (root / "ST-spotfiles/C3_selection.tsv").unlink()
    info = fixture_dataset("her2st_C").with_root(root)
    with unchanged(root), raises_naming(FileNotFoundError, root, "C3 (ST-spotfiles/C3_selection.tsv)"):
        load_dataset(info)
