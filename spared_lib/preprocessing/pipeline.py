"""The whole SpaRED preprocessing protocol in one call (SPEC §2), memory-aware.

:func:`preprocess` reads as the protocol: check the input, filter, log expression, adaptive
median, Moran's I selection, ComBat, Δ, assemble. Each step is a function of its own below.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .combat import combat_array
from .config import PreprocessConfig, resolve_config
from .deltas import deltas_array
from .filters import csr_blocks, select_spots_and_genes
from .geometry import ORIGINAL_NEIGHBOURS, khop_adjacencies, slide_codes, spot_graph
from .median import adaptive_median_array
from .moran import moran_array, top_genes
from .normalise import gene_lengths, log1p_array, tpm_array, tpm_subset

LAYERS = ("counts", "tpm", "log1p", "d_log1p", "c_log1p", "c_d_log1p",
          "deltas", "d_deltas", "c_deltas", "c_d_deltas", "mask")

#: Δ layers and the layer each one is computed from.
DELTA_SOURCES = {"deltas": "log1p", "d_deltas": "d_log1p", "c_deltas": "c_log1p", "c_d_deltas": "c_d_log1p"}


def preprocess(adata, dataset=None, *, method: str = "original", dtype=np.float32,
               progress: bool = False, **overrides):
    """Run SpaRED's preprocessing on raw counts and return a new AnnData with the selected genes.

    Steps (SPEC §2): spot and gene filter (:func:`select_spots_and_genes`); genes outside the
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

    Raises
    ------
    KeyError, ValueError
        Before any work, naming the problem: a missing ``obs`` column (``split``, the ComBat key,
        ``slide_id`` values), counts that are not raw (non-integer, negative, NaN or infinite),
        a slide with too few spots for SpaRED's neighbour graph.

    Only two dense (spots × filtered genes) float64 arrays exist at a time, then only (spots × G).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    cfg = resolve_config(dataset, adata, **overrides)
    if method not in ("original", "lattice"):
        raise ValueError(f"preprocess: method must be 'original' or 'lattice', got {method!r}")
    X = check_counts(adata, cfg, method)
    steps = _Steps(progress)
    codes, names = slide_codes(adata)

    kept = select_spots_and_genes(X, codes, len(names), cfg.cell_min_counts, cfg.cell_max_counts,
                                  cfg.gene_min_counts, cfg.gene_max_counts, cfg.real_data_percentage)
    spots, genes, lengths = _genes_with_length(adata, kept, cfg)
    codes = codes[spots]
    steps.done("filter")

    log1p_all, scale = _log_expression(X, spots, genes, lengths, steps)

    graph = _graph(adata, spots, codes, names, cfg, method)
    d_log1p_all = adaptive_median_array(log1p_all, khop_adjacencies(graph, cfg.n_hops), codes,
                                        len(names), out=log1p_all)
    del log1p_all  # filled in place: the buffer holds d_log1p now
    steps.done("adaptive_median")

    groups = _groups(codes, len(names))
    per_slide = moran_array(d_log1p_all, graph, groups)
    with np.errstate(all="ignore"):
        moran = np.nanmean(np.where(np.isfinite(per_slide), per_slide, np.nan), axis=0)
    sel = top_genes(moran, cfg.n_genes)
    # the selected genes' layers (the original subsets its AnnData here, in its Moran step)
    counts = dense_counts(X, spots, genes[sel])
    tpm = tpm_subset(counts, lengths[sel], scale)
    # np.take keeps rows contiguous (a[:, sel] gives a column-major array, slow for every later step)
    layers = {"counts": counts, "tpm": tpm, "log1p": log1p_array(tpm), "d_log1p": np.take(d_log1p_all, sel, axis=1)}
    del d_log1p_all
    steps.done("moran")

    layers.update(_combat(layers["log1p"], layers["d_log1p"], adata, spots, cfg))
    steps.done("combat")

    train = adata.obs["split"].to_numpy()[spots] == "train"
    means = {}
    for dst, src in DELTA_SOURCES.items():
        layers[dst], means[src] = deltas_array(layers[src], train, dtype=dtype)
    steps.done("deltas")

    out = _assemble(adata, spots, genes[sel], layers, dtype)
    for src, mean in means.items():
        out.var[f"{src}_avg_exp"] = mean
    out.var["gene_length"] = lengths[sel].astype(np.int64)
    out.var["d_log1p_moran"] = moran[sel]
    out.varm["d_log1p_moran_per_slide"] = per_slide[:, sel].T
    out.uns["preprocessing"] = _record(cfg, method, dtype, kept, adata.var_names[genes], moran,
                                       out.layers["mask"], steps)
    steps.done("assemble")
    steps.close()
    return out


