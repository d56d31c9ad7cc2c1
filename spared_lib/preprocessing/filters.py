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
    ``uns['filter_curve']`` the running mean used in step 3 (the chapter plots it).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = _csr(adata.X if layer is None else adata.layers[layer])
    if X.shape[0] == 0:
        raise ValueError("filter_spots_and_genes: adata has no spots")
    if X.data.size and X.data.min() < 0:
        raise ValueError("filter_spots_and_genes: counts must be non-negative (raw counts expected)")
    totals = np.asarray(X.sum(axis=1)).ravel()
    spots = np.flatnonzero((totals > cell_min_counts) & (totals < cell_max_counts))
    if spots.size == 0:
        raise ValueError(f"no spot has {cell_min_counts} < total counts < {cell_max_counts}")
    codes, names = slide_codes(adata)
    Xs = X[spots]
    exp_frac, glob = expression_fractions(Xs, codes[spots], len(names))
    gene_totals = np.asarray(Xs.sum(axis=0)).ravel()
    by_counts = np.flatnonzero((gene_totals > gene_min_counts) & (gene_totals < gene_max_counts))
    if by_counts.size == 0:
        raise ValueError(f"no gene has {gene_min_counts} < total counts < {gene_max_counts}")
    order = np.argsort(-exp_frac[by_counts], kind="stable")
    running = np.cumsum(glob[by_counts][order]) / np.arange(1, by_counts.size + 1)
    kept = np.sort(by_counts[real_data_prefix(exp_frac[by_counts], glob[by_counts], real_data_percentage)])
    left = np.asarray(Xs[:, kept].sum(axis=1)).ravel() > 0
    out = adata[spots[left], kept].copy()
    out.var["exp_frac"] = exp_frac[kept]
    out.var["glob_exp_frac"] = glob[kept]
    out.uns["filter"] = dict(
        n_spots_in=int(adata.n_obs), n_genes_in=int(adata.n_vars), n_spots_counts=int(spots.size),
        n_genes_counts=int(by_counts.size), n_genes_kept=int(kept.size), n_spots_out=int(out.n_obs),
        cell_min_counts=cell_min_counts, cell_max_counts=cell_max_counts, gene_min_counts=gene_min_counts,
        gene_max_counts=gene_max_counts, real_data_percentage=real_data_percentage)
    out.uns["filter_curve"] = dict(exp_frac=exp_frac[by_counts][order], running_glob_exp_frac=running)
    return out
