"""Helpers shared by the preprocessing steps: layer access, slide groups, checks.

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def get_layer(adata, layer: str | None, dtype=np.float64) -> np.ndarray:
    """``adata.layers[layer]`` (``adata.X`` when ``layer`` is None) as a dense array of ``dtype``.

    Raises ``KeyError`` naming the missing layer and the layers present.
    """
    if layer is None:
        X = adata.X
    else:
        if layer not in adata.layers:
            raise KeyError(f"layer {layer!r} not in adata.layers (present: {sorted(adata.layers)})")
        X = adata.layers[layer]
    if sp.issparse(X):
        X = X.toarray()
    return np.asarray(X, dtype=dtype)


def slide_codes(adata) -> tuple[np.ndarray, np.ndarray]:
    """Integer slide code per spot and the slide ids, from ``obs['slide_id']``.

    A missing column means one slide (the user's own single-section data).
    """
    if "slide_id" not in adata.obs:
        return np.zeros(adata.n_obs, dtype=np.int64), np.array(["slide"], dtype=object)
    cat = adata.obs["slide_id"].astype("category")
    return cat.cat.codes.to_numpy().astype(np.int64), np.asarray(cat.cat.categories, dtype=object)


def slide_groups(adata) -> list[tuple[str, np.ndarray]]:
    """``[(slide_id, spot indices), ...]`` in category order, slides with no spot left out."""
    codes, names = slide_codes(adata)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    return [(str(names[i]), order[bounds[i]:bounds[i + 1]])
            for i in range(len(names)) if bounds[i + 1] > bounds[i]]


def require_obs(adata, column: str, step: str) -> None:
    if column not in adata.obs:
        raise KeyError(f"{step}: adata.obs has no column {column!r} (columns: {list(adata.obs.columns)})")


def require_finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or infinite values")
