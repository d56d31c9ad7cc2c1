"""Spot geometry, the one place for it: slides, spot spacing, nearest spots within a slide,
rings, radius neighbourhoods, the original's k-NN / grid graphs and k-hop neighbourhoods
(SPEC §2 step 6).

Every module that needs neighbours calls these (SpaCKLE's 19-token neighbourhood, the context
models' first ring, the SME baseline, the adaptive median, Moran's I). Neighbours never cross
slides. Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Search radius of :func:`nearest_in_slide` in units of the slide's spot spacing. Two hexagonal
#: rings lie at distances 1, sqrt(3) and 2; the third ring starts at sqrt(7) ~ 2.65, so 2.1 keeps
#: exactly two rings. On a square (legacy ST) array the 18 nearest positions reach sqrt(5) ~ 2.24.
DEFAULT_RADIUS = {"hex": 2.1, "square": 2.3}

#: First ring (:func:`first_ring`): how many neighbours and the radius in spot spacings. The first
#: hex ring is at 1 spacing (the second at sqrt(3)); the square array's diagonal at sqrt(2).
RING = {"hex": (6, 1.2), "square": (8, 1.5)}

#: Neighbours per spot in the original's squidpy graph: 6-NN on Visium, the 8-neighbour grid on ST.
ORIGINAL_NEIGHBOURS = {"hex": 6, "square": 8}


# --------------------------------------------------------------------------- slides
def slide_codes(adata) -> tuple[np.ndarray, np.ndarray]:
    """Integer slide code per spot and the slide ids, from ``obs['slide_id']``.

    Returns
    -------
    codes : (n_obs,) int64
        Position of each spot's slide in ``names`` (the column's category order).
    names : (n_slides,) object
        The slide ids. A missing column means one slide (a user's own single-section data),
        named ``'slide'``.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if "slide_id" not in adata.obs:
        return np.zeros(adata.n_obs, dtype=np.int64), np.array(["slide"], dtype=object)
    cat = adata.obs["slide_id"].astype("category")
    return cat.cat.codes.to_numpy().astype(np.int64), np.asarray(cat.cat.categories, dtype=object)


def slide_groups(adata) -> list[tuple[str, np.ndarray]]:
    """``[(slide_id, spot indices), ...]`` in category order, slides with no spot left out.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    codes, names = slide_codes(adata)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return [(str(names[i]), order[bounds[i]:bounds[i + 1]])
            for i in range(len(names)) if bounds[i + 1] > bounds[i]]


def _grid_of(adata, grid: str | None) -> str:
    if grid is None:
        grid = adata.uns.get("dataset", {}).get("grid", "hex") if hasattr(adata, "uns") else "hex"
    if grid not in ("hex", "square"):
        raise ValueError(f"grid must be 'hex' or 'square', got {grid!r}")
    return grid


def _coords(adata, what: str) -> np.ndarray:
    if "spatial" not in adata.obsm:
        raise KeyError(f"{what}: adata.obsm has no 'spatial' coordinates (pixel positions of the spots)")
    return np.asarray(adata.obsm["spatial"], dtype=np.float64)


def _knn_per_slide(coords: np.ndarray, codes: np.ndarray, k: int):
    """For each slide: ``(spot indices, distances, neighbour indices)`` of the ``k`` nearest spots
    of the same slide (fewer on a slide with fewer spots), the spot itself forced into column 0
    (a KD-tree returns an exact duplicate position in either order). One tree per slide: a loop
    over slides (a handful), never over spots."""
    from scipy.spatial import cKDTree

    for code in np.unique(codes):
        idx = np.flatnonzero(codes == code)
        kk = min(k, idx.size)
        tree = cKDTree(coords[idx])
        dist, nn = tree.query(coords[idx], k=kk)
        dist, nn = dist.reshape(idx.size, kk), nn.reshape(idx.size, kk)
        order = np.argsort(nn != np.arange(idx.size)[:, None], axis=1, kind="stable")
        yield idx, np.take_along_axis(dist, order, axis=1), idx[np.take_along_axis(nn, order, axis=1)]


def spot_spacing(adata) -> pd.Series:
    """Spot spacing of each slide: the median distance from a spot to its nearest spot, in the
    units of ``obsm['spatial']`` (full-resolution pixels). NaN for a slide with a single spot.

    Every radius in this module is given in these units, so one value works for any scan
    resolution (Visium: 100 µm centre to centre).

    Returns
    -------
    pandas.Series
        Indexed by slide id (the order of :func:`slide_codes`), named ``'spot_spacing'``.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    codes, names = slide_codes(adata)
    out = np.full(len(names), np.nan)
    for idx, dist, _ in _knn_per_slide(_coords(adata, "spot_spacing"), codes, 2):
        if dist.shape[1] > 1:
            out[codes[idx[0]]] = np.median(dist[:, 1])
    return pd.Series(out, index=pd.Index(names.astype(str), name="slide_id"), name="spot_spacing")


# --------------------------------------------------------------------------- k nearest, rings, radius
def nearest_in_slide(adata, n_neighbors: int = 18, radius: float | None | str = "auto") -> np.ndarray:
    """Index arrays of each spot's nearest spots in the same slide, the spot itself first.

    SpaCKLE's 19-token neighbourhood is ``nearest_in_slide(adata, 18)``.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` (pixel coordinates) and ``obs['slide_id']`` (missing:
        one slide).
    n_neighbors
        How many neighbours besides the spot itself (18 = two hexagonal rings, as SpaCKLE).
    radius
        Neighbours farther than ``radius`` times the slide's :func:`spot_spacing` are dropped,
        so border spots get fewer neighbours instead of far-away ones. ``'auto'`` picks
        :data:`DEFAULT_RADIUS` (2.1 for hexagonal Visium, 2.3 for square grids) from
        ``uns['dataset']['grid']``; ``None`` keeps the plain k nearest (the original's choice).

    Returns
    -------
    numpy.ndarray
        ``(n_obs, n_neighbors + 1)`` int64, column 0 the spot itself, the rest ordered by
        distance and padded with -1. Never an n x n matrix.

    Defined in ``notebooks/02_preprocessing.py``; used by ``notebooks/03_spackle.py``.
    """
    coords = _coords(adata, "nearest_in_slide")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    if radius == "auto":
        radius = DEFAULT_RADIUS[_grid_of(adata, None)]
    codes, _ = slide_codes(adata)
    out = np.full((adata.n_obs, n_neighbors + 1), -1, dtype=np.int64)
    out[:, 0] = np.arange(adata.n_obs)
    for idx, dist, found in _knn_per_slide(coords, codes, n_neighbors + 1):
        if idx.size < 2:
            continue
        found, dist = found[:, 1:], dist[:, 1:]
        if radius is not None:
            spacing = np.median(dist[:, 0])  # column 1 of the query: the nearest other spot
            found = np.where(dist <= radius * spacing, found, -1)
        out[idx, 1:1 + found.shape[1]] = found
    return out


def first_ring(adata, grid: str | None = None) -> np.ndarray:
    """``(n, K + 1)`` int64 positions of each spot (column 0) and its adjacent spots, -1 padded.

    Hex (Visium) grids: the 6 spots of the first ring (K = 6); square (legacy ST): the 8 around
    (K = 8), from :func:`nearest_in_slide` with the radii in :data:`RING`. ``grid`` defaults to
    ``uns['dataset']['grid']``. Neighbours never cross slides.

    Defined in ``notebooks/02_preprocessing.py``; the context models of
    ``notebooks/05_context_models.py`` use it.
    """
    k, radius = RING[_grid_of(adata, grid)]
    return nearest_in_slide(adata, n_neighbors=k, radius=radius)


def within_radius(adata, radius: float, max_neighbors: int = 63) -> np.ndarray:
    """Each spot and the spots of its slide strictly closer than ``radius`` spot spacings.

    Parameters
    ----------
    radius
        In units of the slide's :func:`spot_spacing` (a slide with one spot has spacing 1).
    max_neighbors
        At most this many neighbours besides the spot (the nearest ones).

    Returns
    -------
    numpy.ndarray
        ``(n_obs, min(max_neighbors + 1, n_obs))`` int64, column 0 the spot itself, then the
        neighbours by increasing distance, padded with -1.

    Defined in ``notebooks/02_preprocessing.py``; stLearn's SME baseline
    (``notebooks/03_spackle.py``) reads its neighbourhood from it.
    """
    coords = _coords(adata, "within_radius")
    if max_neighbors < 0:
        raise ValueError(f"max_neighbors must be >= 0, got {max_neighbors}")
    codes, _ = slide_codes(adata)
    width = min(max_neighbors + 1, adata.n_obs)
    out = np.full((adata.n_obs, width), -1, dtype=np.int64)
    for idx, dist, found in _knn_per_slide(coords, codes, width):
        spacing = np.median(dist[:, 1]) if idx.size > 1 else 1.0
        out[idx, :found.shape[1]] = np.where(dist < radius * spacing, found, -1)
    return out


# --------------------------------------------------------------------------- graphs and k-hop sets
# Lattice offsets (array_row, array_col) of the adjacent positions.
_HEX_OFFSETS = np.array([(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)])
_SQUARE_OFFSETS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)])


