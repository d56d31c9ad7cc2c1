"""SpaRED's adaptive median completion of zero entries, vectorised (SPEC §2 step 6).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import os

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

    def slide(s):  # one slide's row of ``out``; slides run in worker threads
        rows = np.flatnonzero(codes == s)
        if rows.size == 0:
            return
        step = max(1, _CHUNK_ELEMS // rows.size)
        for g0 in range(0, X.shape[1], step):
            block = np.ascontiguousarray(X[rows, g0:g0 + step].T)  # (genes, spots)
            zero = block == 0
            nz = rows.size - np.count_nonzero(zero, axis=1)
            if (block >= 0).all():
                # non-negative: after sorting, the zeros are the first z values of each row
                block.sort(axis=1)
                first = rows.size - nz
            else:
                block[zero] = np.inf
                block.sort(axis=1)
                first = np.zeros_like(nz)
            # (a gene without non-zero values gets 0 below; clip its positions into the row)
            lo = np.minimum(first + np.maximum(nz - 1, 0) // 2, rows.size - 1)
            hi = np.minimum(first + nz // 2, rows.size - 1)
            g = np.arange(block.shape[0])
            out[s, g0:g0 + step] = np.where(nz > 0, (block[g, lo] + block[g, hi]) / 2, 0.0)

    _in_threads(slide, range(n_slides))
    return out


def _workers() -> int:
    """Worker threads for the median: the CPUs this process may use (at most 4)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def _in_threads(func, items) -> None:
    """``func(item)`` for every item, in ``_workers()`` threads (in this thread when one)."""
    items = list(items)
    workers = min(_workers(), len(items))
    if workers <= 1:
        for item in items:
            func(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(func, items):  # re-raises a worker's exception here
            pass


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


def _median_of_7(vals: np.ndarray) -> np.ndarray:
    """Row medians of an ``(m, 7)`` array: odd-even transposition sort of the 7 columns with
    element-wise min/max (7 rounds sort 7 values), vectorised over the rows. Much faster than a
    per-row sort or partition on millions of short rows (the 1-hop neighbourhoods)."""
    col = [np.ascontiguousarray(vals[:, j]) for j in range(7)]
    for rnd in range(7):
        for j in range(rnd % 2, 6, 2):
            low = np.minimum(col[j], col[j + 1])
            np.maximum(col[j], col[j + 1], out=col[j + 1])
            col[j] = low
    return col[3]


def _permuted(N: sp.spmatrix, perm: np.ndarray, inv: np.ndarray, dtype) -> sp.csr_matrix:
    """``P N P^T`` as CSR of ``dtype``: rows taken in ``perm`` order, column ids relabelled (cheap)."""
    rows = sp.csr_matrix(N, dtype=dtype)[perm]
    out = sp.csr_matrix((rows.data, inv[rows.indices], rows.indptr), shape=rows.shape)
    out.sort_indices()
    return out


class _Hops:
    """The k-hop neighbourhoods in a bandwidth-reducing spot order, ready for the fast path.

    The spots are renumbered by reverse Cuthill–McKee on the 1-hop graph, so a spot's
    neighbours have nearby numbers and the gathers below read memory that is already in cache
    (measured 5-7x faster than in the input order, where neighbours are scattered).
    ``rings[k]`` holds the spots first reached at hop k, so the zero counts of all hops cost one
    product with the 4-hop pattern in total.
    """

    def __init__(self, neighborhoods: list[sp.csr_matrix]):
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        first = sp.csr_matrix(neighborhoods[0])
        self.n = n = first.shape[0]
        self.perm = reverse_cuthill_mckee(first, symmetric_mode=False).astype(np.int64)
        self.inv = np.empty_like(self.perm)
        self.inv[self.perm] = np.arange(n)
        # zero counts in the smallest integer type that holds them: uint8 products are 3x faster
        # than float32 ones (SpaRED's 4-hop neighbourhoods have at most 81 spots)
        largest = max(int(np.diff(sp.csr_matrix(N).indptr).max(initial=0)) for N in neighborhoods)
        self.dtype = np.uint8 if largest <= np.iinfo(np.uint8).max else np.int32
        hoods = [_permuted(N, self.perm, self.inv, self.dtype) for N in neighborhoods]
        self.sizes = [np.diff(N.indptr).astype(np.int64) for N in hoods]
        self.half = [(s // 2).astype(self.dtype) for s in self.sizes]
        self.index = []
        for N in hoods:
            idx = index_from_adjacency(N.astype(bool))
            idx[idx < 0] = n  # the +inf padding row
            self.index.append(idx)
        self.rings = [hoods[0]] + [(hoods[k] - hoods[k - 1]).tocsr() for k in range(1, len(hoods))]
        for R in self.rings:
            R.eliminate_zeros()


def _fill_nonnegative(X: np.ndarray, g0: int, g1: int, hops: _Hops, general: np.ndarray,
                      slide_of: np.ndarray, out: np.ndarray, pad: np.ndarray) -> None:
    """Adaptive median of the genes ``g0:g1`` of non-negative data, written into ``out``.

    For non-negative values a neighbourhood's median is zero exactly when more than half of its
    values are zero. A sparse product counts the zeros of every (spot, gene) for each hop, which
    picks each zero entry's hop; only that one median is then computed, from a gather of the
    hop's values in ``pad`` (the block in the spots' bandwidth order, plus a +inf padding row;
    a buffer reused across blocks: fresh 100-MB arrays cost more in page faults than the work).
    ``out`` (C-contiguous, may be ``X``) receives the filled values of the zero entries; its
    other entries must already hold ``X``'s.
    """
    n, g = X.shape[0], g1 - g0
    pad = pad[:(n + 1) * g].reshape(n + 1, g)
    pad[:n] = X[hops.perm, g0:g1]
    pad[n] = np.inf
    flat = pad.reshape(-1)
    todo = pad[:n] == 0
    zero = todo.astype(hops.dtype)
    zeros_in_hood = np.zeros((n, g), hops.dtype)
    out_flat = out.reshape(-1)
    G = out.shape[1]
    for k, ring in enumerate(hops.rings):
        zeros_in_hood += ring @ zero
        hit = todo & (zeros_in_hood <= hops.half[k][:, None])
        todo &= ~hit
        pos = np.flatnonzero(hit)
        r = pos // g
        c = pos - r * g
        med = np.empty(pos.size)
        rows_idx = hops.index[k] * g
        seven = k == 0 and bool((hops.sizes[0] == 7).all())  # the Visium 1-hop case
        step = max(1, (1 << 18) // hops.index[k].shape[1])  # keeps each gather in cache
        for s in range(0, pos.size, step):
            rr = r[s:s + step]
            vals = flat.take(rows_idx[rr] + c[s:s + step, None])  # padding reads +inf
            med[s:s + step] = _median_of_7(vals) if seven else _masked_median(vals, hops.sizes[k][rr])
        # into ``out`` at the spots' input positions; ``pad`` keeps the unfilled zeros for later hops
        out_flat[hops.perm[r] * G + g0 + c] = med
    pos = np.flatnonzero(todo)
    r = pos // g
    c = pos - r * g
    spot = hops.perm[r]
    out_flat[spot * G + g0 + c] = general[slide_of[spot], g0 + c]


def adaptive_median_array(X: np.ndarray, neighborhoods: list[sp.csr_matrix], codes: np.ndarray,
                          n_slides: int, out: np.ndarray | None = None) -> np.ndarray:
    """Adaptive median completion of a (spots, genes) array.

    Each zero entry (i, g) becomes the median of gene g over the first neighbourhood
    ``neighborhoods[k][i]`` (k = 0, 1, ...) whose median is non-zero; if none is, the median of the
    slide's non-zero values of g (0 if the gene is all zero in the slide). Non-zero entries are
    untouched. ``out`` may be ``X`` itself (in place).

    Non-negative data (log2(TPM + 1), the preprocessing case) take a fast path: zero counts by
    sparse products pick each entry's hop, then one median per entry (see ``_fill_nonnegative``).
    Data with negative values take the general path (a median per hop until one is non-zero).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = np.asarray(X, dtype=np.float64)
    require_finite(X, "adaptive_median input")
    n, G = X.shape
    general = nonzero_medians(X, codes, n_slides)
    gstep = max(1, min(G, _CHUNK_ELEMS // max(n, 1)))
    if bool((X >= 0).all()):
        if out is None:
            out = X.copy()
        elif out is not X:
            out[:] = X
        if not out.flags.c_contiguous:
            raise ValueError("adaptive_median_array: out must be C-contiguous")
        hops = _Hops(neighborhoods)
        # Gene blocks of equal size, at least one per worker thread. The blocks write disjoint
        # columns of ``out`` and NumPy/SciPy release the GIL in the array work, so the threads
        # run on separate cores; each keeps one padding buffer for all of its blocks.
        workers = _workers()
        n_blocks = min(G, max(-(-G // gstep), workers))
        size = -(-G // n_blocks)
        blocks = [(g0, min(G, g0 + size)) for g0 in range(0, G, size)]

        def fill(mine):
            pad = np.empty((n + 1) * size)
            for g0, g1 in mine:
                _fill_nonnegative(X, g0, g1, hops, general, codes, out, pad)

        _in_threads(fill, [blocks[w::workers] for w in range(min(workers, len(blocks)))])
        return out
    if out is None:
        out = np.empty_like(X)
    indices = [index_from_adjacency(N) for N in neighborhoods]
    sizes = [np.maximum(np.asarray(N.sum(axis=1)).ravel().astype(np.int64), 1) for N in neighborhoods]
    # Gene block by gene block: every median of block b reads only block b's input values, so
    # the block is copied before it is filled and ``out`` may alias ``X``.
    for g0 in range(0, G, gstep):
        cols = np.arange(g0, min(G, g0 + gstep))
        Xb = X[:, cols].copy()
        Xpad = np.vstack([Xb, np.full((1, cols.size), np.inf)])
        r, c = np.nonzero(Xb == 0)
        filled = np.zeros(r.size)
        done = np.zeros(r.size, dtype=bool)
        for k in range(len(neighborhoods)):
            todo = np.flatnonzero(~done)
            if todo.size == 0:
                break
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
