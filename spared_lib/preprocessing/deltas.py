"""Δ layers (deviation from the train-split gene mean) and the observed-entry mask (SPEC §2 steps 9–10).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np

from ._common import get_layer, require_obs


def deltas_array(X: np.ndarray, train: np.ndarray, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(X - mean, mean)``: each gene's mean over the rows where ``train`` is True, and the
    deviations from it (Δ), computed in ``X``'s precision and stored as ``dtype`` (default
    ``X.dtype``). Only train rows enter the mean, so nothing of val/test leaks in.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    train = np.asarray(train, dtype=bool)
    if not train.any():
        raise ValueError("deltas: no train spot (Δ is the deviation from the train-split mean)")
    mean = X[train].mean(axis=0)
    out = np.empty(X.shape, dtype=dtype or X.dtype)
    np.subtract(X, mean, out=out, casting="same_kind")
    return out, mean


def deltas(adata, from_layer: str = "log1p", to_layer: str = "deltas", split: str = "train"):
    """``layers[to_layer]`` = ``layers[from_layer]`` minus each gene's mean over the spots with
    ``obs['split'] == split`` (train only: no information from val/test leaks into Δ). The means
    go to ``var[f'{from_layer}_avg_exp']``. In place; returns ``adata``.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    require_obs(adata, "split", "deltas")
    train = (adata.obs["split"] == split).to_numpy()
    if not train.any():
        raise ValueError(f"deltas: no spot has obs['split'] == {split!r}")
    adata.layers[to_layer], adata.var[f"{from_layer}_avg_exp"] = deltas_array(get_layer(adata, from_layer), train)
    return adata


def add_mask(adata, from_layer: str = "tpm", to_layer: str = "mask"):
    """``layers[to_layer]`` = ``layers[from_layer] != 0`` (True = observed). In place.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    adata.layers[to_layer] = get_layer(adata, from_layer) != 0
    return adata