@contextlib.contextmanager
def _quiet_squidpy():
    """squidpy logs one INFO line per graph; we build one per slide, so silence it."""
    loggers = [logging.getLogger(n) for n in ("spatialdata._logging", "spatialdata", "squidpy")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _import_squidpy():
    """squidpy, imported with docrep's SyntaxWarnings silenced.

    squidpy's docstring templates name parameters that docrep cannot find, and docrep reports
    each as a ``SyntaxWarning`` from ``docrep.decorators`` on the first import (a dozen lines on
    top of a notebook cell). Only that category from that module is ignored, only here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=SyntaxWarning, module=r"docrep(\.|$)")
        import squidpy

    return squidpy


def _squidpy_graph(coords: np.ndarray, grid: str) -> sp.csr_matrix:
    """The graph the original builds with squidpy: 6-NN on pixel coordinates for hex (Visium)
    data; squidpy's grid mode with 8 neighbours for square (legacy ST) data."""
    import anndata as ad

    sq = _import_squidpy()
    tmp = ad.AnnData(obs={"i": np.arange(len(coords))}, obsm={"spatial": np.asarray(coords, dtype=np.float64)})
    knn = getattr(sq.gr, "spatial_neighbors_knn", None)
    with _quiet_squidpy():
        if knn is not None:  # squidpy >= 1.7: the mode-specific functions
            if grid == "hex":
                res = sq.gr.spatial_neighbors_knn(tmp, n_neighs=ORIGINAL_NEIGHBOURS[grid], copy=True)
            else:
                res = sq.gr.spatial_neighbors_grid(tmp, n_neighs=ORIGINAL_NEIGHBOURS[grid], copy=True)
            adj = res.connectivities
        else:
            kw = dict(coord_type="generic") if grid == "hex" else dict(coord_type="grid")
            adj, _ = sq.gr.spatial_neighbors(tmp, copy=True, n_neighs=ORIGINAL_NEIGHBOURS[grid], **kw)
    adj = sp.csr_matrix(adj)
    adj.setdiag(0)
    adj.eliminate_zeros()
    return adj


def _lattice_graph(rows: np.ndarray, cols: np.ndarray, grid: str) -> sp.csr_matrix:
    """Edges between spots at adjacent array positions only (no border effects)."""
    offsets = _HEX_OFFSETS if grid == "hex" else _SQUARE_OFFSETS
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    span = int(cols.max() - cols.min()) + 5
    base_c = cols.min() - 2
    key = rows * span + (cols - base_c)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    if np.any(np.diff(sorted_key) == 0):
        raise ValueError("two spots share an array position (array_row, array_col) in one slide")
    qr = rows[:, None] + offsets[None, :, 0]
    qc = cols[:, None] + offsets[None, :, 1]
    qkey = qr * span + (qc - base_c)
    pos = np.clip(np.searchsorted(sorted_key, qkey), 0, len(key) - 1)
    hit = (sorted_key[pos] == qkey) & (qc - base_c >= 0) & (qc - base_c < span)
    src = np.broadcast_to(np.arange(len(rows))[:, None], hit.shape)[hit]
    dst = order[pos[hit]]
    n = len(rows)
    return sp.csr_matrix((np.ones(src.size, np.float32), (src, dst)), shape=(n, n))


def spatial_neighbors(adata, grid: str | None = None, method: str = "original") -> sp.csr_matrix:
    """Adjacency of spots, built slide by slide (never across slides), block-diagonal over ``adata``.

    ``method='original'`` reproduces SpaRED: hex (Visium) — the 6 nearest spots in pixel space
    (``obsm['spatial']``), as squidpy's ``coord_type='generic', n_neighs=6``; a directed graph in
    which border spots point to farther spots. Square (legacy ST) — squidpy's grid graph with 8
    neighbours. ``method='lattice'`` links only adjacent array positions
    (``obs['array_row']``, ``obs['array_col']``; 6 on hex, 8 on square). ``grid`` defaults to
    ``adata.uns['dataset']['grid']``, else ``'hex'``. Row i lists the neighbours of spot i; the
    diagonal is empty.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    grid = _grid_of(adata, grid)
    if method not in ("original", "lattice"):
        raise ValueError(f"method must be 'original' or 'lattice', got {method!r}")
    if method == "original":
        positions = _coords(adata, "spatial_neighbors")
    else:
        for c in ("array_row", "array_col"):
            if c not in adata.obs:
                raise KeyError(f"spatial_neighbors(method='lattice'): adata.obs[{c!r}] is missing")
        positions = adata.obs[["array_row", "array_col"]].to_numpy()
    codes, names = slide_codes(adata)
    return spot_graph(positions, codes, names, grid, method)


def spot_graph(positions: np.ndarray, codes: np.ndarray, names, grid: str = "hex",
               method: str = "original") -> sp.csr_matrix:
    """:func:`spatial_neighbors` on arrays: ``positions`` are pixel coordinates (``'original'``)
    or ``(array_row, array_col)`` (``'lattice'``), ``codes``/``names`` from :func:`slide_codes`.

    Raises ``ValueError`` naming the slide when one is too small for the original graph (each
    spot linked to its 6, or on a square grid 8, nearest spots needs that many more).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    n = len(codes)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    rows, cols = [], []
    for s in range(len(names)):  # slides: a handful of iterations
        idx = order[bounds[s]:bounds[s + 1]]
        if method == "original" and 0 < idx.size <= ORIGINAL_NEIGHBOURS[grid]:
            raise ValueError(
                f"slide {names[s]!r} has {idx.size} spot(s): SpaRED's neighbour graph links each spot to "
                f"its {ORIGINAL_NEIGHBOURS[grid]} nearest spots of the slide, so a slide needs at least "
                f"{ORIGINAL_NEIGHBOURS[grid] + 1}. Drop the slide, or use method='lattice' (adjacent array "
                "positions only)")
        if idx.size < 2:
            continue
        if method == "original":
            g = _squidpy_graph(positions[idx], grid).tocoo()
        else:
            g = _lattice_graph(positions[idx, 0], positions[idx, 1], grid).tocoo()
        rows.append(idx[g.row])
        cols.append(idx[g.col])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    adj = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(n, n))
    adj.sum_duplicates()
    adj.data[:] = 1.0
    return adj


