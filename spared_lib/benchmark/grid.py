"""What the benchmark runs: targets, the learning-rate grid and the cells of the table.

A *cell* is one training run: one dataset, one model, one target layer, one
learning rate, one seed, one number of steps, at one stage (``search``: a point of
the learning-rate search, judged on validation MSE; ``final``: the run whose test
(or validation) metrics are reported; ``stage1``: a ViT-B+Δ trained only because
SEPAL needs it as its first stage and no other run of the grid provides it). Each
cell becomes one row of the results table, and a cell that already has a finished
row is never run again.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

#: Benchmark target names and the AnnData layer each trains on (SPEC §4): raw =
#: median-completed and ComBat-corrected data, completed = SpaCKLE-completed data.
TARGETS: dict[str, str] = {"raw": "c_d_log1p", "completed": "c_t_log1p"}

#: The stages of a (dataset, model, target) block (see the module docstring).
STAGES = ("search", "final", "stage1")

#: Columns of the results table that identify a cell (:attr:`Cell.key`, in this order).
KEY_COLUMNS = ("dataset", "model", "target", "stage", "lr", "seed", "steps")

#: Models that refine another model's trained run, and which model that is. SEPAL's first
#: stage is a trained ViT-B+Δ (Mejia et al., ICCV-W 2023; SPEC §3): the benchmark reuses the
#: ViT-B+Δ run of the same dataset, target, learning rate, seed and steps.
STAGE1_OF = {"sepal": "vit_b_delta"}


def lr_grid(low: float = 1e-5, high: float = 1e-3, n: int = 5) -> list[float]:
    """Learning rates evenly spaced on a log scale, both ends included.

    The original authors searched a learning rate per dataset but did not publish
    the grid or the chosen values (SPEC §6), so the default spans the two decades
    around Adam's usual 1e-4.

    Parameters
    ----------
    low, high
        Smallest and largest learning rate (``0 < low <= high``).
    n
        Number of grid points (``n >= 1``; ``n == 1`` requires ``low == high``).

    Returns
    -------
    list of float
        Rounded to 3 significant digits, so that the same grid typed twice (or read
        back from a CSV) gives identical keys.

    Defined in ``notebooks/06_benchmark.py``.
    """
    if not (low > 0 and high > 0):
        raise ValueError(f"lr_grid: learning rates must be positive, got low={low}, high={high}")
    if low > high:
        raise ValueError(f"lr_grid: low={low} is larger than high={high}")
    if n < 1:
        raise ValueError(f"lr_grid: n must be at least 1, got {n}")
    if n == 1:
        if not np.isclose(low, high):
            raise ValueError(f"lr_grid: n=1 needs low == high, got {low} and {high}")
        return [round_lr(low)]
    return [round_lr(v) for v in np.logspace(np.log10(low), np.log10(high), n)]


def round_lr(lr: float) -> float:
    """``lr`` rounded to 3 significant digits (the form every cell key uses)."""
    return float(f"{float(lr):.3g}")


def parse_targets(targets: str | Iterable[str]) -> list[str]:
    """Validate benchmark target names (``raw``, ``completed``); accepts ``"raw,completed"``."""
    names = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    names = [t for t in names if t]
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ValueError(f"--targets: unknown target(s) {bad or names}; choose from {sorted(TARGETS)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Cell:
    """One training run of the benchmark (one row of the results table)."""

    dataset: str
    model: str
    target: str
    stage: str
    lr: float
    seed: int
    steps: int

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"Cell: unknown target {self.target!r}; choose from {sorted(TARGETS)}")
        if self.stage not in STAGES:
            raise ValueError(f"Cell: unknown stage {self.stage!r}; choose from {STAGES}")
        # normalise once so that keys read back from disk compare equal
        object.__setattr__(self, "lr", round_lr(self.lr))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "steps", int(self.steps))

    @property
    def target_layer(self) -> str:
        return TARGETS[self.target]

    @property
    def key(self) -> tuple:
        return (self.dataset, self.model, self.target, self.stage, self.lr, self.seed, self.steps)

    @property
    def block(self) -> tuple:
        """The (dataset, model, target) block the cell belongs to."""
        return (self.dataset, self.model, self.target)

    def tag(self) -> str:
        """A file-system friendly name, used for checkpoint folders and trial names."""
        return f"{self.dataset}/{self.model}/{self.target}/{self.stage}_lr{self.lr:g}_seed{self.seed}_steps{self.steps}"

    def as_dict(self) -> dict:
        return asdict(self)

    def stage1(self) -> "Cell | None":
        """The run this cell's model refines (``None`` for models without a first stage): the
        :data:`STAGE1_OF` model on the same dataset, target, learning rate, seed and steps, at stage
        ``stage1`` (a run of another stage with the same settings serves as well, see the runner)."""
        base = STAGE1_OF.get(self.model)
        if base is None:
            return None
        return Cell(self.dataset, base, self.target, "stage1", self.lr, self.seed, self.steps)


def search_cells(dataset: str, models: Sequence[str], targets: Sequence[str], lrs: Sequence[float],
                 seed: int, steps: int, search_target: str | None = "raw") -> list[Cell]:
    """The learning-rate search cells of one dataset.

    With ``search_target='raw'`` (the default and the paper's protocol: "we search for the
    optimal learning rate in every dataset, and then, with this value fixed, we explore two
    training scenarios") the search runs on that target only and its learning rate is reused
    for the other; with ``search_target=None`` each (model, target) block gets its own search.
    """
    searched = targets if search_target is None else [search_target]
    return [Cell(dataset, m, t, "search", lr, seed, steps) for m in models for t in searched for lr in lrs]


def count_runs(models: Sequence[str], targets: Sequence[str] = ("raw", "completed"), n_lrs: int = 5,
               n_seeds: int = 1, n_datasets: int = 1, search_target: str | None = "raw",
               same_steps: bool = True) -> "pd.DataFrame":
    """How many training runs a benchmark grid costs, per model (before any run is made).

    The count follows :func:`spared_lib.benchmark.run_benchmark`'s rules: the search trains
    ``n_lrs`` runs per searched target; a final run whose settings equal a search run (first
    seed, same steps) reuses it instead of training; SEPAL adds the ViT-B+Δ first stages that
    the grid's own ViT-B+Δ runs do not provide (an upper bound: a ViT-B+Δ final run is shared
    only when both models pick the same learning rate, which is known only after the search).

    Parameters
    ----------
    models, targets
        As for ``run_benchmark``.
    n_lrs, n_seeds, n_datasets
        Points of the learning-rate grid, seeds of the final runs, datasets.
    search_target
        ``'raw'`` (the paper's protocol), ``'completed'``, or ``None`` (a search per target).
    same_steps
        Search and final runs train the same number of steps (then finals can reuse searches).

    Returns
    -------
    pandas.DataFrame
        One row per model: ``search``, ``final`` (trained, not reused), ``stage1`` and ``runs``
        (their sum), all for ``n_datasets`` datasets; a last row ``total``.

    Defined in ``notebooks/06_benchmark.py``.
    """
    import pandas as pd

    targets = parse_targets(targets)
    searched = list(targets) if search_target is None else [search_target]
    models = list(dict.fromkeys(models))
    rows = {}
    for m in models:
        search = n_lrs * len(searched)
        # per target: one final per seed; the first seed's is reused where that target was searched
        final = sum(n_seeds - (1 if (same_steps and t in searched) else 0) for t in targets)
        stage1 = 0
        if STAGE1_OF.get(m) is not None:
            # each search run needs the base model's run at its lr: the grid's own search of the
            # base model provides them; each trained final needs one at the chosen lr, shared with
            # the base model's final only if both chose the same lr (so: counted)
            stage1 = (0 if STAGE1_OF[m] in models else search) + final
        rows[m] = {"search": search, "final": final, "stage1": stage1}
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["search", "final", "stage1"]) * int(n_datasets)
    out["runs"] = out.sum(axis=1)
    out.loc["total"] = out.sum()
    return out

