"""Figures of the preprocessing chapter: the gene-filter curve, value distributions, Moran's I
ranking, ComBat PCA, Δ distributions and the patch gallery.

Introduced in ``notebooks/02_preprocessing.py``. Each helper takes an ``ax`` (or a figure size),
names its data in the title, and returns the figure.
"""
from __future__ import annotations

import numpy as np


def _ax(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=100)
    return ax


def plot_filter_curve(curve: dict, real_data_percentage: float, n_kept: int, data_name: str, ax=None):
    """Running mean of ``glob_exp_frac`` over genes sorted by ``exp_frac`` (from
    ``filter_spots_and_genes(...).uns['filter_curve']``), with the 0.7 threshold and the cut.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    ax = _ax(ax)
    x = np.arange(1, len(curve["running_glob_exp_frac"]) + 1)
    ax.plot(x, curve["running_glob_exp_frac"], label="running mean of glob_exp_frac")
    ax.plot(x, curve["exp_frac"], lw=0.8, alpha=0.7, label="exp_frac (sorted)")
    ax.axhline(real_data_percentage, color="k", ls="--", lw=0.8, label=f"threshold {real_data_percentage}")
    ax.axvline(n_kept, color="C3", lw=0.8, label=f"{n_kept} genes kept")
    ax.set(xscale="log", xlabel="genes, by decreasing exp_frac", ylabel="fraction of spots",
           title=f"{data_name}: expression-fraction filter")
    ax.legend(fontsize=8)
    return ax.figure


def plot_value_distributions(adata, layers=("counts", "tpm", "log1p"), data_name: str = "", max_values=200_000,
                             seed: int = 0):
    """Histograms of the non-zero values of each layer (counts and TPM on log axes).

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.2), dpi=100)
    rng = np.random.default_rng(seed)
    for ax, layer in zip(np.atleast_1d(axes), layers):
        X = adata.layers[layer]
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        v = X[X != 0]
        if v.size > max_values:
            v = rng.choice(v, max_values, replace=False)
        log = layer in ("counts", "tpm")
        sns.histplot(v, bins=60, log_scale=log, ax=ax, color="C0", element="step")
        zero = 1 - (X != 0).mean()
        ax.set(title=f"{layer} ({zero:.0%} zeros)", xlabel=f"non-zero {layer}")
    fig.suptitle(f"{data_name}: value distributions")
    fig.tight_layout()
    return fig


def plot_moran_ranking(moran_ranked: np.ndarray, n_selected: int, data_name: str, ax=None):
    """Moran's I of all filtered genes in decreasing order, the selected top genes shaded.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    ax = _ax(ax)
    m = np.asarray(moran_ranked)
    m = m[np.isfinite(m)]
    x = np.arange(1, m.size + 1)
    ax.plot(x, m, color="C0")
    ax.axvspan(1, n_selected, color="C2", alpha=0.2, label=f"top {n_selected} kept")
    ax.set(xlabel="gene rank", ylabel="Moran's I (mean over slides)", title=f"{data_name}: Moran's I of d_log1p")
    ax.legend(fontsize=8)
    return ax.figure


def plot_pca_by_slide(layers: dict, obs_slide, data_name: str, seed: int = 0, max_spots: int = 5000):
    """PCA (2 components, fitted per layer) of each layer, spots coloured by slide.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns
    from sklearn.decomposition import PCA

    slides = np.asarray(obs_slide).astype(str)
    rng = np.random.default_rng(seed)
    pick = np.arange(len(slides)) if len(slides) <= max_spots else rng.choice(len(slides), max_spots, replace=False)
    fig, axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4), dpi=100)
    for ax, (name, X) in zip(np.atleast_1d(axes), layers.items()):
        Z = PCA(2, random_state=seed).fit_transform(np.asarray(X, dtype=np.float64)[pick])
        sns.scatterplot(x=Z[:, 0], y=Z[:, 1], hue=slides[pick], s=6, linewidth=0, ax=ax, legend=ax is axes[-1])
        ax.set(title=f"{name}", xlabel="PC1", ylabel="PC2")
    if len(layers) > 1:
        sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), title="slide")
    fig.suptitle(f"{data_name}: batch effect before / after ComBat (PCA, coloured by slide)")
    fig.tight_layout()
    return fig


def plot_delta_distributions(adata, layers=("d_log1p", "d_deltas"), n_genes: int = 6, data_name: str = ""):
    """Per-gene violins of a layer and its Δ version for the first ``n_genes`` genes.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    names = adata.var["gene_symbol"].to_numpy()[:n_genes] if "gene_symbol" in adata.var else adata.var_names[:n_genes]
    fig, axes = plt.subplots(1, len(layers), figsize=(5 * len(layers), 3.5), dpi=100, sharey=False)
    for ax, layer in zip(np.atleast_1d(axes), layers):
        X = np.asarray(adata.layers[layer])[:, :n_genes]
        df = pd.DataFrame(X, columns=names).melt(var_name="gene", value_name=layer)
        sns.violinplot(df, x="gene", y=layer, ax=ax, inner=None, cut=0, density_norm="width", linewidth=0.6)
        if "delta" in layer:
            ax.axhline(0, color="k", lw=0.8)
        ax.tick_params(axis="x", rotation=45)
        ax.set(title=layer, xlabel="")
    fig.suptitle(f"{data_name}: expression and Δ (train-split mean subtracted)")
    fig.tight_layout()
    return fig


def plot_patch_gallery(adata, patches, n: int = 8, seed: int = 0, data_name: str = "", slide_id=None):
    """``n`` random 224-px patches, with their spots marked on the slide image above them.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import matplotlib.pyplot as plt

    from .spatial import spatial_scatter

    slides = adata.obs["slide_id"].astype(str).to_numpy()
    slide_id = slide_id or slides[0]
    rows = np.flatnonzero(slides == slide_id)
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(n, rows.size), replace=False))
    fig = plt.figure(figsize=(2 * len(pick), 6.5), dpi=100)
    gs = fig.add_gridspec(2, len(pick), height_ratios=[2.2, 1])
    ax = fig.add_subplot(gs[0, :])
    marks = np.full(rows.size, "", dtype=object)
    pos = {r: i for i, r in enumerate(rows)}
    for k, r in enumerate(pick):
        marks[pos[r]] = str(k + 1)
    spatial_scatter(adata, None, slide_id=slide_id, ax=ax, alpha=0.08,
                    title=f"{data_name} — slide {slide_id}: spots of the patches below")
    xy = adata.obsm["spatial"][pick]
    from .spatial import slide_image

    _, scale = slide_image(adata, slide_id)
    for k, (x, y) in enumerate(xy * scale):
        ax.annotate(str(k + 1), (x, y), color="k", fontsize=9, ha="center", va="center",
                    bbox=dict(boxstyle="circle,pad=0.15", fc="yellow", ec="k", lw=0.5))
    ax.set(xlabel="", ylabel="")
    for k, r in enumerate(pick):
        a = fig.add_subplot(gs[1, k])
        a.imshow(np.asarray(patches[r]))
        a.set(title=f"{k + 1}", xticks=[], yticks=[])
    fig.tight_layout()
    return fig
