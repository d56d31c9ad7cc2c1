"""Helpers shared by the preprocessing steps: layer access and input checks (slides and
neighbours live in :mod:`.geometry`).

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


def require_obs(adata, column: str, step: str) -> None:
    if column not in adata.obs:
        raise KeyError(f"{step}: adata.obs has no column {column!r} (columns: {list(adata.obs.columns)})")


def require_finite(X: np.ndarray, what: str) -> None:
    if not np.isfinite(X).all():
        raise ValueError(f"{what} contains NaN or infinite values")