# --------------------------------------------------------------------------- the steps
def check_counts(adata, cfg: PreprocessConfig, method: str = "original") -> sp.csr_matrix:
    """Check that ``adata`` is what :func:`preprocess` expects, before any work; return ``X`` as CSR.

    Raw counts: finite, non-negative integers (normalised or log data would be normalised a
    second time, silently); ``obs['split']`` with train spots; the ComBat key a column of
    ``obs``; every slide large enough for SpaRED's neighbour graph (``method='original'``).
    Errors name the ``adata`` field and the problem.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"preprocess: adata is empty ({adata.n_obs} spots x {adata.n_vars} genes)")
    if "split" not in adata.obs:
        raise KeyError("preprocess: adata.obs has no column 'split' (train/val/test, needed for Δ)")
    if not (adata.obs["split"] == "train").any():
        raise ValueError("preprocess: no spot has obs['split'] == 'train' (Δ needs train spots)")
    if cfg.combat_key is not None and cfg.combat_key not in adata.obs:
        raise KeyError(f"preprocess: the ComBat key {cfg.combat_key!r} is not a column of adata.obs "
                       f"(columns: {list(adata.obs.columns)}); pass combat_key=None to skip ComBat")
    if method == "original" and "spatial" not in adata.obsm:
        raise KeyError("preprocess: adata.obsm has no 'spatial' coordinates (pixel positions of the spots)")
    X = adata.X
    if X is None:
        raise ValueError("preprocess: adata.X is empty; the raw counts belong in adata.X")
    X = X.tocsr() if sp.issparse(X) else sp.csr_matrix(np.asarray(X))
    values = X.data
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"preprocess: adata.X has dtype {values.dtype}, not numbers")
    bad = ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"preprocess: adata.X holds {int(bad.sum())} NaN or infinite value(s), "
                         f"e.g. at {_where(adata, X, np.flatnonzero(bad)[0])}; raw counts are finite")
    if values.size and values.min() < 0:
        raise ValueError(f"preprocess: adata.X holds negative values, e.g. {values.min():g} at "
                         f"{_where(adata, X, int(values.argmin()))}; raw counts are >= 0")
    n_fractional, first = 0, None
    for k0 in range(0, values.size, 1 << 22):  # blocks: no full-size temporary
        block = values[k0:k0 + (1 << 22)]
        frac = np.flatnonzero(block != np.round(block))
        if frac.size and first is None:
            first = k0 + int(frac[0])
        n_fractional += frac.size
    if n_fractional:
        raise ValueError(
            f"preprocess: adata.X holds non-integer values ({n_fractional:,} of {values.size:,} "
            f"stored entries, e.g. {values[first]:g} at {_where(adata, X, first)}): it looks normalised or "
            "log-transformed. preprocess expects raw integer counts (Space Ranger's matrix) and "
            "normalises them itself; pass the raw counts (e.g. adata.layers['counts']) as adata.X")
    if method == "original":
        grid = cfg.grid
        codes, names = slide_codes(adata)
        size = np.bincount(codes, minlength=len(names))
        small = [(str(names[s]), int(size[s])) for s in range(len(names)) if 0 < size[s] <= ORIGINAL_NEIGHBOURS[grid]]
        if small:
            raise ValueError(
                f"preprocess: slide(s) {', '.join(f'{s!r} ({k} spot(s))' for s, k in small)} are too small: "
                f"SpaRED's neighbour graph links each spot to its {ORIGINAL_NEIGHBOURS[grid]} nearest spots "
                f"of its slide, so every slide needs at least {ORIGINAL_NEIGHBOURS[grid] + 1} spots. Drop "
                "them, or use method='lattice'")
    if cfg.combat_key is not None:
        size = adata.obs[cfg.combat_key].astype(str).value_counts()
        if len(size) > 1 and size.min() < 2:
            raise ValueError(f"preprocess: ComBat batch {size.idxmin()!r} of obs[{cfg.combat_key!r}] has a single "
                             "spot; ComBat needs at least 2 spots per batch")
    return X


def _where(adata, X: sp.csr_matrix, k: int) -> str:
    """'spot <obs name>, gene <var name>' of the k-th stored entry of CSR ``X``."""
    row = int(np.searchsorted(X.indptr, k, side="right") - 1)
    return f"spot {adata.obs_names[row]!r}, gene {adata.var_names[X.indices[k]]!r}"


def _genes_with_length(adata, kept: dict, cfg: PreprocessConfig):
    """Kept spots, the kept genes that the GENCODE table knows (TPM needs a length), their lengths."""
    genes = kept["genes"]
    lengths = gene_lengths(adata.var_names[genes], cfg.organism)
    known = np.isfinite(lengths) & (lengths > 0)
    if known.sum() < cfg.n_genes:
        raise ValueError(f"preprocess: {int(known.sum())} genes left after filtering and the {cfg.organism} "
                         f"gene table, fewer than n_genes={cfg.n_genes}")
    kept["n_genes_with_length"] = int(known.sum())
    return kept["spots"], genes[known], lengths[known]


def dense_counts(X: sp.csr_matrix, spots: np.ndarray, genes: np.ndarray, dtype=np.float64) -> np.ndarray:
    """Dense ``X[spots][:, genes]`` (``spots`` increasing) of ``dtype``, a block of rows at a
    time, so no sparse copy of the whole matrix is made.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    spots = np.asarray(spots, dtype=np.int64)
    if spots.size > 1 and (np.diff(spots) <= 0).any():
        raise ValueError("dense_counts: spots must be increasing")
    out = np.empty((spots.size, len(genes)), dtype=dtype)
    for r0, b in csr_blocks(X):
        lo, hi = np.searchsorted(spots, [r0, r0 + b.shape[0]])
        if hi > lo:
            out[lo:hi] = b[spots[lo:hi] - r0][:, genes].toarray()
    return out


