"""The whole SpaRED preprocessing protocol in one call (SPEC §2), memory-aware.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .combat import combat_array
from .config import resolve_config
from .filters import filter_spots_and_genes
from .median import adaptive_median_array
from .moran import moran_array, top_genes
from .geometry import khop_adjacencies, slide_codes, slide_groups, spatial_neighbors
from .normalise import gene_lengths, log1p_array, tpm_array, tpm_subset

LAYERS = ("counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p",
          "deltas", "d_deltas", "c_deltas", "c_d_deltas", "mask")


def preprocess(adata, dataset=None, *, method: str = "original", dtype=np.float32,
               progress: bool = False, **overrides):
    """Run SpaRED's preprocessing on raw counts and return a new AnnData with the selected genes.

    Steps (SPEC §2): spot and gene filter (:func:`filter_spots_and_genes`); genes outside the
    GENCODE table dropped; TPM; log2(TPM + 1); adaptive median completion (4 hops); Moran's I per
    slide, averaged, top ``n_genes``; ComBat on ``log1p`` and ``d_log1p`` by the dataset's ComBat
    key; Δ from train-split means; ``mask = tpm != 0``.

    Parameters
    ----------
    adata
        Raw counts in ``X`` with ``obs['slide_id']``, ``obs['split']``, ``obsm['spatial']`` (as
        :func:`spared_lib.data.load_dataset` returns).
    dataset
        A registry :class:`~spared_lib.data.DatasetInfo`, a dict, a
        :class:`~spared_lib.preprocessing.PreprocessConfig`, or None to read ``adata.uns['dataset']``
        (``organism``, ``n_genes``, ``combat_key``, ``cell_min_counts``, ``grid``).
    method
        ``'original'`` (SpaRED's neighbourhoods) or ``'lattice'`` (adjacent array positions only).
    dtype
        Float type of the dense layers (float32 as stored by SpaRED's consumers; float64 keeps the
        exact values of the computation).
    overrides
        Any :class:`PreprocessConfig` field, e.g. ``n_genes=32``.

    Returns
    -------
    AnnData with ``X`` = raw counts (sparse) of the G selected genes (ordered by decreasing Moran's
    I), layers ``counts, tpm, log1p, d_log1p, c_log1p, c_d_log1p, deltas, d_deltas, c_deltas,
    c_d_deltas`` (dense ``dtype``) and ``mask`` (bool); ``var['d_log1p_moran']``,
    ``var['<layer>_avg_exp']``; ``uns['preprocessing']`` with the parameters and step timings.

    Only two dense (spots × filtered genes) float64 arrays exist at a time, then only (spots × G).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    from tqdm.auto import tqdm

    cfg = resolve_config(dataset, adata, **overrides)
    if "split" not in adata.obs:
        raise KeyError("preprocess: adata.obs has no column 'split' (train/val/test, needed for Δ)")
    timings: dict[str, float] = {}
    bar = tqdm(total=8, desc="preprocess", disable=not progress)

    def tick(name, t0):
        timings[name] = time.perf_counter() - t0
        bar.set_postfix_str(name)
        bar.update(1)
        return time.perf_counter()

    t = time.perf_counter()
    f = filter_spots_and_genes(adata, cfg.cell_min_counts, cfg.cell_max_counts, cfg.gene_min_counts,
                               cfg.gene_max_counts, cfg.real_data_percentage)
    t = tick("filter", t)

    lengths = gene_lengths(f.var_names, cfg.organism)
    known = np.flatnonzero(np.isfinite(lengths) & (lengths > 0))
    if known.size < cfg.n_genes:
        raise ValueError(f"preprocess: {known.size} genes left after filtering and the {cfg.organism} "
                         f"gene table, fewer than n_genes={cfg.n_genes}")
    f = f[:, known].copy()
    lengths = lengths[known]
    counts = sp.csr_matrix(f.X)
    L, scale = tpm_array(counts, lengths, return_scale=True)
    t = tick("tpm", t)
    log1p_array(L, out=L)
    t = tick("log1p", t)

    codes, names = slide_codes(f)
    adj = spatial_neighbors(f, grid=cfg.grid, method=method)
    hoods = khop_adjacencies(adj, cfg.n_hops)
    adaptive_median_array(L, hoods, codes, len(names), out=L)  # L is now d_log1p
    t = tick("adaptive_median", t)

    per_slide = moran_array(L, adj, slide_groups(f))
    with np.errstate(all="ignore"):
        moran = np.nanmean(np.where(np.isfinite(per_slide), per_slide, np.nan), axis=0)
    sel = top_genes(moran, cfg.n_genes)
    t = tick("moran", t)

    d_log1p = L[:, sel].copy()
    del L
    c_sel = counts[:, sel]
    tpm_sel = tpm_subset(c_sel, lengths[sel], scale)
    log1p_sel = log1p_array(tpm_sel)
    if cfg.combat_key is not None:
        if cfg.combat_key not in f.obs:
            raise KeyError(f"preprocess: ComBat key {cfg.combat_key!r} is not a column of adata.obs")
        batches = f.obs[cfg.combat_key].to_numpy()
        c_log1p, c_d_log1p = combat_array(log1p_sel, batches), combat_array(d_log1p, batches)
    else:
        c_log1p, c_d_log1p = log1p_sel.copy(), d_log1p.copy()
    t = tick("combat", t)

    out = f[:, sel].copy()
    out.X = sp.csr_matrix(c_sel, dtype=np.float32)
    dense = {"counts": c_sel.toarray(), "tpm": tpm_sel, "log1p": log1p_sel, "d_log1p": d_log1p,
             "c_log1p": c_log1p, "c_d_log1p": c_d_log1p}
    train = (f.obs["split"] == "train").to_numpy()
    if not train.any():
        raise ValueError("preprocess: no spot has obs['split'] == 'train' (Δ needs train spots)")
    for src, dst in (("log1p", "deltas"), ("d_log1p", "d_deltas"), ("c_log1p", "c_deltas"),
                     ("c_d_log1p", "c_d_deltas")):
        mean = dense[src][train].mean(axis=0)
        out.var[f"{src}_avg_exp"] = mean
        dense[dst] = dense[src] - mean
    t = tick("deltas", t)
    for name in LAYERS[:-1]:
        out.layers[name] = np.ascontiguousarray(dense[name], dtype=dtype)
    out.layers["mask"] = tpm_sel != 0
    out.var["gene_length"] = lengths[sel].astype(np.int64)
    out.var["d_log1p_moran"] = moran[sel]
    out.varm["d_log1p_moran_per_slide"] = per_slide[:, sel].T
    tick("assemble", t)
    bar.close()
    filt = dict(f.uns.get("filter", {}))
    filt["n_genes_with_length"] = int(known.size)
    out.uns["preprocessing"] = dict(
        config=cfg.to_dict(), method=method, dtype=np.dtype(dtype).name, filter=filt,
        n_genes_filtered=int(known.size), genes_ranked=np.asarray(f.var_names[np.argsort(
            np.where(np.isnan(moran), np.inf, -moran), kind="stable")]).astype(str),
        moran_ranked=np.sort(np.where(np.isnan(moran), -np.inf, moran))[::-1],
        missing_fraction=float(1 - out.layers["mask"].mean()),
        timings_s=timings)
    out.uns.pop("filter", None)  # now inside uns['preprocessing']
    return out
