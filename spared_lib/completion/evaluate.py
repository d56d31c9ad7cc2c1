"""Scoring completion: hide observed entries at random, complete them, compare (paper Fig. 3).

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from spared_lib.preprocessing import nearest_in_slide

from .infer import INFERENCE_RULES, layer_arrays, predict_centres

#: Completion methods: SpaCKLE, the adaptive median, stLearn's SME, and the train-split gene mean
#: (the baseline every results table carries: what knowing nothing about the spot gives).
METHODS = ("spackle", "median", "sme", "mean")


def train_mean_complete(adata, x: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Fill every non-visible entry with its gene's mean over the visible entries of the train split.

    Introduced in ``notebooks/03_spackle.py``.
    """
    x = np.asarray(x, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    train = (np.asarray(adata.obs["split"]).astype(str) == "train") if "split" in adata.obs else None
    if train is None or not train.any():
        train = np.ones(adata.n_obs, bool)
    seen = visible & train[:, None]
    mean = np.where(seen, x, 0).sum(0) / np.maximum(seen.sum(0), 1)
    return np.where(visible, x, mean).astype(np.float32)


def random_observed_mask(mask: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Bool array hiding each observed entry (``mask`` True) independently with probability ``fraction``."""
    if not 0 < fraction < 1:
        raise ValueError(f"mask_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    return (rng.random(np.shape(mask)) < fraction) & np.asarray(mask, dtype=bool)


def eval_spots(adata, split: str | None = "auto") -> tuple[np.ndarray, str]:
    """Centre spots to score: the test split, else validation, else every spot (``'auto'``)."""
    labels = np.asarray(adata.obs["split"]).astype(str) if "split" in adata.obs else None
    if split is None or labels is None:
        return np.arange(adata.n_obs), "all"
    if split != "auto":
        sel = np.flatnonzero(labels == split)
        if sel.size == 0:
            raise ValueError(f"adata.obs['split'] has no {split!r} spots (has {sorted(set(labels))})")
        return sel, split
    for name in ("test", "val"):
        sel = np.flatnonzero(labels == name)
        if sel.size:
            return sel, name
    return np.arange(adata.n_obs), "all"


def complete_masked(adata, method: str, x: np.ndarray, visible: np.ndarray, *, model=None,
                    morphology=None, inference: str | None = None, spots: np.ndarray | None = None) -> np.ndarray:
    """Complete every non-visible entry of ``x`` with ``method``; returns an ``(n, G)`` array.

    ``method`` is one of :data:`METHODS`; ``model`` is the trained SpaCKLE for ``'spackle'``; ``inference`` its input rule
    (:data:`spared_lib.completion.infer.INFERENCE_RULES`, default the one in ``model.meta``; the
    ``'median'`` rule's fill is computed from the visible entries only, so no hidden value leaks
    in); ``morphology`` the image features for ``'sme'`` (None drops the morphology term).
    ``spots`` limits SpaCKLE's predictions to those centre spots (the ones being scored); the
    other spots' non-visible entries are then NaN. The baselines always fill every spot (their
    filters need the whole slide anyway).

    Introduced in ``notebooks/03_spackle.py``.
    """
    if method == "spackle":
        if model is None:
            raise ValueError("method 'spackle' needs a trained model (spared_lib.completion.train_spackle)")
        meta = getattr(model, "meta", {}) or {}
        rule = inference or meta.get("inference", "zeroed")
        if rule not in INFERENCE_RULES:
            raise ValueError(f"inference must be one of {INFERENCE_RULES}, got {rule!r}")
        context = None
        if rule == "median":
            from .baselines import median_complete

            context = median_complete(adata, x, visible)
        nbr = nearest_in_slide(adata, meta.get("n_neighbors", 18), meta.get("radius", "auto"))
        if spots is None:
            return np.where(visible, x, predict_centres(model, x, visible, nbr, context=context))
        out = np.where(visible, x, np.nan).astype(np.float32)
        out[spots] = np.where(visible[spots], x[spots], predict_centres(model, x, visible, nbr, spots, context=context))
        return out
    if method == "median":
        from .baselines import median_complete

        return median_complete(adata, x, visible)
    if method == "sme":
        from .baselines import sme_complete

        return sme_complete(adata, x, visible, morphology=morphology)
    if method == "mean":
        return train_mean_complete(adata, x, visible)
    raise ValueError(f"unknown completion method {method!r}; choose one of {METHODS}")


def evaluate_completion(
    adata,
    method: str,
    mask_fraction: float = 0.3,
    seed: int = 0,
    *,
    model=None,
    layer: str = "c_d_log1p",
    split: str | None = "auto",
    morphology: np.ndarray | None = None,
    train_kwargs: dict | None = None,
    return_completion: bool = False,
    inference: str | None = None,
) -> dict:
    """Mask a fraction of the observed entries, complete them, and score the completion.

    Each observed entry (``layers['mask']`` True) is hidden with probability ``mask_fraction``
    (entries missing in the data stay hidden too); the method completes all hidden entries from
    the visible ones, and the SPEC §5 metrics are computed on the synthetically hidden entries
    of the scored centre spots only.

    Parameters
    ----------
    adata
        Preprocessed AnnData.
    method
        ``'spackle'``, ``'median'``, ``'sme'`` or ``'mean'`` (the train-split gene mean).
    mask_fraction, seed
        Fraction of observed entries hidden, and the seed of that random mask.
    model
        Trained SpaCKLE for ``'spackle'``; when None one is trained with
        :func:`train_spackle` (``train_kwargs``, seeded with ``seed``) on the train split.
    layer
        Ground truth and input layer (``c_d_log1p``).
    split
        Which spots are scored: ``'auto'`` (test, else validation, else all), a split name, or
        None (all spots).
    morphology
        Image features for SME (:func:`image_features`); None drops the morphology term.
    return_completion
        Also return the completed matrix (key ``'completed'``; SpaCKLE's holds NaN outside the
        scored spots) and the hidden mask (``'hidden'``).
    inference
        SpaCKLE's input rule (default: the model's own, ``model.meta['inference']``).

    Returns
    -------
    dict
        ``MSE``, ``MAE``, ``PCC-Gene``, ``PCC-Patch``, ``R2-Gene``, ``R2-Patch``, ``Global`` plus
        ``method``, ``mask_fraction``, ``seed``, ``split``, ``n_scored`` (hidden entries scored)
        and ``time_s`` (completion wall time); ``n_genes_excluded`` / ``n_spots_excluded`` count
        the genes and spots with fewer than two hidden entries (no PCC/R² for them).
    """
    from spared_lib.metrics import compute_metrics

    if method not in METHODS:
        raise ValueError(f"unknown completion method {method!r}; choose one of {METHODS}")
    x, m = layer_arrays(adata, layer)
    hidden = random_observed_mask(m, mask_fraction, seed)
    visible = m & ~hidden
    spots, split_name = eval_spots(adata, split)
    if method == "spackle" and model is None:
        from .train import train_spackle

        model, _ = train_spackle(adata, layer=layer, seed=seed, **(train_kwargs or {}))
    t0 = time.perf_counter()
    completed = complete_masked(adata, method, x, visible, model=model, morphology=morphology,
                                inference=inference, spots=spots)
    elapsed = time.perf_counter() - t0
    scored = hidden[spots]
    if not scored.any():
        raise ValueError("no observed entry was hidden in the scored spots; raise mask_fraction")
    with warnings.catch_warnings():
        # Only the hidden entries are scored, so a spot with fewer than two of them has no
        # PCC-Patch: expected at every masking fraction, and counted in n_spots_excluded.
        warnings.filterwarnings("ignore", message=r"compute_metrics: \d+ gene\(s\) and \d+ spot\(s\)",
                                category=RuntimeWarning)
        out = dict(compute_metrics(x[spots], completed[spots], scored))
    out.update(method=method, mask_fraction=float(mask_fraction), seed=int(seed), split=split_name,
               n_scored=int(scored.sum()), time_s=elapsed)
    if return_completion:
        out.update(completed=completed, hidden=hidden)
    return out
