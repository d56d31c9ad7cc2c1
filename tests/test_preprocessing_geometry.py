"""Tests of spared_lib.preprocessing.geometry: slides, spot spacing, nearest spots, rings and
radius neighbourhoods against brute-force distance matrices."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spared_lib import preprocessing as pp


def lattice(n_rows, n_cols, spacing, grid):
    """Pixel coordinates of a perfect hex (Visium) or square (legacy ST) array."""
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    if grid == "hex":
        x, y = (c + 0.5 * (r % 2)) * spacing, r * spacing * np.sqrt(3) / 2
    else:
        x, y = c * spacing, r * spacing
    return np.c_[x.ravel(), y.ravel()].astype(np.float64)


def slides(grid="hex", spacings=(100.0, 40.0), n=(9, 11), same_coords=False):
    """One lattice per slide; slides share coordinates when ``same_coords`` (neighbours must not cross)."""
    coords, ids = [], []
    for s, sp_ in enumerate(spacings):
        xy = lattice(*n, spacings[0] if same_coords else sp_, grid)
        coords.append(xy)
        ids += [f"S{s}"] * len(xy)
    a = ad.AnnData(np.zeros((len(ids), 1), np.float32))
    a.obs_names = [f"spot{i}" for i in range(a.n_obs)]
    a.obs["slide_id"] = pd.Categorical(ids)
    a.obsm["spatial"] = np.vstack(coords)
    a.uns["dataset"] = {"grid": grid}
    return a


def brute(a, cut, strict=False):
    """Per spot: same-slide spots within ``cut`` spacings of the slide's spacing, by distance."""
    xy, codes = a.obsm["spatial"], a.obs["slide_id"].cat.codes.to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    d[codes[:, None] != codes[None]] = np.inf
    spacing = np.array([np.median(np.sort(d[codes == s][:, codes == s], axis=1)[:, 1]) for s in np.unique(codes)])
    lim = cut * spacing[codes][:, None]
    inside = (d < lim) if strict else (d <= lim + 1e-9)
    return d, inside


def test_slide_codes_follow_the_category_order_and_default_to_one_slide():
    a = slides()
    a.obs["slide_id"] = pd.Categorical(a.obs["slide_id"], categories=["S1", "S0", "unused"])
    codes, names = pp.slide_codes(a)
    assert list(names) == ["S1", "S0", "unused"] and codes.dtype == np.int64
    assert (codes[a.obs["slide_id"] == "S0"] == 1).all() and (codes[a.obs["slide_id"] == "S1"] == 0).all()
    assert [s for s, _ in pp.slide_groups(a)] == ["S1", "S0"]  # empty slide left out
    del a.obs["slide_id"]
    codes, names = pp.slide_codes(a)
    assert (codes == 0).all() and list(names) == ["slide"]


@pytest.mark.parametrize("grid", ["hex", "square"])
def test_spot_spacing_is_the_lattice_step_per_slide(grid):
    a = slides(grid, spacings=(100.0, 40.0))
    s = pp.spot_spacing(a)
    assert list(s.index) == ["S0", "S1"]
    np.testing.assert_allclose(s.to_numpy(), [100.0, 40.0], rtol=1e-12)
    one = a[:1].copy()
    assert np.isnan(pp.spot_spacing(one).iloc[0])


