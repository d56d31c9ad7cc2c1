"""The authors' published benchmark numbers, as a cited reference table.

``spared_lib/resources/published_results.csv`` holds the per-dataset test (or
validation) MSE and PCC of the ten models as published on the authors' project
page (BCV-Uniandes/SpaRED) for Mejia et al., "Enhancing Gene Expression Prediction
from Histology Images with Spatial Transcriptomics Completion", MICCAI 2024
(arXiv:2407.13027). The page does not say which of its two training scenarios
(raw or SpaCKLE-completed) the table reports, so its rows carry
``target='published'``. Its PCC is compared with our ``PCC-Gene`` (the per-gene
Pearson correlation the authors' code reports as ``PCC``).

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

from importlib import resources

import pandas as pd

CITATION = ("Mejia G. et al., Enhancing Gene Expression Prediction from Histology Images with Spatial "
            "Transcriptomics Completion, MICCAI 2024 (arXiv:2407.13027); numbers from the authors' "
            "project page, github.com/BCV-Uniandes/SpaRED")


def load_published_results(wide: bool = True, dropna: bool = True) -> pd.DataFrame:
    """The published per-dataset MSE and PCC of the ten models.

    Parameters
    ----------
    wide
        ``True``: one row per (dataset, model) with columns ``dataset``, ``abbreviation``,
        ``model``, ``target`` (``'published'``), ``MSE``, ``PCC`` — the shape of our
        own results, ready for the figures. ``False``: the long table as stored
        (``dataset, abbreviation, model, metric, value``).
    dropna
        Drop the (dataset, model) pairs the authors did not run ("-" on the page).

    Defined in ``notebooks/06_benchmark.py``.
    """
    with resources.files("spared_lib.resources").joinpath("published_results.csv").open("r") as fh:
        long = pd.read_csv(fh, comment="#")
    if dropna:
        long = long.dropna(subset=["value"])
    if not wide:
        return long.reset_index(drop=True)
    out = long.pivot_table(index=["dataset", "abbreviation", "model"], columns="metric", values="value",
                           dropna=False).reset_index()
    out.columns.name = None
    if dropna:
        out = out.dropna(subset=["MSE", "PCC"], how="all")
    out.insert(3, "target", "published")
    return out.reset_index(drop=True)


def compare_with_published(results: pd.DataFrame) -> pd.DataFrame:
    """Our final results next to the published ones, for the datasets both ran.

    Parameters
    ----------
    results
        :func:`spared_lib.benchmark.final_results` output (one row per dataset, model, target).

    Returns
    -------
    pandas.DataFrame
        ``dataset, model, target, MSE, MSE_published, PCC-Gene, PCC_published``; empty
        (with these columns) when no dataset of ``results`` is a SpaRED dataset.

    Defined in ``notebooks/06_benchmark.py``.
    """
    pub = load_published_results().rename(columns={"MSE": "MSE_published", "PCC": "PCC_published"})
    ours = results[["dataset", "model", "target", "MSE", "PCC-Gene"]]
    merged = ours.merge(pub[["dataset", "model", "MSE_published", "PCC_published"]], on=["dataset", "model"])
    return merged[["dataset", "model", "target", "MSE", "MSE_published", "PCC-Gene", "PCC_published"]]
