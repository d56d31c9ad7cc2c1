"""ComBat batch correction (parametric empirical Bayes) with scanpy (SPEC §2 step 8).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import get_layer, require_finite, require_obs


def combat_array(X: np.ndarray, batches) -> np.ndarray:
    """ComBat-corrected copy of a (spots, genes) array; one batch → unchanged copy.

    Genes constant within a batch make ComBat divide by zero; like the original (pyComBat) we do
    not guard them, but we raise a clear error instead of returning NaN.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import anndata as ad
    import scanpy as sc

    X = np.asarray(X, dtype=np.float64)
    require_finite(X, "combat input")
    batches = pd.Categorical(np.asarray(batches).astype(str))
    if len(batches.categories) < 2:
        return X.copy()
    counts = pd.Series(batches).value_counts()
    if counts.min() < 2:
        raise ValueError(f"combat: batch {counts.idxmin()!r} has a single spot; ComBat needs >= 2 per batch")
    tmp = ad.AnnData(X=X.copy(), obs=pd.DataFrame({"batch": batches}, index=np.arange(len(X)).astype(str)))
    out = sc.pp.combat(tmp, key="batch", inplace=False)
    out = np.asarray(out, dtype=np.float64)
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out).all(axis=0))
        raise ValueError(f"combat produced NaN for {bad.size} genes (constant within a batch), e.g. columns {bad[:5]}")
    return out


def combat(adata, batch_key: str | None = None, from_layer: str = "log1p", to_layer: str = "c_log1p"):
    """``layers[to_layer]`` = ComBat of ``layers[from_layer]`` with batches ``obs[batch_key]``.

    ``batch_key`` defaults to ``adata.uns['dataset']['combat_key']``. A single batch (or
    ``batch_key=None`` in the dataset description) copies the layer unchanged. In place; returns
    ``adata``. Same model as pyComBat (``combat`` package) used by the original.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    if batch_key is None:
        batch_key = adata.uns.get("dataset", {}).get("combat_key")
    X = get_layer(adata, from_layer)
    if batch_key in (None, "None"):
        adata.layers[to_layer] = X.copy()
        return adata
    require_obs(adata, batch_key, "combat")
    adata.layers[to_layer] = combat_array(X, adata.obs[batch_key].to_numpy())
    return adata
