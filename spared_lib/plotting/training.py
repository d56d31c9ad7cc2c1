"""Training curves of any model trained through :func:`spared_lib.engine.make_trainer`: SpaCKLE
(``notebooks/03_spackle.py``) and the prediction models (``notebooks/04_patch_models.py`` on).

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import _ax, _data_label, _title


def plot_training_curves(histories: dict, *, data_label: str | None = None, ax=None, smooth="auto",
                         val_column: str = "val_mse", title: str = "Training curves"):
    """Training loss (faint line) and validation MSE (dots) against steps, one colour per run.

    Parameters
    ----------
    histories
        ``{run name: history}``, each a DataFrame with ``step``, ``train_loss`` and ``val_column``
        (``FitResult.history``, the history ``completion.train_spackle`` returns); NaN where a
        step has no value.
    data_label
        The data the runs trained on (dataset key or "synthetic"); goes in the title.
    smooth
        Steps in the running mean of the training loss: ``"auto"`` is 1/50 of the run, 1 draws
        every step as logged.
    title
        First title line (e.g. "SpaCKLE training").

    Introduced in ``notebooks/03_spackle.py``.
    """
    import seaborn as sns

    label = _data_label(data_label, where="plot_training_curves")
    missing = {name: sorted({"step", "train_loss", val_column} - set(h.columns)) for name, h in histories.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise ValueError(f"plot_training_curves: histories lack columns {missing}")
    fig, ax = _ax(ax, (6, 3.8))
    colors = sns.color_palette("tab10", len(histories))
    for (name, h), col in zip(histories.items(), colors):  # one line per run (a handful)
        tl = h.dropna(subset=["train_loss"])
        window = max(1, len(tl) // 50) if smooth == "auto" else int(smooth)
        ax.plot(tl["step"], tl["train_loss"].rolling(window, min_periods=1).mean(), color=col, alpha=0.4, lw=1)
        vm = h.dropna(subset=[val_column])
        ax.plot(vm["step"], vm[val_column], "o-", color=col, lw=1.5, ms=4, label=str(name))
    positive = pd.concat([h[["train_loss", val_column]] for h in histories.values()]).to_numpy(float)
    if np.nanmin(positive, initial=np.inf) > 0:
        ax.set_yscale("log")
    ax.legend(frameon=False, fontsize="small")
    ax.set(xlabel="step", ylabel="MSE (train loss: faint; validation: dots)", title=_title(title, label))
    return fig