def _log_expression(X: sp.csr_matrix, spots, genes, lengths, steps) -> tuple[np.ndarray, np.ndarray]:
    """log2(TPM + 1) of every filtered gene in one (spots, genes) float64 buffer, and the per-spot
    TPM divisor.

    TPM is computed a block of rows at a time (:func:`tpm_array` on each block's stored counts),
    straight into the buffer, and log2 in place: one large array instead of dense counts plus TPM
    (arrays above glibc's 32-MB mmap threshold are fresh pages every time, and at SpaRED's largest
    size the page faults cost more than the arithmetic). The TPM of all genes is not kept: the
    selected genes' is recomputed from the divisor.
    """
    out = np.zeros((len(spots), len(genes)))  # tpm_array adds the stored entries into zeros
    scale = np.empty((len(spots), 1))
    for r0, b in csr_blocks(X):
        lo, hi = np.searchsorted(spots, [r0, r0 + b.shape[0]])
        if hi > lo:
            _, scale[lo:hi] = tpm_array(b[spots[lo:hi] - r0][:, genes], lengths, return_scale=True,
                                        out=out[lo:hi])
    steps.done("tpm")
    log1p = log1p_array(out, out=out)
    steps.done("log1p")
    return log1p, scale


def _graph(adata, spots, codes, names, cfg: PreprocessConfig, method: str) -> sp.csr_matrix:
    """SpaRED's spot graph of the kept spots (:func:`spot_graph`)."""
    if method == "original":
        positions = np.asarray(adata.obsm["spatial"], dtype=np.float64)[spots]
    else:
        positions = adata.obs[["array_row", "array_col"]].to_numpy()[spots]
    return spot_graph(positions, codes, names, cfg.grid, method)


