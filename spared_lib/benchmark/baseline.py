"""The predictor every model must beat: each gene's mean over the training split.

A model that has learnt nothing from the image predicts (at best) the training mean of every gene;
its metrics are the floor a results table is read against (issue 18: every results table has this
row). The row has the shape of :func:`spared_lib.benchmark.final_results`, with ``model =
'train_mean'``, so the two concatenate.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from spared_lib.metrics import METRICS, compute_metrics

from .grid import TARGETS, parse_targets

#: The ``model`` value of the baseline rows.
TRAIN_MEAN = "train_mean"


def _dense(a) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)


def train_mean_metrics(adata, target_layer: str, eval_split: str | None = None) -> dict:
    """Metrics of predicting every spot of ``eval_split`` with the train-split mean of each gene.

    The mean is taken over every training entry of ``target_layer`` (what the training loss sees,
    and where the models' output biases start); metrics, like every model's, over observed entries
    of the evaluation split only (test, or validation where there is no test split, as
    :func:`spared_lib.training.fit` chooses).

    Raises
    ------
    KeyError
        ``adata`` lacks the layer, ``layers['mask']`` or ``obs['split']``.
    ValueError
        The training or the evaluation split is empty.

    Defined in ``notebooks/06_benchmark.py``.
    """
    for where, key, have in (("adata.layers", target_layer, adata.layers), ("adata.layers", "mask", adata.layers),
                             ("adata.obs", "split", adata.obs)):
        if key not in have:
            raise KeyError(f"train_mean_metrics: {where} has no {key!r}")
    split = np.asarray(adata.obs["split"].astype(str))
    if eval_split is None:
        eval_split = "test" if (split == "test").any() else "val"
    train, ev = split == "train", split == eval_split
    if not train.any() or not ev.any():
        raise ValueError(f"train_mean_metrics: needs train and {eval_split} spots; obs['split'] has "
                         f"{dict(zip(*np.unique(split, return_counts=True)))}")
    y = _dense(adata.layers[target_layer]).astype(np.float32)
    mask = _dense(adata.layers["mask"]).astype(bool)
    mean = y[train].mean(0)
    metrics = compute_metrics(y[ev], np.broadcast_to(mean, (int(ev.sum()), y.shape[1])), mask[ev])
    return {**{m: float(metrics[m]) for m in METRICS}, "eval_split": eval_split}


def train_mean_results(data: Mapping[str, object], targets: str | Sequence[str] = ("raw", "completed")) -> pd.DataFrame:
    """One baseline row per (dataset, target), in the columns of ``final_results``.

    Parameters
    ----------
    data
        ``name -> adata`` or ``name -> (adata, patches)`` (what :func:`run_benchmark` takes).
    targets
        Benchmark targets (``raw`` = ``c_d_log1p``, ``completed`` = ``c_t_log1p``).

    Defined in ``notebooks/06_benchmark.py``.
    """
    rows = []
    for name, value in data.items():
        adata = value[0] if isinstance(value, tuple) else value
        for target in parse_targets(targets):
            rows.append({"dataset": name, "model": TRAIN_MEAN, "target": target, "n_params": 0,
                         **train_mean_metrics(adata, TARGETS[target])})
    return pd.DataFrame(rows)
