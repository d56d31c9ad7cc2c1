"""Figures of the completion chapter (paper Fig. 3): MSE violins, MSE vs masking, qualitative maps.

Introduced in ``notebooks/03_spackle.py``. SpaCKLE's training curves are
:func:`spared_lib.plotting.plot_training_curves`, shared with the prediction models.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import EXPRESSION_UNIT, _ax, _colorbar, _data_label, _title

METHOD_ORDER = ["spackle", "median", "sme", "mean"]
METHOD_LABEL = {"spackle": "SpaCKLE", "median": "Median", "sme": "stLearn SME", "mean": "train mean"}
PALETTE = {"SpaCKLE": "#1f77b4", "Median": "#d62728", "stLearn SME": "#7f7f7f", "train mean": "#bcbd22"}


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


def reduction_vs_masking(reductions: pd.DataFrame, *, data_label: str | None = None, ax=None):
    """SpaCKLE's MSE reduction against the median method per masking fraction, one line per dataset.

    ``reductions`` has columns ``dataset``, ``mask_fraction`` and ``reduction_vs_median_%`` (the
    ``reductions`` table of ``benchmarks/completion.py``). The thick line is the mean over
    datasets; below the dotted zero line SpaCKLE would be behind the median.

    Defined in ``notebooks/03_spackle.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="reduction_vs_masking")
    fig, ax = _ax(ax, (5.5, 4))
    df = reductions.assign(masked=100 * reductions["mask_fraction"])
    sns.lineplot(data=df, x="masked", y="reduction_vs_median_%", hue="dataset", marker="o", alpha=0.6,
                 linewidth=1, ax=ax)
    mean = df.groupby("masked")["reduction_vs_median_%"].mean()
    ax.plot(mean.index, mean.to_numpy(), color="black", linewidth=3, label="mean over datasets")
    ax.axhline(0, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="masked observed entries (%)", ylabel="MSE reduction vs median (%)",
           title=_title("SpaCKLE vs the median method", label))
    ax.legend(fontsize=7, frameon=False, loc="lower left", ncol=2)
    return fig


def training_input_study(summary: pd.DataFrame, *, data_label: str | None = None, split: str = "val", ax=None):
    """Mean completion MSE of each training-input variant, without and with ``centre`` (issue 16 §1).

    ``summary`` has columns ``variant``, ``centre``, ``inference`` and one column per split
    (``val``, ``test``), as ``benchmarks/completion.py``'s study summary; the rows of the median
    method and the train mean (if present) are drawn as dashed lines.

    Defined in ``notebooks/03_spackle.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="training_input_study")
    fig, ax = _ax(ax, (9, 4))
    baselines = {"median method": PALETTE["Median"], "train mean": PALETTE["train mean"]}
    df = summary[~summary["variant"].isin(baselines)].copy()
    df["configuration"] = (df["variant"].str.replace(": ", ":\n", n=1)
                           + np.where(df["inference"] == "median", ",\nmedian-filled inference", ""))
    df["input"] = np.where(df["centre"].astype(bool), "centred (not in the paper)", "raw (the paper)")
    sns.barplot(data=df, y="configuration", x=split, hue="input", orient="h", ax=ax,
                palette={"raw (the paper)": "#9ecae1", "centred (not in the paper)": "#3182bd"})
    for name, colour in baselines.items():
        base = summary.loc[summary["variant"] == name, split]
        if len(base):
            ax.axvline(float(base.iloc[0]), color=colour, linestyle="--", linewidth=1, label=name)
    values = pd.concat([df[split], summary[split]]).astype(float)
    if values.max() > 20 * values.min():  # raw inputs after a short schedule sit far above the rest
        ax.set_xscale("log")
    ax.set(xlabel=f"completion MSE, {split} spots (mean over datasets, fractions, seeds)", ylabel="",
           title=_title("What SpaCKLE sees in training", label))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
