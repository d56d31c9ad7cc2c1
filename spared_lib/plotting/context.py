"""Figures of the context-models chapter (``notebooks/05_context_models.py``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def plot_metric_vs_params(table: pd.DataFrame, ax=None, metric: str = "MSE", params: str = "n_params",
                          data: str = ""):
    """One point per model: ``metric`` against its number of parameters (log scale).

    Parameters
    ----------
    table
        One row per model, indexed by model name, with columns ``metric`` and ``params``.
    data
        Name of the data the metrics come from (a dataset key, or "synthetic"); goes in the title.

    Defined in ``notebooks/05_context_models.py``.
    """
    missing = [c for c in (metric, params) if c not in table.columns]
    if missing:
        raise ValueError(f"plot_metric_vs_params: table lacks column(s) {missing} (has {list(table.columns)})")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.6), dpi=100)
    colors = sns.color_palette("tab10", len(table))
    ax.scatter(table[params], table[metric], c=colors, s=45, zorder=2)
    for (name, row), col in zip(table.iterrows(), colors):  # one label per model (six)
        ax.annotate(str(name), (row[params], row[metric]), xytext=(4, 3), textcoords="offset points",
                    fontsize=8, color=col)
    ax.set_xscale("log")
    rho = table[[params, metric]].corr(method="spearman").iloc[0, 1] if len(table) > 2 else np.nan
    ax.set(xlabel=f"parameters ({params})", ylabel=metric,
           title=f"{metric} vs size{f' — {data}' if data else ''} (Spearman ρ = {rho:.2f})")
    return ax.figure
