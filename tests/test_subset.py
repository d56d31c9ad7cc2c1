"""spared_lib.data.subset: the central crop of each slide and the split of a dataset that has none."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spared_lib import data


def _slides(n_slides=2, side=10, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.divmod(np.arange(side * side), side)
    xy = np.c_[50.0 * cols, 50.0 * rows] + rng.normal(0, 1, (side * side, 2))
    n = n_slides * side * side
    obs = pd.DataFrame({"slide_id": pd.Categorical(np.repeat([f"S{i}" for i in range(n_slides)], side * side))},
                       index=[f"spot{i}" for i in range(n)])
    adata = ad.AnnData(X=np.zeros((n, 3), np.float32), obs=obs)
    # each slide somewhere else on its image
    adata.obsm["spatial"] = np.vstack([xy + 1000 * i for i in range(n_slides)])
    return adata


def test_crop_keeps_the_spots_nearest_each_slide_centre_and_the_aligned_patches():
    adata = _slides(3)
    patches = np.arange(adata.n_obs)[:, None, None, None] * np.ones((1, 2, 2, 3), np.int64)
    small, small_patches = data.crop_slides(adata, 12, patches)
    assert (small.obs["slide_id"].value_counts() == 12).all()
    for s in adata.obs["slide_id"].cat.categories:
        xy = adata.obsm["spatial"][(adata.obs["slide_id"] == s).to_numpy()]
        d = np.sort(np.hypot(*(xy - xy.mean(0)).T))
        kept = small.obsm["spatial"][(small.obs["slide_id"] == s).to_numpy()]
        assert np.hypot(*(kept - xy.mean(0)).T).max() <= d[11] + 1e-9  # none dropped is nearer
    rows = np.flatnonzero(np.isin(adata.obs_names, small.obs_names))
    np.testing.assert_array_equal(small_patches[:, 0, 0, 0], rows)
    assert list(small.obs_names) == list(adata.obs_names[rows])  # original order kept
    # a slide with fewer spots than asked keeps them all
    assert data.crop_slides(adata, 10_000).n_obs == adata.n_obs


@pytest.mark.parametrize("bad, match", [(0, "max_spots"), (2.5, "max_spots")])
def test_crop_rejects_a_bad_size(bad, match):
    with pytest.raises(ValueError, match=match):
        data.crop_slides(_slides(), bad)


def test_crop_and_split_name_what_is_missing():
    adata = _slides()
    del adata.obsm["spatial"]
    with pytest.raises(KeyError, match=r"crop_slides: .*obsm\['spatial'\]"):
        data.crop_slides(adata, 5)
    adata = _slides()
    adata.obs = adata.obs.drop(columns="slide_id")
    with pytest.raises(KeyError, match=r"assign_splits: .*obs\['slide_id'\]"):
        data.assign_splits(adata)
    with pytest.raises(ValueError, match="patches has 3 rows"):
        data.crop_slides(_slides(), 5, np.zeros((3, 2, 2, 3)))


def test_three_or_more_slides_hold_out_whole_slides():
    adata = data.assign_splits(_slides(4))
    by_slide = adata.obs.groupby("slide_id", observed=True)["split"].agg(lambda s: set(s.astype(str)))
    assert by_slide.to_dict() == {"S0": {"train"}, "S1": {"train"}, "S2": {"val"}, "S3": {"test"}}
    assert list(adata.obs["split"].cat.categories) == ["train", "val", "test"]


@pytest.mark.parametrize("n_slides", [1, 2])
def test_one_or_two_slides_hold_out_bands_at_the_bottom_of_each(n_slides):
    adata = data.assign_splits(_slides(n_slides), test_fraction=0.2, val_fraction=0.1)
    for s in adata.obs["slide_id"].cat.categories:
        on = (adata.obs["slide_id"] == s).to_numpy()
        y = adata.obsm["spatial"][on, 1]
        split = adata.obs["split"].to_numpy()[on]
        assert (split == "test").mean() == pytest.approx(0.2) and (split == "val").mean() == pytest.approx(0.1)
        # bands: every test spot lies below every val spot, which lie below every train spot
        assert y[split == "test"].min() >= y[split == "val"].max()
        assert y[split == "val"].min() >= y[split == "train"].max()


def test_bad_split_requests_change_nothing():
    adata = _slides(2)
    adata.obs["split"] = "train"
    before = adata.obs.copy()
    with pytest.raises(ValueError, match="at least 3"):
        data.assign_splits(adata, by="slide")
    with pytest.raises(ValueError, match="leave spots"):
        data.assign_splits(adata, test_fraction=0.6, val_fraction=0.5)
    with pytest.raises(ValueError, match="by must be"):
        data.assign_splits(adata, by="random")
    tiny = _slides(1, side=2)
    with pytest.raises(ValueError, match="split would be empty"):
        data.assign_splits(tiny, test_fraction=0.1, val_fraction=0.1)
    pd.testing.assert_frame_equal(adata.obs, before)
    assert "split" not in tiny.obs
