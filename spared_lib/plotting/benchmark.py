"""The benchmark figures of the paper: Fig. 1b, Fig. 4a (violin + pie) and Fig. 4b.

Each function takes a tidy results table with one row per (dataset, model, target)
— :func:`spared_lib.benchmark.final_results` for our runs, or
:func:`spared_lib.benchmark.load_published_results` for the authors' numbers —
draws on ``ax`` (created when missing) and returns the figure. ``data_label`` names the
data in the title (a figure always says what it shows): a table does not know where it came
from, so these functions ask for it.

:func:`plot_metric_vs_params` is the one "metric against model size" scatter: Fig. 4b draws
the mean normalised MSE with it, ``notebooks/05_context_models.py`` the test MSE of its models.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _data_label, _label_points, _title

#: Colours of the two training scenarios in Fig. 1b (the paper: red raw, blue completed).
TARGET_COLORS = {"raw": "#d62728", "completed": "#1f77b4", "published": "#555555"}


def _label(model: str) -> str:
    """The paper's name of a model (the registry's ``display``), or the name as given."""
    from spared_lib.models import MODELS

    entry = MODELS.get(model)
    return entry.display if entry is not None else str(model)


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


def plot_best_pcc(results: pd.DataFrame, *, data_label: str | None = None, ax=None, metric: str = "PCC-Gene",
                  abbreviations: dict | None = None):
    """Fig. 1b: per dataset, the best PCC over all models, for each training scenario.

    Datasets are sorted by the best value of the last scenario (``completed`` when
    present); a grey segment joins the scenarios of one dataset, so the gain of
    SpaCKLE completion reads as the length of the segment.

    Parameters
    ----------
    results
        One row per (dataset, model, target) with a ``metric`` column.
    data_label
        What the figure shows, for the title (e.g. ``'her2st'``).
    metric
        ``'PCC-Gene'`` for our results, ``'PCC'`` for the published table.
    abbreviations
        Optional dataset → short label for the x axis.

    Defined in ``notebooks/06_benchmark.py``.
    """
    from spared_lib.benchmark.summary import best_per_dataset

    label = _data_label(data_label, where="plot_best_pcc")
    res = results if "target" in results.columns else results.assign(target="results")
    best = best_per_dataset(res, metric, higher_is_better=True)
    targets = [t for t in ("raw", "completed") if t in set(best["target"])] or list(dict.fromkeys(best["target"]))
    targets += [t for t in dict.fromkeys(best["target"]) if t not in targets]
    wide = best.pivot(index="dataset", columns="target", values=metric).reindex(columns=targets)
    wide = wide.sort_values(targets[-1], ascending=False)
    x = np.arange(len(wide))
    fig, ax = _ax(ax, (max(4.0, 0.35 * len(wide) + 2), 3.6))
    if len(targets) > 1:
        ax.vlines(x, wide.min(axis=1), wide.max(axis=1), color="0.75", lw=1.5, zorder=1)
    for t in targets:
        ax.scatter(x, wide[t], color=TARGET_COLORS.get(t), label=t, zorder=2, s=28)
    labels = [abbreviations.get(d, d) if abbreviations else d for d in wide.index]
    ax.set_xticks(x, labels, rotation=90, fontsize=8)
    ax.legend(title="training data", fontsize=8, title_fontsize=8, frameon=False)
    ax.set(ylabel=f"best {metric} over models", xlim=(-0.6, len(wide) - 0.4),
           title=_title(f"Best {metric} per dataset", label))
    return fig


def plot_normalised_mse(results: pd.DataFrame, *, data_label: str | None = None, ax=None, metric: str = "MSE",
                        target: str | None = None):
    """Fig. 4a (violin): each model's MSE divided by the best MSE of the dataset.

    Models are ordered by mean normalised MSE (best first); ``mean ± sd`` is written
    above each violin, as in the paper.

    Defined in ``notebooks/06_benchmark.py``.
    """
    import seaborn as sns

    from spared_lib.benchmark.summary import normalised_mse

    label = _data_label(data_label, where="plot_normalised_mse")
    res, target = _one_target(results, target, "plot_normalised_mse")
    norm = normalised_mse(res, metric)
    col = f"{metric}_norm"
    stats = norm.groupby("model")[col].agg(["mean", "std"]).sort_values("mean")
    norm = norm.assign(label=norm["model"].map(_label))
    order = [_label(m) for m in stats.index]
    fig, ax = _ax(ax, (max(4.0, 0.75 * len(order) + 1.5), 3.8))
    sns.violinplot(data=norm, x="label", y=col, order=order, ax=ax, cut=0, inner="point", density_norm="width",
                   color="#9ecae1", linewidth=0.8)
    top = norm[col].max()
    for i, (mean, sd) in enumerate(stats[["mean", "std"]].itertuples(index=False)):
        sd_txt = "" if np.isnan(sd) else f"\n± {sd:.2f}"
        ax.text(i, top * 1.02, f"{mean:.2f}{sd_txt}", ha="center", va="bottom", fontsize=7)
    ax.set_ylim(top=top * 1.02 + (top - 1) * 0.25 + 0.05)
    ax.tick_params(axis="x", rotation=45)
    ax.set(xlabel="", ylabel=f"{metric} / best {metric} of the dataset",
           title=_title(f"Normalised {metric} ({target or 'results'})", label))
    return fig


def plot_best_model_pie(results: pd.DataFrame, *, data_label: str | None = None, ax=None, metric: str = "MSE",
                        target: str | None = None):
    """Fig. 4a (pie): share of datasets on which each model has the lowest ``metric``.

    Defined in ``notebooks/06_benchmark.py``.
    """
    import seaborn as sns

    from spared_lib.benchmark.summary import best_per_dataset

    label = _data_label(data_label, where="plot_best_model_pie")
    res, target = _one_target(results, target, "plot_best_model_pie")
    wins = best_per_dataset(res, metric)["model"].map(_label).value_counts()
    fig, ax = _ax(ax, (3.6, 3.6))
    colors = sns.color_palette("tab10", len(wins))
    ax.pie(wins.values, labels=wins.index, colors=colors, autopct=lambda p: f"{p:.0f}%",
           startangle=90, counterclock=False, textprops={"fontsize": 8})
    # padding: the labels of wedges at the top sit just under the title otherwise
    ax.set_title(_title(f"Best {metric}: share of {int(wins.sum())} datasets", label), pad=16)
    ax.axis("equal")
    return fig


def plot_metric_vs_params(table: pd.DataFrame, *, data_label: str | None = None, ax=None, metric: str = "MSE",
                          params: str = "n_params", ylabel: str | None = None, title: str | None = None,
                          note: str = ""):
    """One point per model: ``metric`` against its number of parameters (log scale), each point
    labelled with the model's name and Spearman's ρ of the two in the title.

    Parameters
    ----------
    table
        One row per model, indexed by model name (registry names get the paper's labels),
        with columns ``metric`` and ``params``.
    data_label
        The data the metrics come from (a dataset key, "synthetic"); goes in the title.
    ylabel, title
        Axis label and first title line (default: ``metric`` and "<metric> vs model size").
    note
        A last title line (e.g. which models have no count).

    Introduced in ``notebooks/05_context_models.py``; Fig. 4b (:func:`plot_mse_vs_params`) draws
    with it in ``notebooks/06_benchmark.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="plot_metric_vs_params")
    missing = [c for c in (metric, params) if c not in table.columns]
    if missing:
        raise ValueError(f"plot_metric_vs_params: table lacks column(s) {missing} (has {list(table.columns)})")
    table = table.dropna(subset=[metric, params])
    fig, ax = _ax(ax, (4.8, 3.6))
    colors = sns.color_palette("tab10", len(table))
    ax.scatter(table[params], table[metric], c=colors, s=45, zorder=2)
    ax.set_xscale("log")
    # Room on both sides for the labels of the first and last models.
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo / 2, hi * 3)
    rho = table[[params, metric]].corr(method="spearman").iloc[0, 1] if len(table) > 2 else np.nan
    rho_txt = f"Spearman ρ = {rho:.2f}" if np.isfinite(rho) else ""
    ax.set(xlabel="trainable parameters" if params == "n_params" else f"parameters ({params})",
           ylabel=ylabel or metric,
           title=_title(title or f"{metric} vs model size", label, "; ".join(t for t in (rho_txt, note) if t)))
    # Models of similar size and error sit close together: labels go where they overlap no other.
    _label_points(ax, table[params].to_numpy(), table[metric].to_numpy(), [_label(m) for m in table.index], colors)
    return fig


