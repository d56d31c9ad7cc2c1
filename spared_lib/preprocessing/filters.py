"""SpaRED's spot and gene filter (SPEC §2 steps 1–2).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .geometry import slide_codes
from .config import CELL_MAX_COUNTS, GENE_MAX_COUNTS, GENE_MIN_COUNTS, REAL_DATA_PERCENTAGE


def _csr(X) -> sp.csr_matrix:
    return X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))


def expression_fractions(X, codes: np.ndarray, n_slides: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene ``exp_frac`` (minimum over slides of the fraction of spots with count > 0) and
    ``glob_exp_frac`` (the same fraction over all spots).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = _csr(X)
    expressed = X > 0
    # One sparse product gives the number of expressing spots per (slide, gene).
    onehot = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_slides, len(codes)))
    per_slide = np.asarray((onehot @ expressed).todense(), dtype=np.float64)
    n_per_slide = np.bincount(codes, minlength=n_slides).astype(np.float64)
    present = n_per_slide > 0
    exp_frac = (per_slide[present] / n_per_slide[present, None]).min(axis=0)
    glob = np.asarray(expressed.sum(axis=0), dtype=np.float64).ravel() / X.shape[0]
    return exp_frac, glob


def real_data_prefix(exp_frac: np.ndarray, glob_exp_frac: np.ndarray,
                     real_data_percentage: float = REAL_DATA_PERCENTAGE) -> np.ndarray:
    """Indices of the genes kept by SpaRED's expression-fraction rule.

    Genes are sorted by ``exp_frac`` (descending; ties keep their input order) and the longest
    prefix whose running mean of ``glob_exp_frac`` is at least ``real_data_percentage`` is kept.
    Returns the kept indices in that sorted order.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    order = np.argsort(-np.asarray(exp_frac), kind="stable")
    running = np.cumsum(np.asarray(glob_exp_frac)[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(running >= real_data_percentage)
    if ok.size == 0:
        raise ValueError(f"no gene set reaches real_data_percentage={real_data_percentage}: the most "
                         f"widely expressed gene is observed in {running[:1]} of spots")
    return order[:ok[-1] + 1]


#: Stored entries read at once by the passes over a count matrix (bounds their temporaries).
_ENTRIES_PER_PASS = 1 << 22


def csr_blocks(X: sp.csr_matrix, step: int = _ENTRIES_PER_PASS):
    """Blocks of whole rows of a CSR matrix, about ``step`` stored entries each: ``(r0, block)``
    with ``block = X[r0:r1]`` as a CSR view on the same arrays (no copy), so a pass over a large
    matrix never holds more than one block's temporaries.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    cuts = np.searchsorted(X.indptr, np.arange(step, X.nnz, step), side="left")
    bounds = np.unique(np.r_[0, np.clip(cuts, 0, X.shape[0]), X.shape[0]])
    for r0, r1 in zip(bounds[:-1], bounds[1:]):
        lo, hi = X.indptr[r0], X.indptr[r1]
        block = sp.csr_matrix((X.data[lo:hi], X.indices[lo:hi], X.indptr[r0:r1 + 1] - lo),
                              shape=(r1 - r0, X.shape[1]), copy=False)
        yield int(r0), block


def select_spots_and_genes(X, codes: np.ndarray, n_slides: int, cell_min_counts: int = 10,
                           cell_max_counts: int = CELL_MAX_COUNTS, gene_min_counts: int = GENE_MIN_COUNTS,
                           gene_max_counts: int = GENE_MAX_COUNTS,
                           real_data_percentage: float = REAL_DATA_PERCENTAGE) -> dict:
    """SpaRED's filter on a raw count matrix, as index arrays (no copy of the matrix).

    Three passes over blocks of rows (:func:`csr_blocks`), each a sparse product: spot totals;
    the (slide, gene) numbers of expressing spots and the gene totals over the kept spots; each
    spot's total over the kept genes. No filtered copy of the matrix is made.
    :func:`filter_spots_and_genes` is the same on an AnnData.

    Returns
    -------
    dict
        ``spots`` and ``genes`` (kept indices, input order), ``exp_frac`` and ``glob_exp_frac`` of
        the kept genes, ``stats`` (counts at each stage) and ``curve`` (the running mean of
        ``glob_exp_frac`` that step 3 thresholds).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = _csr(X)
    n, G = X.shape
    if n == 0:
        raise ValueError("filter_spots_and_genes: adata has no spots")
    if X.data.size and X.data.min() < 0:
        raise ValueError("filter_spots_and_genes: counts must be non-negative (raw counts expected)")
    codes = np.asarray(codes, dtype=np.int64)
    # Sums of integer counts in float32 are exact below 2**24 (16.7 M); a larger block sum is far
    # above every threshold (1e6) and rounding keeps it there, so each decision below is exact.
    # float32 keeps scipy from copying every block's values to float64.
    ones = np.ones(G, dtype=np.float32)
    totals = np.concatenate([(b @ ones).astype(np.float64) for _, b in csr_blocks(X)])
    in_range = (totals > cell_min_counts) & (totals < cell_max_counts)
    spots = np.flatnonzero(in_range)
    if spots.size == 0:
        raise ValueError(f"no spot has {cell_min_counts} < total counts < {cell_max_counts}")
    # (slide, gene) numbers of expressing spots and gene totals, over the kept spots
    per_slide = np.zeros((n_slides, G))
    gene_totals = np.zeros(G)
    for r0, b in csr_blocks(X):
        rows = np.arange(r0, r0 + b.shape[0])
        keep = in_range[rows].astype(np.float32)
        member = sp.csr_matrix((keep, (codes[rows], np.arange(rows.size))), shape=(n_slides, rows.size))
        expressed = sp.csr_matrix(((b.data > 0).astype(np.float32), b.indices, b.indptr), shape=b.shape)
        per_slide += (member @ expressed).toarray()
        gene_totals += keep @ b
    n_per_slide = np.bincount(codes[spots], minlength=n_slides).astype(np.float64)
    present = n_per_slide > 0
    exp_frac = (per_slide[present] / n_per_slide[present, None]).min(axis=0)
    glob = per_slide.sum(axis=0) / spots.size
    by_counts = np.flatnonzero((gene_totals > gene_min_counts) & (gene_totals < gene_max_counts))
    if by_counts.size == 0:
        raise ValueError(f"no gene has {gene_min_counts} < total counts < {gene_max_counts}")
    order = np.argsort(-exp_frac[by_counts], kind="stable")
    running = np.cumsum(glob[by_counts][order]) / np.arange(1, by_counts.size + 1)
    genes = np.sort(by_counts[real_data_prefix(exp_frac[by_counts], glob[by_counts], real_data_percentage)])
    kept_gene = np.zeros(G, dtype=np.float32)
    kept_gene[genes] = 1.0
    left = np.concatenate([b @ kept_gene for _, b in csr_blocks(X)])  # 4. counts over the kept genes
    final = np.flatnonzero(in_range & (left > 0))
    stats = dict(n_spots_in=int(n), n_genes_in=int(G), n_spots_counts=int(spots.size),
                 n_genes_counts=int(by_counts.size), n_genes_kept=int(genes.size), n_spots_out=int(final.size),
                 cell_min_counts=cell_min_counts, cell_max_counts=cell_max_counts,
                 gene_min_counts=gene_min_counts, gene_max_counts=gene_max_counts,
                 real_data_percentage=real_data_percentage)
    return dict(spots=final, genes=genes, exp_frac=exp_frac[genes], glob_exp_frac=glob[genes], stats=stats,
                curve=dict(exp_frac=exp_frac[by_counts][order], running_glob_exp_frac=running))


def filter_spots_and_genes(adata, cell_min_counts: int = 10, cell_max_counts: int = CELL_MAX_COUNTS,
                           gene_min_counts: int = GENE_MIN_COUNTS, gene_max_counts: int = GENE_MAX_COUNTS,
                           real_data_percentage: float = REAL_DATA_PERCENTAGE, layer: str | None = None):
    """SpaRED's filter on raw counts (``adata.X`` or ``layer``); returns a filtered copy.

    1. keep spots with ``cell_min_counts < total counts < cell_max_counts``;
    2. compute ``var['exp_frac']`` (minimum over ``obs['slide_id']`` of the fraction of spots
       expressing the gene) and ``var['glob_exp_frac']`` on those spots;
    3. keep genes with ``gene_min_counts < total counts < gene_max_counts``, then the longest
       prefix (by ``exp_frac``, descending) whose mean ``glob_exp_frac`` is at least
       ``real_data_percentage`` (:func:`real_data_prefix`);
    4. drop spots with no count left over the kept genes.

    Genes come back in their input order. ``uns['filter']`` records the counts at each stage and
    ``uns['filter_curve']`` the running mean used in step 3 (the chapter plots it). The work is
    done by :func:`select_spots_and_genes`.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    codes, names = slide_codes(adata)
    sel = select_spots_and_genes(adata.X if layer is None else adata.layers[layer], codes, len(names),
                                 cell_min_counts, cell_max_counts, gene_min_counts, gene_max_counts,
                                 real_data_percentage)
    out = adata[sel["spots"], sel["genes"]].copy()
    out.var["exp_frac"] = sel["exp_frac"]
    out.var["glob_exp_frac"] = sel["glob_exp_frac"]
    out.uns["filter"] = sel["stats"]
    out.uns["filter_curve"] = sel["curve"]
    return out
