"""Bad input gets a clear error naming the file, and nothing changes on disk (spared_lib.data)."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from spared_lib.data import load_dataset, make_synthetic_dataset, read_visium


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpl")
    info = make_synthetic_dataset(root / "ds", n_slides=2, n_spots=40, n_genes=60, seed=1)
    return root / "ds" / info.train_slides[0]


@pytest.fixture()
def slide(template, tmp_path):
    dest = tmp_path / template.name
    shutil.copytree(template, dest)
    return dest


def _snapshot(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _expect_error(slide, exc, *patterns):
    before = _snapshot(slide.parent)
    with pytest.raises(exc) as err:
        read_visium(slide)
    for pattern in patterns:
        assert pattern in str(err.value), str(err.value)
    assert _snapshot(slide.parent) == before
    return str(err.value)


def _write_mtx(slide, body_lines, header="%%MatrixMarket matrix coordinate real general"):
    with gzip.open(slide / "filtered_feature_bc_matrix" / "matrix.mtx.gz", "wt") as f:
        f.write(header + "\n" + "\n".join(body_lines) + "\n")


def _shape(slide):
    n_genes = len(pd.read_csv(slide / "filtered_feature_bc_matrix" / "features.tsv.gz", sep="\t", header=None))
    n_spots = len(pd.read_csv(slide / "filtered_feature_bc_matrix" / "barcodes.tsv.gz", header=None))
    return n_genes, n_spots


def test_unknown_dataset_key(tmp_path):
    with pytest.raises(KeyError, match="unknown SpaRED dataset key 'not_a_dataset'.*10xgenomic_human_brain"):
        load_dataset("not_a_dataset", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_registry_data_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="V1_Human_Brain_Section_1") as err:
        load_dataset("10xgenomic_human_brain", data_dir=tmp_path, download=False)
    assert str(tmp_path / "10xgenomic_human_brain") in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_image(slide):
    for p in [*slide.glob("*.tif"), *(slide / "spatial").glob("*.png")]:
        p.unlink()
    _expect_error(slide, FileNotFoundError, "no image", str(slide))


def test_missing_fullres_path(slide):
    before = _snapshot(slide.parent)
    with pytest.raises(FileNotFoundError, match="full-resolution image not found.*nowhere.tif"):
        read_visium(slide, fullres_path=slide / "nowhere.tif")
    assert _snapshot(slide.parent) == before


def test_barcodes_not_in_positions(slide):
    pos_file = slide / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_file)
    pos[pos["in_tissue"] == 0].to_csv(pos_file, index=False)  # drop every in-tissue row
    _expect_error(slide, ValueError, "have no row in", "tissue_positions.csv", "do not match")


def test_duplicate_barcodes_in_positions(slide):
    pos_file = slide / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_file)
    pd.concat([pos, pos.iloc[:2]]).to_csv(pos_file, index=False)
    _expect_error(slide, ValueError, "duplicate barcodes", "tissue_positions.csv")


def test_duplicate_barcodes_in_counts(slide):
    bc_file = slide / "filtered_feature_bc_matrix" / "barcodes.tsv.gz"
    bc = pd.read_csv(bc_file, header=None)
    bc.iloc[1, 0] = bc.iloc[0, 0]
    bc.to_csv(bc_file, header=False, index=False)
    _expect_error(slide, ValueError, "duplicate barcodes", "filtered_feature_bc_matrix")


@pytest.mark.parametrize("value", ["abc", ""])
def test_non_numeric_or_missing_coordinates(slide, value):
    pos_file = slide / "spatial" / "tissue_positions.csv"
    pos = pd.read_csv(pos_file, dtype=str)
    pos.loc[5, "pxl_row_in_fullres"] = value
    pos.to_csv(pos_file, index=False)
    _expect_error(slide, ValueError, "pxl_row_in_fullres", "missing or non-numeric", "tissue_positions.csv")


def test_negative_counts(slide):
    g, s = _shape(slide)
    _write_mtx(slide, [f"{g} {s} 2", "1 1 3", "2 2 -1"])
    _expect_error(slide, ValueError, "negative values", "filtered_feature_bc_matrix")


def test_nan_counts(slide):
    g, s = _shape(slide)
    _write_mtx(slide, [f"{g} {s} 2", "1 1 3", "2 2 nan"])
    _expect_error(slide, ValueError, "NaN", "filtered_feature_bc_matrix")


def test_empty_matrix(slide):
    g, s = _shape(slide)
    _write_mtx(slide, [f"{g} {s} 0"])
    _expect_error(slide, ValueError, "empty", "filtered_feature_bc_matrix")


def test_non_integer_counts(slide):
    g, s = _shape(slide)
    _write_mtx(slide, [f"{g} {s} 2", "1 1 3", "2 2 0.5"])
    _expect_error(slide, ValueError, "non-integer", "filtered_feature_bc_matrix")


def test_missing_positions(slide):
    (slide / "spatial" / "tissue_positions.csv").unlink()
    _expect_error(slide, FileNotFoundError, "tissue_positions", str(slide / "spatial"))


def test_valid_copy_reads(slide):
    """Control: the untouched copy reads, so the errors above come from the edits."""
    a = read_visium(slide)
    assert a.n_obs == 40 and np.isfinite(a.obsm["spatial"]).all()
