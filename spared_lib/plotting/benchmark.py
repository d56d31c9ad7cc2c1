"""The benchmark figures of the paper: Fig. 1b, Fig. 4a (violin + pie) and Fig. 4b.

Each function takes a tidy results table with one row per (dataset, model, target)
— :func:`spared_lib.benchmark.final_results` for our runs, or
:func:`spared_lib.benchmark.load_published_results` for the authors' numbers —
draws on ``ax`` (created when missing) and returns the figure. ``data`` names the
data in the title (a figure always says what it shows).

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from spared_lib.benchmark.published import MODEL_LABELS
from spared_lib.benchmark.summary import best_per_dataset, normalised_mse

#: Colours of the two training scenarios in Fig. 1b (the paper: red raw, blue completed).
TARGET_COLORS = {"raw": "#d62728", "completed": "#1f77b4", "published": "#555555"}


def _ax(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, dpi=100)
    return ax


def _title(main: str, data: str, note: str = "") -> str:
    """Title lines: what is plotted, then which data."""
    return "\n".join([main] + ([data] if data else []) + ([note] if note else []))


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _one_target(results: pd.DataFrame, target: str | None, where: str) -> tuple[pd.DataFrame, str]:
    """Rows of one training scenario (Fig. 4 compares models within one)."""
    if "target" not in results.columns:
        return results, ""
    present = list(dict.fromkeys(results["target"]))
    if target is None:
        target = "completed" if "completed" in present else present[0] if len(present) == 1 else None
        if target is None:
            raise ValueError(f"{where}: the table has targets {present}; pass target=...")
    if target not in present:
        raise ValueError(f"{where}: no rows with target={target!r} (targets present: {present})")
    return results[results["target"] == target], target


def plot_best_pcc(results: pd.DataFrame, ax=None, metric: str = "PCC-Gene", data: str = "",
                  abbreviations: dict | None = None):
    """Fig. 1b: per dataset, the best PCC over all models, for each training scenario.

    Datasets are sorted by the best value of the last scenario (``completed`` when
    present); a grey segment joins the scenarios of one dataset, so the gain of
    SpaCKLE completion reads as the length of the segment.

    Parameters
    ----------
    results
        One row per (dataset, model, target) with a ``metric`` column.
    metric
        ``'PCC-Gene'`` for our results, ``'PCC'`` for the published table.
    data
        What the figure shows, for the title (e.g. ``'synthetic + her2st'``).
    abbreviations
        Optional dataset → short label for the x axis.

    Defined in ``notebooks/06_benchmark.py``.
    """
    res = results if "target" in results.columns else results.assign(target="results")
    best = best_per_dataset(res, metric, higher_is_better=True)
    targets = [t for t in ("raw", "completed") if t in set(best["target"])] or list(dict.fromkeys(best["target"]))
    targets += [t for t in dict.fromkeys(best["target"]) if t not in targets]
    wide = best.pivot(index="dataset", columns="target", values=metric).reindex(columns=targets)
    wide = wide.sort_values(targets[-1], ascending=False)
    x = np.arange(len(wide))
    ax = _ax(ax, (max(4.0, 0.35 * len(wide) + 2), 3.6))
    if len(targets) > 1:
        ax.vlines(x, wide.min(axis=1), wide.max(axis=1), color="0.75", lw=1.5, zorder=1)
    for t in targets:
        ax.scatter(x, wide[t], color=TARGET_COLORS.get(t), label=t, zorder=2, s=28)
    labels = [abbreviations.get(d, d) if abbreviations else d for d in wide.index]
    ax.set_xticks(x, labels, rotation=90, fontsize=8)
    ax.legend(title="training data", fontsize=8, title_fontsize=8, frameon=False)
    ax.set(ylabel=f"best {metric} over models", xlim=(-0.6, len(wide) - 0.4),
           title=_title(f"Best {metric} per dataset", data))
    return ax.figure


def plot_normalised_mse(results: pd.DataFrame, ax=None, metric: str = "MSE", target: str | None = None,
                        data: str = ""):
    """Fig. 4a (violin): each model's MSE divided by the best MSE of the dataset.

    Models are ordered by mean normalised MSE (best first); ``mean ± sd`` is written
    above each violin, as in the paper.

    Defined in ``notebooks/06_benchmark.py``.
    """
    res, target = _one_target(results, target, "plot_normalised_mse")
    norm = normalised_mse(res, metric)
    col = f"{metric}_norm"
    stats = norm.groupby("model")[col].agg(["mean", "std"]).sort_values("mean")
    norm = norm.assign(label=norm["model"].map(_label))
    order = [_label(m) for m in stats.index]
    ax = _ax(ax, (max(4.0, 0.75 * len(order) + 1.5), 3.8))
    sns.violinplot(data=norm, x="label", y=col, order=order, ax=ax, cut=0, inner="point", density_norm="width",
                   color="#9ecae1", linewidth=0.8)
    top = norm[col].max()
    for i, (mean, sd) in enumerate(stats[["mean", "std"]].itertuples(index=False)):
        sd_txt = "" if np.isnan(sd) else f"\n± {sd:.2f}"
        ax.text(i, top * 1.02, f"{mean:.2f}{sd_txt}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(top=top * 1.02 + (top - 1) * 0.25 + 0.05)
    ax.tick_params(axis="x", rotation=45)
    ax.set(xlabel="", ylabel=f"{metric} / best {metric} of the dataset",
           title=_title(f"Normalised {metric} ({target or 'results'})", data))
    return ax.figure


def plot_best_model_pie(results: pd.DataFrame, ax=None, metric: str = "MSE", target: str | None = None,
                        data: str = ""):
    """Fig. 4a (pie): share of datasets on which each model has the lowest ``metric``.

    Defined in ``notebooks/06_benchmark.py``.
    """
    res, target = _one_target(results, target, "plot_best_model_pie")
    wins = best_per_dataset(res, metric)["model"].map(_label).value_counts()
    ax = _ax(ax, (3.6, 3.6))
    colors = sns.color_palette("tab10", len(wins))
    ax.pie(wins.values, labels=wins.index, colors=colors, autopct=lambda p: f"{p:.0f}%",
           startangle=90, counterclock=False, textprops={"fontsize": 8})
    ax.set(title=_title(f"Best {metric}: share of {int(wins.sum())} datasets", data))
    ax.axis("equal")
    return ax.figure


def plot_mse_vs_params(results: pd.DataFrame, ax=None, n_params: dict | None = None, metric: str = "MSE",
                       target: str | None = None, data: str = ""):
    """Fig. 4b: mean normalised MSE of each model against its trainable parameters.

    Parameters
    ----------
    n_params
        Model → trainable parameters. Default: the ``n_params`` column of ``results``
        (our runs report the size actually trained), else the original
        configurations' counts in :data:`spared_lib.models.MODELS`. Models without a
        count are left out (and listed in the title).

    Defined in ``notebooks/06_benchmark.py``.
    """
    res, target = _one_target(results, target, "plot_mse_vs_params")
    norm = normalised_mse(res, metric)
    mean = norm.groupby("model")[f"{metric}_norm"].mean()
    if n_params is None:
        if "n_params" in res.columns and res["n_params"].notna().any():
            n_params = res.groupby("model")["n_params"].median().to_dict()
        else:
            from spared_lib.models import MODELS

            n_params = {m: e.original_params for m, e in MODELS.items()}
    counts = pd.Series({m: n_params.get(m) for m in mean.index}, dtype=float)
    missing = [m for m in mean.index if not np.isfinite(counts[m])]
    keep = counts.dropna().index
    ax = _ax(ax, (4.6, 3.6))
    colors = dict(zip(mean.index, sns.color_palette("tab10", len(mean))))
    for m in keep:
        ax.scatter(counts[m], mean[m], color=colors[m], s=40, zorder=2)
        ax.annotate(_label(m), (counts[m], mean[m]), xytext=(4, 3), textcoords="offset points", fontsize=8)
    ax.set_xscale("log")
    note = f"(no parameter count: {', '.join(map(_label, missing))})" if missing else ""
    ax.set(xlabel="trainable parameters", ylabel=f"mean normalised {metric}",
           title=_title(f"{metric} vs model size ({target or 'results'})", data, note))
    return ax.figure
