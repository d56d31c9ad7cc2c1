"""ComBat batch correction (parametric empirical Bayes), vectorised, equal to scanpy's (SPEC §2 step 8).

Introduced in ``notebooks/02_preprocessing.py``.
"""
from __future__ import annotations

import numpy as np

from ._common import get_layer, require_finite, require_obs


def _iterate_eb(s: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray, g_bar: float, t2: float,
                a: float, b: float, conv: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Posterior additive (gamma) and multiplicative (delta) effects of one batch, iterated until
    the largest relative change is below ``conv`` — the loop and stopping rule of scanpy's
    ``_it_sol`` (Johnson et al. 2007, parametric priors), over all genes of the batch at once."""
    n = s.shape[0]
    g_old, d_old = g_hat, d_hat
    while True:
        g_new = (t2 * n * g_hat + d_old * g_bar) / (t2 * n + d_old)
        sum2 = ((s - g_new) ** 2).sum(axis=0)
        d_new = (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        change = max((np.abs(g_new - g_old) / g_old).max(), (np.abs(d_new - d_old) / d_old).max())
        g_old, d_old = g_new, d_new
        if not change > conv:  # scanpy: `while change > conv` (a NaN change stops too)
            return g_new, d_new


def combat_array(X: np.ndarray, batches) -> np.ndarray:
    """ComBat-corrected copy of a (spots, genes) array; one batch → unchanged copy.

    The parametric empirical-Bayes model of Johnson et al. (2007) without covariates, computed
    as scanpy's ``sc.pp.combat`` does (read: scverse/scanpy ``src/scanpy/preprocessing/_combat.py``)
    and equal to it to 1e-10 (``tests/test_preprocessing.py``), vectorised over genes. Steps:
    standardise each gene with the batch-weighted grand mean and the pooled variance; per batch,
    the mean (gamma hat) and variance (delta hat, ddof=1) of the standardised values; priors
    across genes; posterior effects by :func:`_iterate_eb`; remove them and undo the
    standardisation. Each gene's result depends only on its own values and the priors, so the
    order of the genes does not matter (pyComBat, which the original used, mixes genes in its
    variance update; see chapter 2).

    Genes constant within a batch make ComBat divide by zero; like the original we do not guard
    them, but we raise a clear error instead of returning NaN.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    X = np.asarray(X, dtype=np.float64)
    require_finite(X, "combat input")
    # batch codes in the sorted order of the batch names (scanpy's groupby order)
    names, code = np.unique(np.asarray(batches).astype(str), return_inverse=True)
    if len(names) < 2:
        return X.copy()
    sizes = np.bincount(code, minlength=len(names))
    if sizes.min() < 2:
        raise ValueError(f"combat: batch {names[sizes.argmin()]!r} has a single spot; "
                         "ComBat needs >= 2 per batch")
    groups = [np.flatnonzero(code == k) for k in range(len(names))]
    n = X.shape[0]
    # Batch by batch throughout: only the output is spots x genes (large temporaries are fresh
    # pages each time, which on SpaRED's largest datasets costs more than the arithmetic).
    # 1. standardise: batch means, grand mean weighted by batch size, pooled variance
    b_hat = np.stack([X[i].mean(axis=0) for i in groups])
    n_b = np.array([i.size for i in groups], dtype=np.float64)
    grand = (n_b / n) @ b_hat
    var_pooled = sum(((X[i] - b_hat[k]) ** 2).sum(axis=0) for k, i in enumerate(groups)) / n
    root = np.sqrt(var_pooled)

    def standardised(i):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(var_pooled == 0, 0.0, (X[i] - grand) / root)

    # 2. batch effects and their priors across genes
    gamma_hat, delta_hat = [], []
    for i in groups:
        s = standardised(i)
        gamma_hat.append(s.mean(axis=0))
        delta_hat.append(s.var(axis=0, ddof=1))
    gamma_hat, delta_hat = np.stack(gamma_hat), np.stack(delta_hat)
    gamma_bar, t2 = gamma_hat.mean(axis=1), gamma_hat.var(axis=1)
    m, v = delta_hat.mean(axis=1), delta_hat.var(axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_prior, b_prior = (2 * v + m ** 2) / v, (m * v + m ** 3) / v
        # 3. posterior effects, removed from the standardised data
        out = np.empty_like(X)
        for k, i in enumerate(groups):  # batches: a handful of iterations
            s = standardised(i)
            g_star, d_star = _iterate_eb(s, gamma_hat[k], delta_hat[k], gamma_bar[k], t2[k],
                                         a_prior[k], b_prior[k])
            out[i] = (s - g_star) / np.sqrt(d_star) * root + grand
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
