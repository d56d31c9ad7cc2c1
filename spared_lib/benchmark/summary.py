"""Summaries of a results table used by the paper's figures (Fig. 1b, 4a, 4b).

All functions take a tidy table with one row per (dataset, model, target) — our
:func:`spared_lib.benchmark.final_results` or the published table from
:func:`spared_lib.benchmark.load_published_results` — and never loop over rows.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import pandas as pd


def _check(df: pd.DataFrame, cols, where: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: the results table lacks column(s) {missing} (has {list(df.columns)})")


def normalised_mse(df: pd.DataFrame, metric: str = "MSE") -> pd.DataFrame:
    """Add ``<metric>_norm`` = metric / the best (lowest) metric of the same dataset and target.

    This is the paper's Fig. 4a normalisation: 1 is the best model of a dataset, 1.2
    is 20 % worse than it.

    Defined in ``notebooks/06_benchmark.py``.
    """
    _check(df, ["dataset", "model", metric], "normalised_mse")
    out = df.dropna(subset=[metric]).copy()
    by = ["dataset", "target"] if "target" in out.columns else ["dataset"]
    best = out.groupby(by)[metric].transform("min")
    if (best <= 0).any():
        raise ValueError(f"normalised_mse: {metric} must be positive to normalise by the best value")
    out[f"{metric}_norm"] = out[metric] / best
    return out


def best_per_dataset(df: pd.DataFrame, metric: str = "MSE", higher_is_better: bool = False) -> pd.DataFrame:
    """The winning model of each dataset (and target): ``dataset, [target,] model, <metric>``.

    Defined in ``notebooks/06_benchmark.py``.
    """
    _check(df, ["dataset", "model", metric], "best_per_dataset")
    out = df.dropna(subset=[metric]).reset_index(drop=True)  # idxmin labels must be unique
    by = ["dataset", "target"] if "target" in out.columns else ["dataset"]
    idx = out.groupby(by)[metric].idxmax() if higher_is_better else out.groupby(by)[metric].idxmin()
    return out.loc[idx.values, by + ["model", metric]].reset_index(drop=True)
