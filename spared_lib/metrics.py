"""Evaluation metrics of the SpaRED benchmark, on observed entries only (SPEC §5).

Introduced in ``notebooks/04_patch_models.py``.

Every metric looks only at the entries where ``mask`` is True (the gene was
detected in that spot, ``layers['mask']``): completed or median-filled values are
never scored. Correlations and R² need at least two observed entries with
different true values; a gene (or spot) without them has no defined PCC or R² for
*any* model, so it is left out of the PCC/R² means and counted in
``n_genes_excluded`` / ``n_spots_excluded``. Which genes and spots are excluded
depends only on ``y_true`` and ``mask``, so every model is scored on the same set.
A prediction that is constant over a gene (or spot) while the truth varies has
PCC 0 by definition (no linear association; scipy would return NaN); its R² is
well defined (≤ 0 for a constant).
"""
from __future__ import annotations

import warnings

import numpy as np

#: The benchmark's metric names, in the order of the paper's tables (keys of :func:`compute_metrics`).
METRICS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "Global")

#: The seven metrics of the benchmark, in the paper's order.
METRIC_KEYS = ("MSE", "MAE", "PCC-Gene", "PCC-Patch", "R2-Gene", "R2-Patch", "Global")


def _as_2d(name: str, x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensors without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"compute_metrics: {name} must be a 2-D (spots, genes) array, got shape {x.shape}")
    return x


