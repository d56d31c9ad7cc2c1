"""Figures of the patch-models chapter (``notebooks/04_patch_models.py``).

Training curves are :func:`spared_lib.plotting.plot_training_curves` (shared with SpaCKLE).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _colorbar, _data_label, _title, gene_index, gene_label, layer_unit


def plot_per_gene_pcc(per_gene: pd.DataFrame, *, data_label: str | None = None, ax=None):
    """Distribution of per-gene PCC for each model (violin + points).

    Parameters
    ----------
    per_gene
        Long table with columns ``model``, ``gene`` and ``pcc``
        (from :func:`spared_lib.metrics.per_gene_metrics`).
    data_label
        The data the PCCs were measured on; goes in the title.

    Defined in ``notebooks/04_patch_models.py``.
    """
    import seaborn as sns

    missing = {"model", "pcc"} - set(per_gene.columns)
    if missing:
        raise ValueError(f"plot_per_gene_pcc: table lacks column(s) {sorted(missing)}")
    label = _data_label(data_label, where="plot_per_gene_pcc")
    fig, ax = _ax(ax, (6, 3.6))
    d = per_gene.dropna(subset=["pcc"])
    sns.violinplot(d, x="model", y="pcc", hue="model", ax=ax, inner=None, cut=0, legend=False, linewidth=0.8)
    sns.stripplot(d, x="model", y="pcc", ax=ax, color="k", size=2.5, alpha=0.6)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="", ylabel="PCC per gene (test spots)", title=_title("Per-gene correlation", label))
    return fig


def plot_expression_maps(adata, predictions: dict, genes, index, *, layer: str, slide_id=None,
                         data_label: str | None = None, ax=None, res: str = "hires",
                         figsize_per_panel: float = 2.6):
    """Ground truth next to each model's prediction, for a few genes, over the H&E of one slide.

    Rows are genes; the first column is the truth (``adata.layers[layer]``, observed
    entries only, missing ones blank), the others one per model. All panels of a row share
    one colour scale, shown by one colour bar per row in the layer's unit (log2(TPM+1)).

    Parameters
    ----------
    predictions
        ``{model name: (len(index), G) array}`` in ``layer``'s space (e.g. ``FitResult.predictions``).
    genes
        Gene ids (``var_names``) or symbols to show.
    index
        Row positions of ``adata`` the predictions belong to (``FitResult.eval_index``).
    slide_id
        Which slide to draw (default: the slide of the first evaluated spot).
    ax
        A ``len(genes)`` x ``len(predictions) + 1`` grid of axes (created when None).

    Defined in ``notebooks/04_patch_models.py``.
    """
    from .spatial import spatial_scatter

    label = _data_label(data_label, adata, "plot_expression_maps")
    index = np.asarray(index)
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    slide_id = str(slide_id if slide_id is not None else slides[index[0]])
    on_slide = np.flatnonzero(slides == slide_id)
    pos = np.full(adata.n_obs, -1)
    pos[index] = np.arange(len(index))
    if (pos[on_slide] < 0).any():
        raise ValueError(f"slide {slide_id!r} has spots without predictions; pass a slide of the evaluated split")
    cols = len(predictions) + 1
    fig, axes = _ax(ax, (figsize_per_panel * cols + 0.8, figsize_per_panel * len(genes) + 0.6),
                    shape=(len(genes), cols))
    truth = np.asarray(adata.layers[layer])
    mask = np.asarray(adata.layers["mask"]).astype(bool)
    for r, gene in enumerate(genes):  # a few genes x a few models
        j = gene_index(adata, gene)
        name_j = gene_label(adata, j, with_id=False)
        true = np.where(mask[on_slide, j], truth[on_slide, j], np.nan)
        preds = {k: np.asarray(v)[pos[on_slide], j] for k, v in predictions.items()}
        lo = np.nanmin([np.nanpercentile(true, 2)] + [np.percentile(p, 2) for p in preds.values()])
        hi = np.nanmax([np.nanpercentile(true, 98)] + [np.percentile(p, 98) for p in preds.values()])
        panels = {"truth (observed)": true, **preds}
        for c, (name, values) in enumerate(panels.items()):
            ok = ~np.isnan(values)
            sub = adata[on_slide[ok]] if not ok.all() else adata[on_slide]
            spatial_scatter(sub, values[ok], slide_id=slide_id, ax=axes[r, c], vmin=lo, vmax=hi,
                            colorbar=False, res=res, title=f"{name_j}: {name}")
        _colorbar(axes[r, -1].collections[-1], axes[r, :], layer_unit(layer), shrink=0.8)
    fig.suptitle(_title(f"{layer}, slide {slide_id}", label))
    return fig
