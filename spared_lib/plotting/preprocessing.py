"""Figures of the preprocessing chapter: the gene-filter curve, value distributions, Moran's I
ranking, ComBat PCA, Δ distributions, the patch gallery and the scaling of the pipeline.

Introduced in ``notebooks/02_preprocessing.py``. Each function takes ``ax`` (one axes, or one per
panel), names its data in the title (``data_label``, by default the AnnData's dataset key), and
returns the figure.
"""
from __future__ import annotations

import numpy as np

from ._common import _ax, _data_label, _title, gene_label, layer_unit


def plot_filter_curve(curve: dict, real_data_percentage: float, n_kept: int, *, data_label: str | None = None,
                      ax=None):
    """Running mean of ``glob_exp_frac`` over genes sorted by ``exp_frac`` (from
    ``filter_spots_and_genes(...).uns['filter_curve']``), with the 0.7 threshold and the cut.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    label = _data_label(data_label, where="plot_filter_curve")
    fig, ax = _ax(ax)
    x = np.arange(1, len(curve["running_glob_exp_frac"]) + 1)
    ax.plot(x, curve["running_glob_exp_frac"], label="running mean of glob_exp_frac")
    ax.plot(x, curve["exp_frac"], lw=0.8, alpha=0.7, label="exp_frac (sorted)")
    ax.axhline(real_data_percentage, color="k", ls="--", lw=0.8, label=f"threshold {real_data_percentage}")
    ax.axvline(n_kept, color="C3", lw=0.8, label=f"{n_kept} genes kept")
    ax.set(xscale="log", xlabel="genes, by decreasing exp_frac", ylabel="fraction of spots",
           title=_title("Expression-fraction filter", label))
    ax.legend(fontsize=8)
    return fig


def plot_value_distributions(adata, layers=("counts", "tpm", "log1p"), *, data_label: str | None = None, ax=None,
                             max_values=200_000, seed: int = 0):
    """Histograms of the non-zero values of each layer (counts and TPM on log axes), one panel per layer.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, adata, "plot_value_distributions")
    fig, axes = _ax(ax, (4 * len(layers), 3.4), shape=(1, len(layers)))
    rng = np.random.default_rng(seed)
    for a, layer in zip(axes.flat, layers):
        X = adata.layers[layer]
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
        v = X[X != 0]
        if v.size > max_values:
            v = rng.choice(v, max_values, replace=False)
        log = layer in ("counts", "tpm")
        sns.histplot(v, bins=60, log_scale=log, ax=a, color="C0", element="step")
        zero = 1 - (X != 0).mean()
        a.set(title=f"{layer} ({zero:.0%} zeros)", xlabel=f"non-zero {layer} ({layer_unit(layer)})")
    fig.suptitle(f"{label}: value distributions")
    return fig


def plot_moran_ranking(moran_ranked: np.ndarray, n_selected: int, *, data_label: str | None = None, ax=None):
    """Moran's I of all filtered genes in decreasing order, the selected top genes shaded.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    label = _data_label(data_label, where="plot_moran_ranking")
    fig, ax = _ax(ax)
    m = np.asarray(moran_ranked)
    m = m[np.isfinite(m)]
    x = np.arange(1, m.size + 1)
    ax.plot(x, m, color="C0")
    ax.axvspan(1, n_selected, color="C2", alpha=0.2, label=f"top {n_selected} kept")
    ax.set(xlabel="gene rank", ylabel="Moran's I (mean over slides)", title=_title("Moran's I of d_log1p", label))
    ax.legend(fontsize=8)
    return fig


def plot_pca_by_slide(layers: dict, obs_slide, *, data_label: str | None = None, ax=None, seed: int = 0,
                      max_spots: int = 5000, batch_label: str = "slide"):
    """PCA (2 components, fitted per layer) of each layer, spots coloured by their batch
    (``obs_slide``: the slide, or another ComBat key named by ``batch_label``, e.g. ``'patient'``);
    one panel per layer.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import seaborn as sns
    from sklearn.decomposition import PCA

    label = _data_label(data_label, where="plot_pca_by_slide")
    slides = np.asarray(obs_slide).astype(str)
    rng = np.random.default_rng(seed)
    pick = np.arange(len(slides)) if len(slides) <= max_spots else rng.choice(len(slides), max_spots, replace=False)
    fig, axes = _ax(ax, (4.5 * len(layers) + 1.5, 4.2), shape=(1, len(layers)))
    axes = list(axes.flat)
    for a, (name, X) in zip(axes, layers.items()):
        Z = PCA(2, random_state=seed).fit_transform(np.asarray(X, dtype=np.float64)[pick])
        sns.scatterplot(x=Z[:, 0], y=Z[:, 1], hue=slides[pick], s=6, linewidth=0, ax=a, legend=a is axes[-1])
        a.set(title=f"{name}", xlabel="PC1", ylabel="PC2")
    sns.move_legend(axes[-1], "upper left", bbox_to_anchor=(1, 1), title=batch_label, frameon=False)
    fig.suptitle(f"{label}: batch effect before / after ComBat (PCA, coloured by {batch_label})")
    return fig


