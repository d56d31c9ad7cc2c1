"""The 19-token neighbourhood of SpaCKLE: a spot and its nearest spots of the same slide.

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

#: Search radius in units of the slide's spot spacing. Two hexagonal rings lie at distances
#: 1, sqrt(3) and 2; the third ring starts at sqrt(7) ~ 2.65, so 2.1 keeps exactly two rings.
#: On a square (legacy ST) array the 18 nearest positions reach sqrt(5) ~ 2.24.
DEFAULT_RADIUS = {"hex": 2.1, "square": 2.3}


def _slide_codes(adata) -> np.ndarray:
    if "slide_id" not in adata.obs:
        raise KeyError("adata.obs has no 'slide_id' column: neighbours are searched per slide")
    return np.asarray(adata.obs["slide_id"].astype("category").cat.codes)


def spot_neighbors(adata, n_neighbors: int = 18, radius: float | None | str = "auto") -> np.ndarray:
    """Index arrays of each spot's nearest spots in the same slide, the spot itself first.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` (pixel coordinates) and ``obs['slide_id']``.
    n_neighbors
        How many neighbours besides the spot itself (18 = two hexagonal rings, as SpaCKLE).
    radius
        Neighbours farther than ``radius`` times the slide's spot spacing (the median
        nearest-neighbour distance) are dropped, so border spots get fewer neighbours instead of
        far-away ones. ``'auto'`` picks 2.1 for hexagonal (Visium) and 2.3 for square grids from
        ``uns['dataset']['grid']``; ``None`` keeps the plain k nearest (the original's choice).

    Returns
    -------
    numpy.ndarray
        ``(n_obs, n_neighbors + 1)`` int64, column 0 the spot itself, the rest ordered by
        distance and padded with -1. Never an n x n matrix.
    """
    if "spatial" not in adata.obsm:
        raise KeyError("adata.obsm has no 'spatial' coordinates: cannot find spot neighbours")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    if radius == "auto":
        grid = adata.uns.get("dataset", {}).get("grid", "hex")
        radius = DEFAULT_RADIUS.get(grid, DEFAULT_RADIUS["hex"])
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    codes = _slide_codes(adata)
    out = np.full((adata.n_obs, n_neighbors + 1), -1, dtype=np.int64)
    out[:, 0] = np.arange(adata.n_obs)
    # One KD-tree per slide: a loop over slides (a handful), never over spots.
    for code in np.unique(codes):
        idx = np.flatnonzero(codes == code)
        k = min(n_neighbors + 1, idx.size)
        if k < 2:
            continue
        tree = cKDTree(coords[idx])
        dist, nn = tree.query(coords[idx], k=k)
        # The query returns the spot itself first except for exact duplicates; force it first.
        self_first = nn == np.arange(idx.size)[:, None]
        order = np.argsort(~self_first, axis=1, kind="stable")
        nn = np.take_along_axis(nn, order, axis=1)[:, 1:]
        dist = np.take_along_axis(dist, order, axis=1)[:, 1:]
        found = idx[nn]
        if radius is not None:
            spacing = np.median(tree.query(coords[idx], k=2)[0][:, 1])
            found = np.where(dist <= radius * spacing, found, -1)
        out[idx, 1 : k] = found
    return out
