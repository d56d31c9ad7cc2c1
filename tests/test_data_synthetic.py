"""The synthetic Visium generator: geometry, counts, image and determinism (spared_lib.data)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spared_lib.data import (gene_table, load_dataset, make_synthetic_dataset, read_visium,
                             array_spot_spacing, synthetic_truth, visium_array)


def test_visium_array_geometry():
    rc, xy = visium_array()
    assert len(rc) == 78 * 128 // 2 == 4992
    assert ((rc[:, 0] + rc[:, 1]) % 2 == 0).all()
    # Every interior spot has six neighbours at exactly 100 µm (hex grid, 100 µm pitch).
    from scipy.spatial import cKDTree

    d, _ = cKDTree(xy).query(xy, k=7)
    interior = (rc[:, 0] > 0) & (rc[:, 0] < 77) & (rc[:, 1] > 1) & (rc[:, 1] < 126)
    np.testing.assert_allclose(d[interior, 1:], 100.0, atol=1e-9)


def test_contract(synthetic_adata, synthetic_info):
    a = synthetic_adata
    assert a.n_obs == 3 * 300 and a.n_vars == 1000
    assert sp.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    assert np.array_equal(a.X.data, np.round(a.X.data)) and (a.X.data > 0).all()
    assert isinstance(a.obs["slide_id"].dtype, pd.CategoricalDtype)
    assert list(a.obs["slide_id"].cat.categories) == list(synthetic_info.slides)
    assert a.obs.groupby("slide_id", observed=True)["split"].first().tolist() == ["train", "val", "test"]
    assert a.obs["in_tissue"].all() and a.obs_names.is_unique
    assert a.obsm["spatial"].shape == (a.n_obs, 2)
    assert a.var_names.str.startswith("ENSG").all()
    table = gene_table("human")
    assert (table.loc[a.var_names, "gene_symbol"].to_numpy() == a.var["gene_symbol"].to_numpy()).all()
    assert a.uns["dataset"] == {"key": "synthetic", "organism": "human", "n_genes": 32,
                                "combat_key": "slide_id", "cell_min_counts": 10, "grid": "hex"}
    for slide in synthetic_info.slides:
        sf = a.uns["spatial"][slide]["scalefactors"]
        # 2 µm/px: the 100 µm pitch is 50 px; Space Ranger's diameter convention is 65 µm.
        assert sf["spot_spacing_fullres"] == pytest.approx(50.0, rel=1e-6)
        assert sf["spot_diameter_fullres"] == pytest.approx(32.5)
        assert set(a.uns["spatial"][slide]["images"]) == {"hires", "lowres"}


def test_zero_fraction_and_spatial_autocorrelation(synthetic_adata):
    a = synthetic_adata
    zero = 1 - a.X.nnz / np.prod(a.shape)
    assert 0.70 <= zero <= 0.95
    # Moran's I of log counts on one slide, 6-NN graph: the expressed genes are spatially
    # autocorrelated far beyond what shuffling the spots gives.
    s = a[a.obs["slide_id"] == a.obs["slide_id"].cat.categories[0]]
    expressed = np.asarray((s.X > 0).mean(0)).ravel() > 0.5
    y = np.log1p(s.X[:, expressed].toarray())
    from scipy.spatial import cKDTree

    _, nn = cKDTree(s.obsm["spatial"]).query(s.obsm["spatial"], k=7)
    W = sp.csr_matrix((np.ones(nn[:, 1:].size), (np.repeat(np.arange(len(y)), 6), nn[:, 1:].ravel())),
                      shape=(len(y), len(y)))

    def moran(v):
        z = v - v.mean(0)
        return len(v) / W.sum() * (z * (W @ z)).sum(0) / (z**2).sum(0)

    real = moran(y)
    shuffled = moran(y[np.random.default_rng(0).permutation(len(y))])
    assert expressed.sum() >= 32
    assert np.median(real) > 0.2 and np.median(real) > np.median(shuffled) + 0.15


def test_batch_effect_between_slides(synthetic_adata):
    a = synthetic_adata
    log_mean = np.stack([np.log1p(np.asarray(a.X[(a.obs["slide_id"] == s).to_numpy()].mean(0)).ravel())
                         for s in a.obs["slide_id"].cat.categories])
    # Same biology (means correlate strongly) but not identical slides (a per-slide offset).
    r = np.corrcoef(log_mean)[0, 1]
    assert 0.8 < r < 0.999


def test_image_follows_domains(synthetic_adata):
    """Mean patch colour differs between domains more than within them (image → expression)."""
    a = synthetic_adata
    truth = synthetic_truth(a)
    slide = a.obs["slide_id"].cat.categories[0]
    from PIL import Image

    img = np.asarray(Image.open(a.uns["spatial"][slide]["fullres_path"]))
    sel = (a.obs["slide_id"] == slide).to_numpy()
    xy = np.round(a.obsm["spatial"][sel]).astype(int)
    r = 12
    means = np.stack([img[y - r:y + r, x - r:x + r].reshape(-1, 3).mean(0) for x, y in xy])
    dom = truth.loc[a.obs_names[sel], "domain"].to_numpy()
    labels, counts = np.unique(dom, return_counts=True)
    assert len(labels) >= 3
    grand = means.mean(0)
    between = sum(c * ((means[dom == k].mean(0) - grand) ** 2).sum() for k, c in zip(labels, counts))
    within = sum(((means[dom == k] - means[dom == k].mean(0)) ** 2).sum() for k in labels)
    assert between / (between + within) > 0.3  # the domain explains a good share of colour variance
    assert img.shape[2] == 3 and img.dtype == np.uint8


def test_deterministic_and_reader_roundtrip(tmp_path):
    a_info = make_synthetic_dataset(tmp_path / "a", n_slides=2, n_spots=60, n_genes=200, seed=3)
    b_info = make_synthetic_dataset(tmp_path / "b", n_slides=2, n_spots=60, n_genes=200, seed=3)
    c_info = make_synthetic_dataset(tmp_path / "c", n_slides=2, n_spots=60, n_genes=200, seed=4)
    a, b, c = (load_dataset(i) for i in (a_info, b_info, c_info))
    assert (a.X != b.X).nnz == 0 and np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    assert a.shape == c.shape and ((a.X != c.X).nnz > 0)
    # The slide folder is a valid Space Ranger 2.x output: positions with header, all 4,992 spots.
    slide = tmp_path / "a" / a_info.train_slides[0]
    positions = pd.read_csv(slide / "spatial" / "tissue_positions.csv")
    assert len(positions) == 4992 and positions["in_tissue"].sum() == 60
    one = read_visium(slide)
    assert one.n_obs == 60 and one.uns["spatial"][slide.name]["metadata"]["layout"] == "spaceranger_2"


def test_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_dataset(tmp_path, n_slides=2, n_spots=50, n_genes=100)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_spot_spacing_hand_computed():
    # Square grid, 30 px pitch, rotated by 90 degrees: spacing 30 regardless of orientation.
    rc = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 3]])
    xy = np.c_[rc[:, 0] * 30.0, -rc[:, 1] * 30.0] + 5
    assert array_spot_spacing(rc, xy, "square")[0] == pytest.approx(30.0)
    # Hex: array columns 2 apart are one pitch (here 40 px) apart.
    rc = np.array([[0, 0], [0, 2], [1, 1], [1, 3]])
    xy = np.c_[rc[:, 1] * 20.0, rc[:, 0] * 20.0 * np.sqrt(3)]
    assert array_spot_spacing(rc, xy, "hex")[0] == pytest.approx(40.0)
