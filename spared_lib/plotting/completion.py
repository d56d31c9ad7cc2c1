"""Figures of the completion chapter (paper Fig. 3): MSE violins, MSE vs masking, qualitative maps.

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

METHOD_ORDER = ["spackle", "median", "sme"]
METHOD_LABEL = {"spackle": "SpaCKLE", "median": "Median", "sme": "stLearn SME"}
PALETTE = {"SpaCKLE": "#1f77b4", "Median": "#d62728", "stLearn SME": "#7f7f7f"}


def _ax(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=100)
    return ax


def completion_violin(results: pd.DataFrame, data_label: str, ax=None):
    """Violin of log10 completion MSE per method over datasets and seeds (Fig. 3, upper left).

    ``results`` has columns ``method`` and ``MSE`` (one row per dataset x seed run).
    """
    import seaborn as sns

    ax = _ax(ax, (5, 4))
    df = results.assign(method=results["method"].map(METHOD_LABEL).fillna(results["method"]),
                        log_mse=np.log10(results["MSE"].astype(float)))
    order = [METHOD_LABEL[m] for m in METHOD_ORDER if METHOD_LABEL[m] in set(df["method"])]
    sns.violinplot(data=df, x="method", y="log_mse", hue="method", order=order, palette=PALETTE,
                   cut=0, inner="point", legend=False, ax=ax)
    ax.set(xlabel="", ylabel="log10 completion MSE", title=f"Completion MSE per method — {data_label}")
    return ax.figure


def mse_vs_masking(results: pd.DataFrame, data_label: str, methods=("spackle", "median"), ax=None):
    """Completion MSE against the percentage of masked observed entries (Fig. 3, middle left).

    Lines are the mean over seeds, bands the 95 % interval (seaborn).
    """
    import seaborn as sns

    ax = _ax(ax, (5, 4))
    df = results[results["method"].isin(methods)]
    df = df.assign(method=df["method"].map(METHOD_LABEL), masked=100 * df["mask_fraction"])
    sns.lineplot(data=df, x="masked", y="MSE", hue="method", palette=PALETTE, marker="o", ax=ax)
    ax.set(xlabel="masked observed entries (%)", ylabel="completion MSE",
           title=f"MSE vs masking — {data_label}")
    ax.legend(title="")
    return ax.figure


def qualitative_panel(adata, gene: str, panels: dict, slide_id: str, data_label: str,
                      fractions: list[float], res: str = "hires"):
    """Rows ground truth / masked / median / SpaCKLE, columns increasing masking (Fig. 3, right).

    Parameters
    ----------
    adata
        The AnnData whose spots are drawn (over the H&E with
        :func:`spared_lib.plotting.spatial_scatter`).
    gene
        The gene shown (a ``var_names`` entry).
    panels
        ``{fraction: {"truth": (n,), "masked": (n,) with NaN where hidden, "median": (n,),
        "spackle": (n,)}}``, values for every spot of ``adata``.
    fractions
        Column order.
    """
    import matplotlib.pyplot as plt

    from .spatial import spatial_scatter

    rows = [("truth", "ground truth"), ("masked", "masked"), ("median", "median"), ("spackle", "SpaCKLE")]
    fig, axes = plt.subplots(len(rows), len(fractions), figsize=(3 * len(fractions), 3 * len(rows)),
                             dpi=100, squeeze=False)
    sel = np.asarray(adata.obs["slide_id"].astype(str) == str(slide_id))
    truth = panels[fractions[0]]["truth"][sel]
    vmin, vmax = np.nanpercentile(truth, [1, 99])
    for j, frac in enumerate(fractions):
        for i, (key, label) in enumerate(rows):
            vals = np.asarray(panels[frac][key], dtype=float)[sel]
            ax = axes[i, j]
            spatial_scatter(adata, color=vals, slide_id=slide_id, res=res, ax=ax, vmin=vmin, vmax=vmax,
                            colorbar=False)
            ax.set_title(f"{label}, {frac:.0%} masked", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(f"{gene} — {data_label}, slide {slide_id}")
    fig.tight_layout()
    return fig


def training_curves(history: dict[str, pd.DataFrame], data_label: str, ax=None):
    """Training loss (smoothed) and validation MSE per step for one or more runs."""
    ax = _ax(ax, (6, 4))
    for i, (name, h) in enumerate(history.items()):
        colour = f"C{i}"
        ax.plot(h["step"], h["train_loss"].rolling(20, min_periods=1).mean(), color=colour, alpha=0.5,
                label=f"{name}: train loss")
        v = h.dropna(subset=["val_mse"])
        ax.plot(v["step"], v["val_mse"], color=colour, marker="o", ms=3, label=f"{name}: validation MSE")
    ax.set(xlabel="step", ylabel="MSE", yscale="log", title=f"SpaCKLE training — {data_label}")
    ax.legend(fontsize=8)
    return ax.figure
