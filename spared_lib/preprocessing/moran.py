"""Moran's I of every gene per slide, averaged over slides, and the top-G selection (SPEC §2 step 7).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._common import get_layer
from .geometry import slide_groups, spatial_neighbors


def morans_i(X: np.ndarray, adjacency: sp.spmatrix) -> np.ndarray:
    """Moran's I of each column of ``X`` on one slide with squidpy (row-normalised weights,
    no permutations). NaN for a constant gene.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import anndata as ad
    import squidpy as sq

    X = np.asarray(X, dtype=np.float64)
    names = [f"g{i}" for i in range(X.shape[1])]
    tmp = ad.AnnData(X=X, var=pd.DataFrame(index=names))
    tmp.obsp["spatial_connectivities"] = sp.csr_matrix(adjacency, dtype=np.float64)
    res = sq.gr.spatial_autocorr(tmp, connectivity_key="spatial_connectivities", genes=names,
                                 mode="moran", n_perms=None, copy=True, show_progress_bar=False)
    return res["I"].reindex(names).to_numpy(dtype=np.float64)


def moran_array(X: np.ndarray, adjacency: sp.spmatrix, groups) -> np.ndarray:
    """``(n_slides, G)`` Moran's I per slide (``groups`` from ``slide_groups``)."""
    A = sp.csr_matrix(adjacency)
    return np.stack([morans_i(X[idx], A[idx][:, idx]) for _, idx in groups])


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
