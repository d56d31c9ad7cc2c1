"""SpaRED's adaptive median completion of zero entries, vectorised (SPEC §2 step 6).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._common import get_layer, require_finite
from .geometry import index_from_adjacency, khop_adjacencies, slide_codes, spatial_neighbors

# Elements gathered at once (float64): bounds the working memory at ~128 MB per chunk.
_CHUNK_ELEMS = 1 << 24


def _masked_median(vals: np.ndarray, n_valid: np.ndarray) -> np.ndarray:
    """Median of the first ``n_valid[i]`` values of row i after sorting, padding = +inf.

    Matches ``np.median``: the middle value, or the mean of the two middle values.
    """
    vals.sort(axis=1)
    lo = ((n_valid - 1) // 2)[:, None]
    hi = (n_valid // 2)[:, None]
    a = np.take_along_axis(vals, lo, axis=1)[:, 0]
    b = np.take_along_axis(vals, hi, axis=1)[:, 0]
    return (a + b) / 2


def nonzero_medians(X: np.ndarray, codes: np.ndarray, n_slides: int) -> np.ndarray:
    """``(n_slides, G)`` median of each gene's non-zero values within each slide (0 if none).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    out = np.zeros((n_slides, X.shape[1]))
    for s in range(n_slides):  # slides, not spots: a handful of iterations
        rows = np.flatnonzero(codes == s)
        if rows.size == 0:
            continue
        step = max(1, _CHUNK_ELEMS // rows.size)
        for g0 in range(0, X.shape[1], step):
            block = X[rows, g0:g0 + step].T.copy()  # (genes, spots)
            nz = (block != 0).sum(axis=1)
            block[block == 0] = np.inf
            med = _masked_median(block, np.maximum(nz, 1))
            out[s, g0:g0 + step] = np.where(nz > 0, med, 0.0)
    return out


def _median_of_entries(Xpad: np.ndarray, index: np.ndarray, sizes: np.ndarray,
                       r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Median of gene c over the neighbourhood ``index[r]`` for each entry (r, c), in chunks."""
    K = index.shape[1]
    out = np.empty(r.size)
    step = max(1, _CHUNK_ELEMS // K)
    for s in range(0, r.size, step):
        rr, cc = r[s:s + step], c[s:s + step]
        vals = Xpad[index[rr], cc[:, None]]  # -1 picks the +inf padding row
        out[s:s + step] = _masked_median(vals, sizes[rr])
    return out


def adaptive_median_array(X: np.ndarray, neighborhoods: list[sp.csr_matrix], codes: np.ndarray,
                          n_slides: int, out: np.ndarray | None = None) -> np.ndarray:
    """Adaptive median completion of a (spots, genes) array.

    Each zero entry (i, g) becomes the median of gene g over the first neighbourhood
    ``neighborhoods[k][i]`` (k = 0, 1, ...) whose median is non-zero; if none is, the median of the
    slide's non-zero values of g (0 if the gene is all zero in the slide). Non-zero entries are
    untouched. ``out`` may be ``X`` itself (in place).

    For non-negative data, the median of a neighbourhood is zero exactly when more than half of
    its entries are zero, so a sparse product counting zeros picks each entry's hop and only that
    one median is computed. Data with negative values take the general path (a median per hop).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = np.asarray(X, dtype=np.float64)
    require_finite(X, "adaptive_median input")
    n, G = X.shape
    nonneg = bool((X >= 0).all())
    general = nonzero_medians(X, codes, n_slides)
    indices = [index_from_adjacency(N) for N in neighborhoods]
    sizes = [np.asarray(N.sum(axis=1)).ravel().astype(np.int64) for N in neighborhoods]
    sizes = [np.maximum(s, 1) for s in sizes]
    NF = [sp.csr_matrix(N, dtype=np.float32) for N in neighborhoods]
    if out is None:
        out = X.copy()
    # Work gene block by gene block: every median of block b reads only block b's input values,
    # so the block is copied before it is filled and ``out`` may alias ``X``.
    gstep = max(1, min(G, _CHUNK_ELEMS // max(n, 1) // 2))
    for g0 in range(0, G, gstep):
        cols = np.arange(g0, min(G, g0 + gstep))
        Xb = X[:, cols].copy()
        Xpad = np.vstack([Xb, np.full((1, cols.size), np.inf)])
        zero = Xb == 0
        r, c = np.nonzero(zero)
        filled = np.zeros(r.size)
        done = np.zeros(r.size, dtype=bool)
        zf = zero.astype(np.float32) if nonneg else None
        for k in range(len(neighborhoods)):
            todo = np.flatnonzero(~done)
            if todo.size == 0:
                break
            if nonneg:
                nzeros = (NF[k] @ zf)[r[todo], c[todo]]
                todo = todo[2 * nzeros <= sizes[k][r[todo]]]
            med = _median_of_entries(Xpad, indices[k], sizes[k], r[todo], c[todo])
            hit = med != 0
            filled[todo[hit]] = med[hit]
            done[todo[hit]] = True
        rest = ~done
        filled[rest] = general[codes[r[rest]], cols[c[rest]]]
        Xb[r, c] = filled
        out[:, cols] = Xb
    return out


def adaptive_median(adata, from_layer: str = "log1p", to_layer: str = "d_log1p", n_hops: int = 4,
                    grid: str | None = None, method: str = "original", adjacency=None):
    """Fill the zeros of ``layers[from_layer]`` with SpaRED's adaptive median into ``layers[to_layer]``.

    Per slide (``obs['slide_id']``): a zero becomes the median of its gene over the spot's 1-hop
    neighbourhood (the spot included), else the 2-hop one, ... up to ``n_hops``, taking the first
    non-zero median; if all are zero, the slide's median of the gene's non-zero values (0 if none).
    Neighbourhoods come from :func:`~spared_lib.preprocessing.spatial_neighbors` (``grid``,
    ``method``) unless an ``adjacency`` is given. In place; returns ``adata``.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    adj = spatial_neighbors(adata, grid=grid, method=method) if adjacency is None else adjacency
    if adj.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"adjacency has shape {adj.shape}, expected {(adata.n_obs, adata.n_obs)}")
    codes, names = slide_codes(adata)
    X = get_layer(adata, from_layer)
    adata.layers[to_layer] = adaptive_median_array(X, khop_adjacencies(adj, n_hops), codes, len(names))
    return adata