def khop_adjacencies(adj: sp.spmatrix, n_hops: int) -> list[sp.csr_matrix]:
    """Boolean k-hop neighbourhoods for k = 1..n_hops, each including the spot itself.

    The k-hop set of spot i is i plus every spot reachable by a path of 1..k edges: the pattern of
    (I + A)^k, the union of the adjacency powers A^0..A^k.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if n_hops < 1:
        raise ValueError(f"n_hops must be at least 1, got {n_hops}")
    A = sp.csr_matrix(adj, dtype=np.float32)
    step = (A + sp.identity(A.shape[0], dtype=np.float32, format="csr")).astype(bool).astype(np.float32)
    out, cur = [], step
    for _ in range(n_hops):
        cur = cur.tocsr()
        cur.data[:] = 1.0  # keep values bounded: only the pattern matters
        cur.sort_indices()
        out.append(cur.astype(bool))
        cur = cur @ step
    return out


def index_from_adjacency(N: sp.csr_matrix) -> np.ndarray:
    """``(n, K)`` int64 neighbour indices of a boolean neighbourhood matrix, the spot itself first,
    then its neighbours in increasing index order, padded with -1.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    N = sp.csr_matrix(N, dtype=bool, copy=True)  # setdiag below must not touch the caller's matrix
    N.setdiag(False)
    N.eliminate_zeros()
    N.sort_indices()
    n = N.shape[0]
    deg = np.diff(N.indptr)
    K = int(deg.max(initial=0)) + 1
    out = np.full((n, K), -1, dtype=np.int64)
    out[:, 0] = np.arange(n)
    pos = np.arange(N.indices.size) - np.repeat(N.indptr[:-1], deg) + 1
    out[np.repeat(np.arange(n), deg), pos] = N.indices
    return out


def khop_index(adata, n_hops: int, grid: str | None = None, method: str = "original",
               adjacency: sp.spmatrix | None = None) -> np.ndarray:
    """``(n, K)`` int64 indices of each spot's k-hop neighbourhood (itself first), padded with -1.

    On a Visium hex lattice the sizes are 7, 19, 37, 61 spots for k = 1..4. ``adjacency`` defaults
    to :func:`spatial_neighbors` (``grid``, ``method``).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    adj = spatial_neighbors(adata, grid=grid, method=method) if adjacency is None else adjacency
    return index_from_adjacency(khop_adjacencies(adj, n_hops)[-1])