@pytest.mark.parametrize("grid", ["hex", "square"])
def test_nearest_in_slide_matches_brute_force(grid):
    a = slides(grid, same_coords=True)  # identical coordinates in both slides
    nbr = pp.nearest_in_slide(a, n_neighbors=18)
    assert nbr.shape == (a.n_obs, 19) and nbr.dtype == np.int64
    assert (nbr[:, 0] == np.arange(a.n_obs)).all()
    d, inside = brute(a, pp.DEFAULT_RADIUS[grid])
    codes = a.obs["slide_id"].cat.codes.to_numpy()
    valid = nbr >= 0
    assert (codes[np.where(valid, nbr, 0)] == codes[:, None])[valid].all()
    n_within = inside.sum(1) - 1
    np.testing.assert_array_equal(valid[:, 1:].sum(1), np.minimum(n_within, 18))
    assert (valid[:, 1:].sum(1) == 18).any() and (valid[:, 1:].sum(1) < 18).any()
    # the found ones are within the radius and ordered by distance; padding only at the end
    got = np.where(valid, d[np.arange(a.n_obs)[:, None], np.where(valid, nbr, 0)], 1e18)
    assert (np.diff(got, axis=1) >= -1e-9).all()
    assert inside[np.arange(a.n_obs)[:, None], np.where(valid, nbr, 0)][valid].all()
    # radius=None: the plain k nearest, every row full
    assert (pp.nearest_in_slide(a, n_neighbors=6, radius=None) >= 0).all()


def test_nearest_in_slide_puts_the_spot_first_on_duplicate_positions():
    a = slides(spacings=(100.0,), n=(4, 4))
    a.obsm["spatial"][1] = a.obsm["spatial"][0]
    nbr = pp.nearest_in_slide(a, n_neighbors=3, radius=None)
    assert (nbr[:, 0] == np.arange(a.n_obs)).all()
    assert nbr[0, 1] == 1 and nbr[1, 1] == 0


@pytest.mark.parametrize("grid, k", [("hex", 6), ("square", 8)])
def test_first_ring_is_the_adjacent_positions(grid, k):
    a = slides(grid)
    ring = pp.first_ring(a)
    assert ring.shape == (a.n_obs, k + 1)
    d, _ = brute(a, 1.0)
    codes = a.obs["slide_id"].cat.codes.to_numpy()
    spacing = pp.spot_spacing(a).to_numpy()[codes]
    # adjacent = the first ring: 1 spacing on hex; 1 and sqrt(2) on the square array
    adjacent = d <= spacing[:, None] * (1.0 if grid == "hex" else np.sqrt(2)) * (1 + 1e-9)
    np.fill_diagonal(adjacent, False)
    expect = [set(np.flatnonzero(row)) for row in adjacent]
    got = [set(r[1:][r[1:] >= 0]) for r in ring]
    assert got == expect
    assert max(len(e) for e in expect) == k and min(len(e) for e in expect) < k


def test_within_radius_is_strict_and_capped():
    a = slides("hex")
    # 3 spacings: the hex lattice has spots at exactly 3 (three steps along a row): left out
    idx = pp.within_radius(a, 3.0, max_neighbors=63)
    d, inside = brute(a, 3.0, strict=True)
    assert idx.shape == (a.n_obs, 64) and (idx[:, 0] == np.arange(a.n_obs)).all()
    got = [set(r[r >= 0]) for r in idx]
    assert got == [set(np.flatnonzero(row)) for row in inside]
    capped = pp.within_radius(a, 3.0, max_neighbors=5)
    assert capped.shape == (a.n_obs, 6)
    # the 6 nearest (ties at equal distance may come in any order)
    rows = np.arange(a.n_obs)[:, None]
    dist = lambda i: np.where(i >= 0, d[rows, np.where(i >= 0, i, 0)], 1e18)  # noqa: E731
    np.testing.assert_allclose(dist(capped), dist(idx[:, :6]))
    assert all(set(c[c >= 0]) <= g for c, g in zip(capped, got))
    one = a[:1].copy()  # a single spot: spacing 1, the spot alone
    np.testing.assert_array_equal(pp.within_radius(one, 3.0), [[0]])


def test_geometry_errors_name_the_problem():
    a = slides()
    del a.obsm["spatial"]
    for f in (pp.nearest_in_slide, pp.first_ring, pp.spot_spacing):
        with pytest.raises(KeyError, match="obsm has no 'spatial'"):
            f(a)
    a = slides()
    with pytest.raises(ValueError, match="n_neighbors must be >= 1"):
        pp.nearest_in_slide(a, 0)
    a.uns["dataset"]["grid"] = "honeycomb"
    with pytest.raises(ValueError, match="grid must be 'hex' or 'square'"):
        pp.first_ring(a)
