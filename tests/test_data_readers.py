"""Readers on every real fixture in ../shared/data, the registry, and load_dataset end to end."""
from __future__ import annotations

import hashlib
import tarfile
import time

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.spatial import cKDTree

from spared_lib.data import (DATASETS, DatasetInfo, RemoteFile, datasets_table, fixture_dataset,
                             gene_table, load_dataset, make_synthetic_dataset, read_st,
                             read_visium, symbols_to_ids)


def _nn_distance(xy):
    d, _ = cKDTree(xy).query(xy, k=2)
    return d[:, 1]


def test_visium_2x_cytassist(fixtures):
    a = read_visium(fixtures / "visium_mouse_cytassist")
    assert a.shape == (2898, 19465)
    meta = a.uns["spatial"]["visium_mouse_cytassist"]
    assert meta["metadata"]["layout"] == "spaceranger_2"
    assert a.var_names.str.startswith("ENSMUSG").all() and a.var["gene_symbol"].iloc[0] == "Xkr4"
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32 and a.obs["in_tissue"].all()
    # Spacing from the array fit equals the typical nearest-neighbour distance of tissue spots.
    spacing = meta["scalefactors"]["spot_spacing_fullres"]
    assert np.median(_nn_distance(a.obsm["spatial"])) == pytest.approx(spacing, rel=0.02)
    assert "lowres" in meta["images"] and meta["fullres_path"] is None
    positions = pd.read_csv(fixtures / "visium_mouse_cytassist/spatial/tissue_positions.csv", index_col=0)
    np.testing.assert_allclose(a.obsm["spatial"][:, 0], positions.loc[a.obs_names, "pxl_col_in_fullres"])
    assert a.X.sum() == pytest.approx(float(sp.csr_matrix(a.X).sum()))


def test_visium_1x_heart(fixtures):
    a = read_visium(fixtures / "visium_human_heart_subset")
    assert a.shape == (100, 100)
    meta = a.uns["spatial"]["visium_human_heart_subset"]
    assert meta["metadata"]["layout"] == "spaceranger_1"
    # Hand check from tissue_positions_list.csv: (row 0, col 0) at x=2779, (row 0, col 2) at x=2917.
    assert meta["scalefactors"]["spot_spacing_fullres"] == pytest.approx(138, abs=1.5)
    # Space Ranger's spot_diameter_fullres is a 65 µm circle on a 100 µm pitch.
    ratio = meta["scalefactors"]["spot_diameter_fullres"] / meta["scalefactors"]["spot_spacing_fullres"]
    assert ratio == pytest.approx(0.65, abs=0.01)
    # The file repeats ids as names: symbols come from GENCODE where known.
    table = gene_table("human")
    known = a.var_names.isin(table.index)
    assert known.sum() > 90
    assert (a.var.loc[known, "gene_symbol"] == table.loc[a.var_names[known], "gene_symbol"]).all()


@pytest.mark.parametrize("sample", ["C2", "C3", "C4"])
def test_her2st_sections(fixtures, sample):
    root = fixtures / "her2st"
    a = read_st(root, sample)
    counts = pd.read_csv(root / "ST-cnts" / f"{sample}.tsv.gz", sep="\t", index_col=0)
    assert a.n_obs == len(counts) and a.obs_names.equals(counts.index.astype(str))
    # Summed counts of the mapped symbols are preserved exactly.
    mapped = np.array([i is not None for i in symbols_to_ids(counts.columns, "human")])
    np.testing.assert_allclose(np.asarray(a.X.sum(1)).ravel(), counts.loc[:, mapped].sum(1).to_numpy())
    assert mapped.mean() > 0.9 and a.var_names.str.startswith("ENSG").all()
    meta = a.uns["spatial"][sample]
    assert a.uns["grid"] == "square" and meta["metadata"]["layout"] == "her2st"
    # 200 µm pitch at ≈0.69 µm/px (README) ≈ 290 px; diameter is half the pitch.
    sf = meta["scalefactors"]
    assert 270 < sf["spot_spacing_fullres"] < 310
    assert sf["spot_diameter_fullres"] == pytest.approx(sf["spot_spacing_fullres"] / 2)
    # The printed array is slightly warped: local neighbour distances scatter below the fitted pitch.
    assert np.median(_nn_distance(a.obsm["spatial"])) == pytest.approx(sf["spot_spacing_fullres"], rel=0.1)
    from spared_lib.data import open_image

    with open_image(meta["fullres_path"]) as img:
        w, h = img.size
    assert meta["images"]["hires"].shape[1] == round(w * sf["tissue_hires_scalef"])
    assert (a.obsm["spatial"] >= 0).all() and (a.obsm["spatial"][:, 0] < w).all()


def test_load_her2st_hne_fixture(fixtures):
    t0 = time.perf_counter()
    a = load_dataset(fixture_dataset("her2st_hne"))
    elapsed = time.perf_counter() - t0
    assert list(a.obs["slide_id"].cat.categories) == ["C2", "C3", "C4"]
    assert all(set(a.uns["spatial"][s]["images"]) == {"hires", "lowres"} for s in ("C2", "C3", "C4"))
    assert a.obs.groupby("slide_id", observed=True)["split"].first().tolist() == ["train", "train", "val"]
    assert a.uns["dataset"]["grid"] == "square" and a.obs_names.is_unique
    assert elapsed < 30, f"loading her2st took {elapsed:.1f} s"


def test_registry_matches_reference_table():
    table = datasets_table()
    assert len(DATASETS) == 26 and len(table) == 26
    assert table["n_slides"].sum() == 105 and table["spots"].sum() == 308843
    assert table["patients"].sum() == 35
    assert sorted(table["n_genes"].unique()) == [32, 128] and (table["n_genes"] == 32).sum() == 6
    assert (table["test_slides"] != "").sum() == 11
    assert table["raw_missing"].between(0.6, 1).all()
    # Every dataset has a download source; all 10x files carry the pinned sha256.
    assert (table["n_files"] > 0).all()
    tenx = table.index.str.startswith("10xgenomic")
    assert (table.loc[tenx, "n_files"] == table.loc[tenx, "n_hashed"]).all()
    for info in DATASETS.values():
        assert all(f.url.startswith("https://") for f in info.files)


def test_load_dataset_downloads_and_arranges_an_archive(tmp_path):
    """A registry-style entry whose slides come in one tar archive served from a file:// URL."""
    src = make_synthetic_dataset(tmp_path / "src", n_slides=2, n_spots=30, n_genes=50, seed=2)
    archive = tmp_path / "dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for slide in src.slides:
            tar.add(tmp_path / "src" / slide, arcname=f"upload/{slide}")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    info = DatasetInfo(key="archived", organism="human", n_genes=32, combat_key="slide_id",
                       cell_min_counts=10, train_slides=src.train_slides, val_slides=src.val_slides,
                       files=(RemoteFile(archive.as_uri(), "archive/dataset.tar.gz", digest, "tar"),))
    with pytest.raises(FileNotFoundError):
        load_dataset(info, data_dir=tmp_path / "cache", download=False)
    a = load_dataset(info, data_dir=tmp_path / "cache")
    b = load_dataset(src)
    assert (a.X != b.X).nnz == 0 and a.obs["split"].tolist() == b.obs["split"].tolist()
    assert (tmp_path / "cache" / "archived" / src.train_slides[0]).is_dir()
