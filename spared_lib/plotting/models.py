"""Figures of the patch-models chapter (``notebooks/04_patch_models.py``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .spatial import spatial_scatter


def plot_training_curves(histories: dict, ax=None, data: str = ""):
    """Training loss (thin) and validation MSE (dots, lines) against steps, one colour per model.

    Parameters
    ----------
    histories
        ``{model name: FitResult.history}`` (columns ``step``, ``train_loss``, ``val_mse``).
    data
        The data the models were trained on (dataset key or "synthetic"); goes in the title.

    Defined in ``notebooks/04_patch_models.py``.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    colors = sns.color_palette("tab10", len(histories))
    for (name, h), col in zip(histories.items(), colors):  # one line per model (a handful)
        tl = h.dropna(subset=["train_loss"])
        ax.plot(tl["step"], tl["train_loss"], color=col, alpha=0.35, lw=1)
        vm = h.dropna(subset=["val_mse"])
        ax.plot(vm["step"], vm["val_mse"], "o-", color=col, lw=1.5, ms=4, label=name)
    ax.set_yscale("log")
    ax.legend(frameon=False, fontsize="small")
    ax.set(xlabel="step", ylabel="MSE (train loss: faint; validation: dots)",
           title=f"Training curves{f' — {data}' if data else ''}")
    return ax.figure


def plot_per_gene_pcc(per_gene: pd.DataFrame, ax=None, data: str = ""):
    """Distribution of per-gene PCC for each model (violin + points).

    Parameters
    ----------
    per_gene
        Long table with columns ``model``, ``gene`` and ``pcc``
        (from :func:`spared_lib.metrics.per_gene_metrics`).

    Defined in ``notebooks/04_patch_models.py``.
    """
    missing = {"model", "pcc"} - set(per_gene.columns)
    if missing:
        raise ValueError(f"plot_per_gene_pcc: table lacks column(s) {sorted(missing)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4), dpi=100)
    d = per_gene.dropna(subset=["pcc"])
    sns.violinplot(d, x="model", y="pcc", hue="model", ax=ax, inner=None, cut=0, legend=False, linewidth=0.8)
    sns.stripplot(d, x="model", y="pcc", ax=ax, color="k", size=2.5, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="", ylabel="PCC per gene (test spots)",
           title=f"Per-gene correlation{f' — {data}' if data else ''}")
    return ax.figure


def plot_expression_maps(adata, predictions: dict, genes, index, *, layer: str, slide_id=None,
                         data: str = "", res: str = "hires", figsize_per_panel: float = 2.6):
    """Ground truth next to each model's prediction, for a few genes, over the H&E of one slide.

    Rows are genes; the first column is the truth (``adata.layers[layer]``, observed
    entries only, missing ones blank), the others one per model. All panels of a row share
    one colour scale.

    Parameters
    ----------
    predictions
        ``{model name: (len(index), G) array}`` in log1p space (e.g. ``FitResult.predictions``).
    genes
        Gene ids (``var_names``) or symbols to show.
    index
        Row positions of ``adata`` the predictions belong to (``FitResult.eval_index``).
    slide_id
        Which slide to draw (default: the slide of the first evaluated spot).

    Defined in ``notebooks/04_patch_models.py``.
    """
    index = np.asarray(index)
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    slide_id = str(slide_id if slide_id is not None else slides[index[0]])
    on_slide = np.flatnonzero(slides == slide_id)
    pos = np.full(adata.n_obs, -1)
    pos[index] = np.arange(len(index))
    if (pos[on_slide] < 0).any():
        raise ValueError(f"slide {slide_id!r} has spots without predictions; pass a slide of the evaluated split")
    symbols = adata.var["gene_symbol"].astype(str) if "gene_symbol" in adata.var else pd.Series(
        adata.var_names, index=adata.var_names)
    cols = len(predictions) + 1
    fig, axes = plt.subplots(len(genes), cols, figsize=(figsize_per_panel * cols, figsize_per_panel * len(genes)),
                             dpi=100, squeeze=False)
    truth = np.asarray(adata.layers[layer])
    mask = np.asarray(adata.layers["mask"]).astype(bool)
    for r, gene in enumerate(genes):  # a few genes x a few models
        j = adata.var_names.get_loc(gene) if gene in adata.var_names else int(np.flatnonzero(symbols == gene)[0])
        label = symbols.iloc[j]
        true = np.where(mask[on_slide, j], truth[on_slide, j], np.nan)
        preds = {k: v[pos[on_slide], j] for k, v in predictions.items()}
        lo = np.nanmin([np.nanpercentile(true, 2)] + [np.percentile(p, 2) for p in preds.values()])
        hi = np.nanmax([np.nanpercentile(true, 98)] + [np.percentile(p, 98) for p in preds.values()])
        panels = {"truth (observed)": true, **preds}
        for c, (name, values) in enumerate(panels.items()):
            ok = ~np.isnan(values)
            full = np.full(adata.n_obs, np.nan)
            full[on_slide] = values
            sub = adata[on_slide[ok]] if not ok.all() else adata[on_slide]
            spatial_scatter(sub, full[on_slide][ok], slide_id=slide_id, ax=axes[r, c], vmin=lo, vmax=hi,
                            colorbar=c == cols - 1, res=res, title=f"{label}: {name}")
    fig.suptitle(f"{layer}, slide {slide_id} — {data}" if data else f"{layer}, slide {slide_id}")
    fig.tight_layout()
    return fig