def plot_mse_vs_params(results: pd.DataFrame, *, data_label: str | None = None, ax=None,
                       n_params: dict | None = None, metric: str = "MSE", target: str | None = None):
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
    from spared_lib.benchmark.summary import normalised_mse

    label = _data_label(data_label, where="plot_mse_vs_params")
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
    table = pd.DataFrame({"mean_norm": mean, "n_params": counts})
    note = f"(no parameter count: {', '.join(map(_label, missing))})" if missing else ""
    return plot_metric_vs_params(table, data_label=label, ax=ax, metric="mean_norm", params="n_params",
                                 ylabel=f"mean normalised {metric}",
                                 title=f"{metric} vs model size ({target or 'results'})", note=note)


def plot_raw_vs_completed(results: pd.DataFrame, baseline: pd.DataFrame | None = None, *,
                          data_label: str | None = None, ax=None, metric: str = "MSE"):
    """Each model's ``metric`` trained on raw and on SpaCKLE-completed data, beside the train mean.

    One row of points per model (red raw, blue completed, joined by a grey segment, as in
    Fig. 1b), and a dashed vertical line per target at the train-mean predictor's value
    (:func:`spared_lib.benchmark.train_mean_results`), the floor a model must beat.

    Parameters
    ----------
    results
        One row per (model, target) of one dataset (``final_results``).
    baseline
        The train-mean rows (same columns); optional.
    data_label
        The data the runs trained on, for the title.
    metric
        A column of both tables (``MSE``, ``PCC-Gene``, ...).

    Defined in ``notebooks/06_benchmark.py``.
    """
    label = _data_label(data_label, where="plot_raw_vs_completed")
    missing = [c for c in ("model", "target", metric) if c not in results.columns]
    if missing:
        raise ValueError(f"plot_raw_vs_completed: the results lack column(s) {missing}")
    wide = results.pivot_table(index="model", columns="target", values=metric)
    targets = [t for t in ("raw", "completed") if t in wide.columns]
    if not targets:
        raise ValueError("plot_raw_vs_completed: no rows with target 'raw' or 'completed'")
    wide = wide[targets].sort_values(targets[0])
    y = np.arange(len(wide))
    fig, ax = _ax(ax, (5.6, 0.45 * len(wide) + 1.9))
    if len(targets) == 2:
        ax.hlines(y, wide.min(axis=1), wide.max(axis=1), color="0.75", lw=1.5, zorder=1)
    for t in targets:
        ax.scatter(wide[t], y, color=TARGET_COLORS[t], s=32, zorder=2, label=f"trained on {t}")
    if baseline is not None and len(baseline):
        base = baseline.groupby("target")[metric].mean()
        for t in targets:
            if t in base.index:
                ax.axvline(base[t], color=TARGET_COLORS[t], ls="--", lw=1, label=f"train mean ({t})")
    ax.set_yticks(y, [_label(m) for m in wide.index])
    ax.set_ylim(-0.7, len(wide) - 0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set(xlabel=metric + (" (lower is better)" if metric in ("MSE", "MAE") else " (higher is better)"),
           title=_title(f"{metric}: raw vs SpaCKLE-completed training", label))
    return fig
