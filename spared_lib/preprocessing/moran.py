"""Moran's I of every gene per slide, averaged over slides, and the top-G selection (SPEC §2 step 7).

A closed form on one sparse product for all slides; tests compare it with squidpy's.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._common import get_layer
from .geometry import slide_groups, spatial_neighbors


def _row_normalised(adjacency: sp.spmatrix) -> sp.csr_matrix:
    """Weights of each row scaled to sum 1 (squidpy's ``transformation=True``); empty rows stay 0."""
    W = sp.csr_matrix(adjacency, dtype=np.float64, copy=True)
    deg = np.asarray(W.sum(axis=1)).ravel()
    W.data /= np.repeat(np.where(deg > 0, deg, 1.0), np.diff(W.indptr))
    return W


def moran_array(X: np.ndarray, adjacency: sp.spmatrix, groups) -> np.ndarray:
    """``(n_slides, G)`` Moran's I of every column of ``X`` on each slide's graph.

    ``groups`` are the ``(slide_id, spot indices)`` pairs of :func:`slide_groups`; the adjacency
    is block-diagonal over slides (:func:`spatial_neighbors`), so one sparse product serves every
    slide. Per slide: weights row-normalised, ``z`` = the values minus the slide's gene mean,
    ``I = n / sum(W) * sum_i z_i (W z)_i / sum_i z_i^2`` — squidpy's ``spatial_autocorr``
    (``mode='moran'``, the original's call; permutations only add p-values, never I). NaN for a
    gene constant on the slide.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = np.asarray(X, dtype=np.float64)
    W = _row_normalised(adjacency)
    out = np.full((len(groups), X.shape[1]), np.nan)
    for s, (_, idx) in enumerate(groups):  # slides: a handful of iterations
        Z = X[idx]
        Z -= Z.mean(axis=0)
        Ws = W[idx][:, idx]
        # einsum sums the products without an (n, G) temporary
        num = np.einsum("ij,ij->j", Z, Ws @ Z)
        den = np.einsum("ij,ij->j", Z, Z)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s] = idx.size / Ws.sum() * num / den
    return out


def morans_i(X: np.ndarray, adjacency: sp.spmatrix) -> np.ndarray:
    """Moran's I of each column of ``X`` on one slide (row-normalised weights, as squidpy's
    ``spatial_autocorr`` with no permutations). NaN for a constant gene.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = np.asarray(X, dtype=np.float64)
    return moran_array(X, adjacency, [("slide", np.arange(X.shape[0]))])[0]


def moran_genes(adata, from_layer: str = "d_log1p", n_genes: int | None = None,
                grid: str | None = None, method: str = "original", adjacency=None, subset: bool = True):
    """Rank genes by Moran's I of ``layers[from_layer]`` and keep the top ``n_genes``.

    Moran's I is computed per slide on the spot graph of
    :func:`~spared_lib.preprocessing.spatial_neighbors` and averaged over slides (slides where a
    gene is constant are skipped), in ``var[f'{from_layer}_moran']``; the per-slide values go to
    ``varm[f'{from_layer}_moran_per_slide']``. ``n_genes`` defaults to
    ``adata.uns['dataset']['n_genes']``. With ``subset`` a new AnnData with the top genes in
    decreasing Moran's I is returned; otherwise ``adata`` with the column added.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if n_genes is None:
        n_genes = adata.uns.get("dataset", {}).get("n_genes")
        if n_genes is None:
            raise ValueError("moran_genes: pass n_genes= or set adata.uns['dataset']['n_genes']")
    if adata.n_vars < n_genes:
        raise ValueError(f"moran_genes: only {adata.n_vars} genes left, fewer than n_genes={n_genes}")
    adj = spatial_neighbors(adata, grid=grid, method=method) if adjacency is None else adjacency
    per_slide = moran_array(get_layer(adata, from_layer), adj, slide_groups(adata))
    with np.errstate(all="ignore"):
        mean = np.nanmean(np.where(np.isfinite(per_slide), per_slide, np.nan), axis=0)
    key = f"{from_layer}_moran"
    adata.var[key] = mean
    adata.varm[f"{key}_per_slide"] = per_slide.T
    if not subset:
        return adata
    return adata[:, top_genes(mean, n_genes)].copy()


def top_genes(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, highest first; NaN last; ties keep input order."""
    key = np.where(np.isnan(score), np.inf, -np.asarray(score, dtype=np.float64))
    return np.argsort(key, kind="stable")[:n]