def _groups(codes: np.ndarray, n_slides: int) -> list[tuple[int, np.ndarray]]:
    return [(s, np.flatnonzero(codes == s)) for s in range(n_slides) if (codes == s).any()]


def _combat(log1p: np.ndarray, d_log1p: np.ndarray, adata, spots, cfg: PreprocessConfig) -> dict:
    """ComBat of ``log1p`` and ``d_log1p`` by ``obs[combat_key]``; copies when there is no key."""
    batches = None if cfg.combat_key is None else adata.obs[cfg.combat_key].to_numpy()[spots]
    if batches is None or len(pd.unique(batches)) < 2:  # nothing to correct: the layers are copied
        return {"c_log1p": log1p.copy(), "c_d_log1p": d_log1p.copy()}
    return {"c_log1p": combat_array(log1p, batches), "c_d_log1p": combat_array(d_log1p, batches)}


def _assemble(adata, spots: np.ndarray, genes: np.ndarray, layers: dict, dtype):
    """The output AnnData: the input's obs/var/obsm/uns rows of the kept spots and genes (the
    input's X is not copied), X = sparse counts, the dense layers in ``dtype`` and the mask."""
    import anndata as ad

    shell = ad.AnnData(obs=adata.obs, var=adata.var, obsm=dict(adata.obsm), uns=adata.uns)
    out = shell[spots, genes].copy()
    out.uns.pop("filter", None)
    out.X = sp.csr_matrix(layers["counts"], dtype=np.float32)
    for name in LAYERS[:-1]:
        out.layers[name] = np.ascontiguousarray(layers[name], dtype=dtype)
    out.layers["mask"] = layers["tpm"] != 0
    return out


def _record(cfg, method, dtype, kept: dict, filtered_genes, moran, mask, steps) -> dict:
    """``uns['preprocessing']``: parameters, the filter's counts, the Moran ranking, timings."""
    filt = dict(kept["stats"], n_genes_with_length=kept["n_genes_with_length"])
    curve = kept["curve"]
    ranking = np.argsort(np.where(np.isnan(moran), np.inf, -moran), kind="stable")
    return dict(config=cfg.to_dict(), method=method, dtype=np.dtype(dtype).name, filter=filt,
                n_genes_filtered=kept["n_genes_with_length"],
                genes_ranked=np.asarray(filtered_genes[ranking]).astype(str),
                moran_ranked=np.sort(np.where(np.isnan(moran), -np.inf, moran))[::-1],
                missing_fraction=float(1 - mask.mean()), filter_curve=curve, timings_s=steps.timings,
                cpu_s=steps.cpu)


class _Steps:
    """Wall and CPU time of each named step, and the optional progress bar. (On a machine shared
    with other work the CPU time is the steadier of the two.)"""

    NAMES = ("filter", "tpm", "log1p", "adaptive_median", "moran", "combat", "deltas", "assemble")

    def __init__(self, progress: bool):
        from tqdm.auto import tqdm

        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.bar = tqdm(total=len(self.NAMES), desc="preprocess", disable=not progress)
        self.t, self.c = time.perf_counter(), time.process_time()

    def done(self, name: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.timings[name], self.cpu[name] = now - self.t, cpu - self.c
        self.t, self.c = now, cpu
        self.bar.set_postfix_str(name)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
