"""TPM normalisation with GENCODE gene lengths and the log2(x + 1) transform (SPEC §2 steps 3–5).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

_LN2 = np.log(2.0)


def gene_lengths(var_names, organism: str) -> np.ndarray:
    """Union-of-exons length of each gene (NaN where the GENCODE table lacks the id).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    from spared_lib.data import gene_table

    table = gene_table(organism)
    return table["length"].reindex(np.asarray(var_names)).to_numpy(dtype=np.float64)


def tpm_array(counts, lengths: np.ndarray, return_scale: bool = False, out: np.ndarray | None = None):
    """TPM of a (spots, genes) count matrix: counts / length, each spot rescaled to sum 1e6.

    Spots with no count give 0 (not NaN). Returns float64, dense; with ``return_scale`` also the
    ``(n, 1)`` per-spot divisor, so the TPM of a gene subset can be recomputed bit for bit
    (:func:`tpm_subset`) without keeping the whole matrix. A sparse ``counts`` is normalised on its
    stored entries only and written once into the dense result (``out``: a zeroed float64 buffer
    of the right shape, filled in place).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    lengths = np.asarray(lengths, dtype=np.float64)
    if sp.issparse(counts):
        C = sp.csr_matrix(counts)
        rows = np.repeat(np.arange(C.shape[0]), np.diff(C.indptr))
        # most entries are zeros: dividing, summing and rescaling only the stored ones is what
        # makes this step cheaper than densifying first
        vals = C.data / lengths[C.indices]
        scale = (np.bincount(rows, weights=vals, minlength=C.shape[0]) / 1e6)[:, None]
        np.divide(vals, scale[rows, 0], out=vals, where=scale[rows, 0] > 0)
        if out is None:
            out = np.zeros(C.shape)
        sp.csr_matrix((vals, C.indices, C.indptr), shape=C.shape).toarray(out=out)
        return (out, scale) if return_scale else out
    C = np.asarray(counts)
    res = np.divide(C, lengths[None, :], out=out)
    scale = res.sum(axis=1, keepdims=True) / 1e6
    # a spot without counts keeps its zeros (0 / 0 would be NaN)
    np.divide(res, scale, out=res, where=scale > 0)
    return (res, scale) if return_scale else res


def tpm_subset(counts, lengths: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """TPM of some genes given the per-spot divisor from :func:`tpm_array` on all genes."""
    C = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    out = C / np.asarray(lengths, dtype=np.float64)[None, :]
    np.divide(out, scale, out=out, where=scale > 0)
    return out


def log1p_array(X: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """log2(1 + x), computed as ``log1p(x) / ln 2`` (scanpy's ``log1p(base=2)``).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    out = np.log1p(X, out=out)
    out /= _LN2
    return out


def tpm(adata, organism: str | None = None, from_layer: str | None = None, to_layer: str = "tpm",
        counts_layer: str | None = "counts"):
    """Keep the genes of the GENCODE table and add ``layers[to_layer]`` = TPM of the raw counts.

    Counts come from ``layers[from_layer]`` (``adata.X`` when None) and are also stored densely
    in ``layers[counts_layer]`` (skip with None). ``organism`` defaults to
    ``adata.uns['dataset']['organism']``. Adds ``var['gene_length']``; returns a new AnnData.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if organism is None:
        organism = adata.uns.get("dataset", {}).get("organism")
        if organism is None:
            raise ValueError("tpm: pass organism= ('human' or 'mouse') or set adata.uns['dataset']['organism']")
    lengths = gene_lengths(adata.var_names, organism)
    known = np.flatnonzero(np.isfinite(lengths) & (lengths > 0))
    if known.size == 0:
        raise ValueError(f"tpm: none of the {adata.n_vars} genes is in the {organism} GENCODE table "
                         "(var_names must be Ensembl ids without version)")
    out = adata[:, known].copy()
    counts = out.X if from_layer is None else out.layers[from_layer]
    out.var["gene_length"] = lengths[known].astype(np.int64)
    out.layers[to_layer] = tpm_array(counts, lengths[known])
    if counts_layer is not None:
        out.layers[counts_layer] = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    out.uns.setdefault("preprocessing", {})["n_genes_without_length"] = int(adata.n_vars - known.size)
    return out


def log1p(adata, from_layer: str = "tpm", to_layer: str = "log1p"):
    """Add ``layers[to_layer]`` = log2(1 + ``layers[from_layer]``) (in place; returns ``adata``).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    from ._common import get_layer

    adata.layers[to_layer] = log1p_array(get_layer(adata, from_layer))
    return adata
