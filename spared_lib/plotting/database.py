"""Figures of the SpaRED database chapter: the 26 datasets, missing data, splits.

Introduced in ``notebooks/01_spared_database.py``. Every function takes optional axes, returns the
figure, and puts the data's name in the title.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ORGANISM_COLOURS = {"human": "#e78a61", "mouse": "#66b5a0"}


def _axes(ax, n=1, figsize=(7, 4)):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, axes = plt.subplots(1, n, figsize=figsize, dpi=100)
    return fig, axes


def plot_database_overview(table: pd.DataFrame, axes=None):
    """The paper's Fig. 1a as two panels: datasets per organism, and spots per tissue.

    ``table`` is :func:`spared_lib.data.datasets_table`.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, axes = _axes(axes, 2, figsize=(12, 4.5)) if axes is None else (axes[0].figure, axes)
    per_org = table.groupby("organism").agg(datasets=("spots", "size"), spots=("spots", "sum"))
    sns.barplot(x=per_org.index, y=per_org["datasets"], hue=per_org.index, ax=axes[0],
                palette=ORGANISM_COLOURS, legend=False)
    for i, (n, s) in enumerate(zip(per_org["datasets"], per_org["spots"])):
        axes[0].text(i, n, f"{n} datasets\n{s:,} spots", ha="center", va="bottom", fontsize=9)
    axes[0].set(title="SpaRED (registry): datasets per organism", xlabel="", ylabel="datasets",
                ylim=(0, per_org["datasets"].max() * 1.3))
    tissue = (table.assign(tissue=table["tissue"].str.replace(r" \(.*\)", "", regex=True))
              .groupby(["tissue", "organism"], as_index=False)["spots"].sum()
              .sort_values("spots", ascending=False))
    # Brain appears in both organisms: one bar per (tissue, organism).
    tissue["tissue"] = tissue["tissue"] + " (" + tissue["organism"] + ")"
    sns.barplot(data=tissue, y="tissue", x="spots", hue="organism", ax=axes[1],
                palette=ORGANISM_COLOURS, dodge=False)
    axes[1].set(title="SpaRED (registry): spots per tissue", xlabel="spots", ylabel="")
    fig.tight_layout()
    return fig


def plot_missing_fraction(table: pd.DataFrame, ax=None):
    """Fraction of missing (zero) entries per dataset, raw and after SpaRED's processing.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _axes(ax, figsize=(7, 7))
    order = table.sort_values("raw_missing").index
    long = (table.loc[order, ["abbreviation", "raw_missing", "processed_missing"]]
            .rename(columns={"raw_missing": "raw counts", "processed_missing": "processed (selected genes)"})
            .melt(id_vars="abbreviation", var_name="data", value_name="missing"))
    sns.stripplot(data=long, y="abbreviation", x="missing", hue="data", ax=ax, palette="Set1",
                  size=7, jitter=False)
    ax.set(title="SpaRED (registry): fraction of missing entries per dataset",
           xlabel="fraction of zero entries", ylabel="", xlim=(0, 1))
    fig.tight_layout()
    return fig


def plot_split_sizes(adata, ax=None):
    """Spots per slide, coloured by the slide's split (train/val/test).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _axes(ax, figsize=(7, 3.5))
    counts = (adata.obs.groupby(["slide_id", "split"], observed=True).size()
              .rename("spots").reset_index())
    sns.barplot(data=counts, x="slide_id", y="spots", hue="split", dodge=False, ax=ax,
                palette={"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"})
    ax.set(title=f"{adata.uns['dataset']['key']}: spots per slide and split", xlabel="slide")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_gene_detection(adata, ax=None):
    """Distribution over genes of the fraction of spots where the gene is detected (count > 0).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _axes(ax, figsize=(7, 3.5))
    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    sns.histplot(detected, bins=40, ax=ax, color="#4c72b0")
    zero = 1 - adata.X.nnz / (adata.n_obs * adata.n_vars)
    ax.set(title=f"{adata.uns['dataset']['key']}: per-gene detection (overall zeros {zero:.0%})",
           xlabel="fraction of spots with count > 0", ylabel="genes")
    fig.tight_layout()
    return fig
