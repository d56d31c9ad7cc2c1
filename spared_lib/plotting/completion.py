"""Figures of the completion chapter (paper Fig. 3): MSE violins, MSE vs masking, qualitative maps.

Introduced in ``notebooks/03_spackle.py``. SpaCKLE's training curves are
:func:`spared_lib.plotting.plot_training_curves`, shared with the prediction models.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import EXPRESSION_UNIT, _ax, _colorbar, _data_label, _title

METHOD_ORDER = ["spackle", "median", "sme"]
METHOD_LABEL = {"spackle": "SpaCKLE", "median": "Median", "sme": "stLearn SME"}
PALETTE = {"SpaCKLE": "#1f77b4", "Median": "#d62728", "stLearn SME": "#7f7f7f"}


def completion_violin(results: pd.DataFrame, *, data_label: str | None = None, ax=None):
    """Violin of log10 completion MSE per method over datasets and seeds (Fig. 3, upper left).

    ``results`` has columns ``method`` and ``MSE`` (one row per dataset x seed run).

    Defined in ``notebooks/03_spackle.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="completion_violin")
    fig, ax = _ax(ax, (5, 4))
    df = results.assign(method=results["method"].map(METHOD_LABEL).fillna(results["method"]),
                        log_mse=np.log10(results["MSE"].astype(float)))
    order = [METHOD_LABEL[m] for m in METHOD_ORDER if METHOD_LABEL[m] in set(df["method"])]
    sns.violinplot(data=df, x="method", y="log_mse", hue="method", order=order, palette=PALETTE,
                   cut=0, inner="point", legend=False, ax=ax)
    ax.set(xlabel="", ylabel="log10 completion MSE", title=_title("Completion MSE per method", label))
    return fig


def mse_vs_masking(results: pd.DataFrame, *, data_label: str | None = None, methods=("spackle", "median"),
                   ax=None):
    """Completion MSE against the percentage of masked observed entries (Fig. 3, middle left).

    Lines are the mean over seeds, bands the 95 % interval (seaborn).

    Defined in ``notebooks/03_spackle.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="mse_vs_masking")
    fig, ax = _ax(ax, (5, 4))
    df = results[results["method"].isin(methods)]
    df = df.assign(method=df["method"].map(METHOD_LABEL), masked=100 * df["mask_fraction"])
    sns.lineplot(data=df, x="masked", y="MSE", hue="method", palette=PALETTE, marker="o", ax=ax)
    ax.set(xlabel="masked observed entries (%)", ylabel="completion MSE", title=_title("MSE vs masking", label))
    ax.legend(title="", frameon=False)
    return fig


def qualitative_panel(adata, gene: str, panels: dict, slide_id: str, fractions: list[float], *,
                      data_label: str | None = None, ax=None, res: str = "hires",
                      colorbar_label: str = EXPRESSION_UNIT):
    """Rows ground truth / masked / median / SpaCKLE, columns increasing masking (Fig. 3, right).

    Parameters
    ----------
    adata
        The AnnData whose spots are drawn (over the H&E with
        :func:`spared_lib.plotting.spatial_scatter`).
    gene
        The gene shown (a ``var_names`` entry or a symbol).
    panels
        ``{fraction: {"truth": (n,), "masked": (n,) with NaN where hidden, "median": (n,),
        "spackle": (n,)}}``, values for every spot of ``adata``.
    fractions
        Column order.
    ax
        A 4 x ``len(fractions)`` grid of axes (created when None).
    colorbar_label
        Unit of the values (one colour bar for every panel).

    Defined in ``notebooks/03_spackle.py``.
    """
    from ._common import gene_index, gene_label
    from .spatial import spatial_scatter

    label = _data_label(data_label, adata, "qualitative_panel")
    rows = [("truth", "ground truth"), ("masked", "masked"), ("median", "median"), ("spackle", "SpaCKLE")]
    fig, axes = _ax(ax, (3 * len(fractions) + 1, 3 * len(rows)), shape=(len(rows), len(fractions)))
    sel = np.asarray(adata.obs["slide_id"].astype(str) == str(slide_id))
    truth = panels[fractions[0]]["truth"][sel]
    vmin, vmax = np.nanpercentile(truth, [1, 99])
    for j, frac in enumerate(fractions):
        for i, (key, name) in enumerate(rows):
            vals = np.asarray(panels[frac][key], dtype=float)[sel]
            a = axes[i, j]
            spatial_scatter(adata, color=vals, slide_id=slide_id, res=res, ax=a, vmin=vmin, vmax=vmax,
                            colorbar=False)
            a.set_title(f"{name}, {frac:.0%} masked", fontsize=9)
            a.set_axis_off()
    # One scale for the whole grid, so that the rows compare like with like.
    _colorbar(axes[0, 0].collections[-1], axes, colorbar_label, shrink=0.5)
    fig.suptitle(_title(f"{gene_label(adata, gene_index(adata, gene))}, slide {slide_id}", label))
    return fig