def _masked_pcc_r2(t: np.ndarray, p: np.ndarray, m: np.ndarray, axis: int):
    """Pearson r and R² along ``axis`` using only masked entries.

    Returns ``(pcc, r2, defined)``; ``pcc``/``r2`` hold NaN where not ``defined``.
    """
    n = m.sum(axis=axis)
    n_safe = np.maximum(n, 1)
    mt = (t * m).sum(axis=axis) / n_safe
    mp = (p * m).sum(axis=axis) / n_safe
    dt = (t - np.expand_dims(mt, axis)) * m
    dp = (p - np.expand_dims(mp, axis)) * m
    ss_t = (dt**2).sum(axis=axis)
    ss_p = (dp**2).sum(axis=axis)
    cov = (dt * dp).sum(axis=axis)
    ss_res = (((t - p) * m) ** 2).sum(axis=axis)

    # "constant" is decided exactly (range == 0), not by a variance threshold, so that
    # rounding in the mean cannot turn a constant gene into a defined one.
    def _range(x):
        hi = np.where(m, x, -np.inf).max(axis=axis)
        lo = np.where(m, x, np.inf).min(axis=axis)
        return hi - lo

    t_varies = (n >= 2) & (_range(t) > 0)
    p_varies = (n >= 2) & (_range(p) > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pcc = np.where(p_varies, cov / np.sqrt(ss_t * ss_p), 0.0)
        r2 = 1.0 - ss_res / ss_t
    pcc = np.where(t_varies, np.clip(pcc, -1.0, 1.0), np.nan)
    r2 = np.where(t_varies, r2, np.nan)
    return pcc, r2, t_varies


def per_gene_metrics(y_true, y_pred, mask=None) -> dict:
    """Per-gene PCC, R² and MSE on observed entries (for plots and tables).

    Returns a dict of 1-D arrays of length G (``pcc``, ``r2``, ``mse``, ``n_obs``);
    genes without a defined PCC/R² hold NaN there (see the module docstring).

    Introduced in ``notebooks/04_patch_models.py``.
    """
    t, p, m = _validate(y_true, y_pred, mask)
    pcc, r2, _ = _masked_pcc_r2(t, p, m, axis=0)
    n = m.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = np.where(n > 0, (((t - p) * m) ** 2).sum(axis=0) / np.maximum(n, 1), np.nan)
    return {"pcc": pcc, "r2": r2, "mse": mse, "n_obs": n}


def _validate(y_true, y_pred, mask):
    t = _as_2d("y_true", y_true).astype(np.float64)
    p = _as_2d("y_pred", y_pred).astype(np.float64)
    if t.shape != p.shape:
        raise ValueError(f"compute_metrics: y_true has shape {t.shape} but y_pred has shape {p.shape}")
    if mask is None:
        m = np.ones(t.shape, dtype=bool)
    else:
        m = _as_2d("mask", mask)
        if m.shape != t.shape:
            raise ValueError(f"compute_metrics: mask has shape {m.shape}, expected {t.shape}")
        if m.dtype != bool:
            if not np.isin(np.unique(m), (0, 1)).all():
                raise ValueError("compute_metrics: mask must be boolean (True = observed entry)")
            m = m.astype(bool)
    if not m.any():
        raise ValueError("compute_metrics: mask has no observed entry; nothing to evaluate")
    bad = m & ~(np.isfinite(t) & np.isfinite(p))
    if bad.any():
        which = "y_pred" if np.isfinite(t[m]).all() else "y_true"
        raise ValueError(f"compute_metrics: {which} has {int(bad.sum())} non-finite observed entries")
    # unobserved entries may hold anything (NaN included): zero them so they never propagate
    return np.where(m, t, 0.0), np.where(m, p, 0.0), m


def compute_metrics(y_true, y_pred, mask=None) -> dict:
    """The benchmark's metrics on observed entries only.

    Parameters
    ----------
    y_true, y_pred
        ``(n_spots, n_genes)`` arrays (NumPy or torch), in log1p space: for Δ models,
        add ``var['<layer>_avg_exp']`` back before calling.
    mask
        ``(n_spots, n_genes)`` bool, True where the entry was observed
        (``adata.layers['mask']``). ``None`` scores every entry.

    Returns
    -------
    dict
        ``MSE``, ``MAE`` (over all observed entries), ``PCC-Gene``, ``R2-Gene``
        (per gene across spots, averaged over genes), ``PCC-Patch``, ``R2-Patch``
        (per spot across genes, averaged over spots), ``Global`` =
        PCC-Gene + PCC-Patch + R2-Gene + R2-Patch − MSE − MAE, plus
        ``n_genes_excluded`` and ``n_spots_excluded``: genes/spots with fewer than
        two observed entries or constant observed truth, left out of the PCC/R²
        means (a warning says so; a mean over nothing is NaN, with a warning).

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``. Values match
    ``scipy.stats.pearsonr`` and ``sklearn.metrics.r2_score`` on the observed entries
    of each gene / spot (``tests/test_metrics.py``).
    """
    t, p, m = _validate(y_true, y_pred, mask)
    n_obs = m.sum()
    err = (t - p) * m
    out = {"MSE": float((err**2).sum() / n_obs), "MAE": float(np.abs(err).sum() / n_obs)}
    excluded = {}
    for axis, what in ((0, "Gene"), (1, "Patch")):
        pcc, r2, ok = _masked_pcc_r2(t, p, m, axis)
        excluded[what] = int((~ok).sum())
        if ok.any():
            out[f"PCC-{what}"] = float(pcc[ok].mean())
            out[f"R2-{what}"] = float(r2[ok].mean())
        else:
            warnings.warn(
                f"compute_metrics: no {'gene' if axis == 0 else 'spot'} has two or more observed entries "
                f"with varying truth; PCC-{what} and R2-{what} are NaN",
                RuntimeWarning,
                stacklevel=2,
            )
            out[f"PCC-{what}"] = out[f"R2-{what}"] = float("nan")
    if excluded["Gene"] or excluded["Patch"]:
        warnings.warn(
            f"compute_metrics: {excluded['Gene']} gene(s) and {excluded['Patch']} spot(s) have < 2 observed "
            "entries or constant truth and are left out of the PCC/R2 means",
            RuntimeWarning,
            stacklevel=2,
        )
    out["Global"] = out["PCC-Gene"] + out["PCC-Patch"] + out["R2-Gene"] + out["R2-Patch"] - out["MSE"] - out["MAE"]
    ordered = {k: out[k] for k in METRIC_KEYS}
    ordered["n_genes_excluded"] = excluded["Gene"]
    ordered["n_spots_excluded"] = excluded["Patch"]
    return ordered
