"""Spot neighbourhoods within each slide: the original's k-NN / grid graphs, a pure-lattice
option, and k-hop neighbourhoods as unions of adjacency powers (SPEC §2 step 6).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import scipy.sparse as sp

from ._common import slide_groups

# Lattice offsets (array_row, array_col) of the adjacent positions.
_HEX_OFFSETS = np.array([(0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1)])
_SQUARE_OFFSETS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)])


def _grid_of(adata, grid: str | None) -> str:
    grid = grid or adata.uns.get("dataset", {}).get("grid", "hex")
    if grid not in ("hex", "square"):
        raise ValueError(f"grid must be 'hex' or 'square', got {grid!r}")
    return grid


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


def _squidpy_graph(coords: np.ndarray, grid: str) -> sp.csr_matrix:
    """The graph the original builds with squidpy: 6-NN on pixel coordinates for hex (Visium)
    data; squidpy's grid mode with 8 neighbours for square (legacy ST) data."""
    import anndata as ad
    import squidpy as sq

    tmp = ad.AnnData(obs={"i": np.arange(len(coords))}, obsm={"spatial": np.asarray(coords, dtype=np.float64)})
    knn = getattr(sq.gr, "spatial_neighbors_knn", None)
    with _quiet_squidpy():
        if knn is not None:  # squidpy >= 1.7: the mode-specific functions
            if grid == "hex":
                res = sq.gr.spatial_neighbors_knn(tmp, n_neighs=6, copy=True)
            else:
                res = sq.gr.spatial_neighbors_grid(tmp, n_neighs=8, copy=True)
            adj = res.connectivities
        else:
            kw = dict(coord_type="generic", n_neighs=6) if grid == "hex" else dict(coord_type="grid", n_neighs=8)
            adj, _ = sq.gr.spatial_neighbors(tmp, copy=True, **kw)
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
    if method == "original" and "spatial" not in adata.obsm:
        raise KeyError("spatial_neighbors: adata.obsm['spatial'] (pixel coordinates) is missing")
    if method == "lattice":
        for c in ("array_row", "array_col"):
            if c not in adata.obs:
                raise KeyError(f"spatial_neighbors(method='lattice'): adata.obs[{c!r}] is missing")
    n = adata.n_obs
    rows, cols = [], []
    for _, idx in slide_groups(adata):
        if idx.size < 2:
            continue
        if method == "original":
            g = _squidpy_graph(adata.obsm["spatial"][idx], grid).tocoo()
        else:
            g = _lattice_graph(adata.obs["array_row"].to_numpy()[idx],
                               adata.obs["array_col"].to_numpy()[idx], grid).tocoo()
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