def plot_delta_distributions(adata, layers=("d_log1p", "d_deltas"), n_genes: int = 6, *,
                             data_label: str | None = None, ax=None):
    """Per-gene violins of a layer and its Δ version for the first ``n_genes`` genes; one panel per layer.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import pandas as pd
    import seaborn as sns

    label = _data_label(data_label, adata, "plot_delta_distributions")
    names = [gene_label(adata, j, with_id=False) for j in range(min(n_genes, adata.n_vars))]
    fig, axes = _ax(ax, (5 * len(layers), 3.8), shape=(1, len(layers)))
    for a, layer in zip(axes.flat, layers):
        X = np.asarray(adata.layers[layer])[:, :len(names)]
        df = pd.DataFrame(X, columns=names).melt(var_name="gene", value_name=layer)
        sns.violinplot(df, x="gene", y=layer, ax=a, inner=None, cut=0, density_norm="width", linewidth=0.6)
        if "delta" in layer:
            a.axhline(0, color="k", lw=0.8)
        a.tick_params(axis="x", rotation=45)
        a.set(title=layer, xlabel="", ylabel=f"{layer} ({layer_unit(layer)})")
    fig.suptitle(f"{label}: expression and Δ (train-split mean subtracted)")
    return fig


def plot_patch_gallery(adata, patches, n: int = 8, seed: int = 0, *, data_label: str | None = None, ax=None,
                       slide_id=None):
    """``n`` random 224-px patches, with their spots marked on the slide image above them.

    ``ax``, when given, is ``n + 1`` axes: the slide first, then one per patch.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import matplotlib.pyplot as plt

    from .spatial import slide_image, spatial_scatter

    label = _data_label(data_label, adata, "plot_patch_gallery")
    slides = adata.obs["slide_id"].astype(str).to_numpy()
    slide_id = slide_id or slides[0]
    rows = np.flatnonzero(slides == slide_id)
    pick = np.sort(np.random.default_rng(seed).choice(rows, min(n, rows.size), replace=False))
    if ax is None:
        fig = plt.figure(figsize=(max(2 * len(pick), 6), 6.5), dpi=100, layout="constrained")
        gs = fig.add_gridspec(2, len(pick), height_ratios=[2.2, 1])
        axes = [fig.add_subplot(gs[0, :])] + [fig.add_subplot(gs[1, k]) for k in range(len(pick))]
    else:
        fig, axes = _ax(ax, shape=(1, len(pick) + 1))
        axes = list(axes.flat)
    spatial_scatter(adata, None, slide_id=slide_id, ax=axes[0], alpha=0.08,
                    title=_title(f"Slide {slide_id}: spots of the patches below", label))
    _, scale = slide_image(adata, slide_id)
    for k, (x, y) in enumerate(adata.obsm["spatial"][pick] * scale):
        axes[0].annotate(str(k + 1), (x, y), color="k", fontsize=9, ha="center", va="center",
                         bbox=dict(boxstyle="circle,pad=0.15", fc="yellow", ec="k", lw=0.5))
    axes[0].set(xlabel="", ylabel="")
    for k, r in enumerate(pick):
        axes[k + 1].imshow(np.asarray(patches[r]))
        axes[k + 1].set(title=f"{k + 1}", xticks=[], yticks=[])
    return fig


def plot_preprocessing_scaling(rows, *, data_label: str | None = None, ax=None, time_target=None,
                               memory_target=None):
    """Time and peak memory of preprocessing against the number of spots, one line per
    implementation (ours, the original ``spared``), from the ``scaling`` rows of
    ``load_result("preprocess_vs_spared")``; two panels. The dotted line in the time panel is
    proportional growth from the smallest size (what linear scaling looks like); the targets,
    if given as ``(n_spots, value)``, are marked with a cross.

    Defined in ``notebooks/02_preprocessing.py``.
    """
    import pandas as pd

    label = _data_label(data_label, where="plot_preprocessing_scaling")
    df = pd.DataFrame(list(rows))
    if "seconds" not in df or df["seconds"].isna().all():
        raise ValueError("plot_preprocessing_scaling: no finished runs (rows with 'seconds')")
    df = df[df["seconds"].notna()].sort_values(["impl", "n_spots"])
    fig, axes = _ax(ax, (10, 3.8), shape=(1, 2))
    names = {"ours": "spared_lib (ours)", "spared": "spared 2.2.1 (original)"}
    panels = ((axes.flat[0], "seconds", "time (s)", time_target),
              (axes.flat[1], "peak_rss_gb", "peak memory, process RSS (GB)", memory_target))
    for a, column, ylabel, target in panels:
        for k, (impl, part) in enumerate(df.groupby("impl", sort=False)):
            x, y = part["n_spots"].to_numpy(), part[column].to_numpy()
            a.plot(x, y, "o-", color=f"C{k}", label=names.get(impl, impl))
            if column == "seconds":
                a.plot(x, y[0] * x / x[0], ":", color=f"C{k}", lw=1)
        if target is not None:
            a.plot(*target, "x", color="k", ms=9, mew=2, label="target")
        a.set(xlabel="spots (3,000 genes)", ylabel=ylabel)
        a.grid(alpha=0.3)
    axes.flat[0].set_yscale("log")  # spared and ours differ by an order of magnitude
    axes.flat[1].set_ylim(0, None)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(_title("Preprocessing time and memory against dataset size", label,
                        "dotted: proportional to the number of spots"))
    return fig
