"""Figures of the SpaRED database chapter: the 26 datasets, missing data, splits.

Introduced in ``notebooks/01_spared_database.py``. Every function takes optional axes (``ax=``),
returns the figure, and puts the data's name in the title (``data_label=``; by default the registry
and its number of datasets, or the AnnData's dataset key).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _data_label, _title

ORGANISM_COLOURS = {"human": "#e78a61", "mouse": "#66b5a0"}


def _registry_label(table, data_label):
    return data_label or f"SpaRED registry ({len(table)} datasets)"


def plot_database_overview(table: pd.DataFrame, *, ax=None, data_label: str | None = None):
    """The paper's Fig. 1a as two panels: datasets per organism, and spots per tissue.

    ``table`` is :func:`spared_lib.data.datasets_table`; ``ax`` two axes.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, axes = _ax(ax, (12, 4.5), shape=(1, 2))
    axes = axes[0]
    label = _registry_label(table, data_label)
    per_org = table.groupby("organism").agg(datasets=("spots", "size"), spots=("spots", "sum"))
    sns.barplot(x=per_org.index, y=per_org["datasets"], hue=per_org.index, ax=axes[0],
                palette=ORGANISM_COLOURS, legend=False)
    for i, (n, s) in enumerate(zip(per_org["datasets"], per_org["spots"])):
        axes[0].text(i, n, f"{n} datasets\n{s:,} spots", ha="center", va="bottom", fontsize=9)
    axes[0].set(title=_title("Datasets per organism", label), xlabel="", ylabel="datasets",
                ylim=(0, per_org["datasets"].max() * 1.3))
    tissue = (table.assign(tissue=table["tissue"].str.replace(r" \(.*\)", "", regex=True))
              .groupby(["tissue", "organism"], as_index=False)["spots"].sum()
              .sort_values("spots", ascending=False))
    # Brain appears in both organisms: one bar per (tissue, organism).
    tissue["tissue"] = tissue["tissue"] + " (" + tissue["organism"] + ")"
    sns.barplot(data=tissue, y="tissue", x="spots", hue="organism", ax=axes[1],
                palette=ORGANISM_COLOURS, dodge=False)
    axes[1].set(title=_title("Spots per tissue", label), xlabel="spots", ylabel="")
    return fig


def plot_missing_fraction(table: pd.DataFrame, *, ax=None, data_label: str | None = None):
    """Fraction of missing (zero) entries per dataset, raw and after SpaRED's processing.

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _ax(ax, (7, 7))
    order = table.sort_values("raw_missing").index
    long = (table.loc[order, ["abbreviation", "raw_missing", "processed_missing"]]
            .rename(columns={"raw_missing": "raw counts", "processed_missing": "processed (selected genes)"})
            .melt(id_vars="abbreviation", var_name="data", value_name="missing"))
    sns.stripplot(data=long, y="abbreviation", x="missing", hue="data", ax=ax, palette="Set1",
                  size=7, jitter=False)
    ax.set(title=_title("Fraction of missing entries per dataset", _registry_label(table, data_label)),
           xlabel="fraction of zero entries", ylabel="", xlim=(0, 1))
    return fig


def plot_split_sizes(adata, *, ax=None, data_label: str | None = None):
    """Spots per slide, coloured by the slide's split (train/val/test).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _ax(ax, (7, 3.5))
    counts = (adata.obs.groupby(["slide_id", "split"], observed=True).size()
              .rename("spots").reset_index())
    sns.barplot(data=counts, x="slide_id", y="spots", hue="split", dodge=False, ax=ax,
                palette={"train": "#4c72b0", "val": "#dd8452", "test": "#55a868"})
    ax.set(title=_title("Spots per slide and split", _data_label(data_label, adata, "plot_split_sizes")),
           xlabel="slide")
    ax.tick_params(axis="x", rotation=30)
    return fig


def plot_gene_detection(adata, *, ax=None, data_label: str | None = None):
    """Distribution over genes of the fraction of spots where the gene is detected (count > 0).

    Defined in ``notebooks/01_spared_database.py``.
    """
    import seaborn as sns

    fig, ax = _ax(ax, (7, 3.5))
    detected = np.asarray((adata.X > 0).mean(axis=0)).ravel()
    sns.histplot(detected, bins=40, ax=ax, color="#4c72b0")
    zero = 1 - adata.X.nnz / (adata.n_obs * adata.n_vars)
    ax.set(title=_title(f"Per-gene detection (overall zeros {zero:.0%})",
                        _data_label(data_label, adata, "plot_gene_detection")),
           xlabel="fraction of spots with count > 0", ylabel="genes")
    return fig
