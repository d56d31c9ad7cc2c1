"""What the benchmark runs: targets, the learning-rate grid and the cells of the table.

A *cell* is one training run: one dataset, one model, one target layer, one
learning rate, one seed, one number of steps, at one stage (``search``: a point of
the learning-rate search, judged on validation MSE; ``final``: the run whose test
(or validation) metrics are reported). Each cell becomes one row of the results
table, and a cell that already has a finished row is never run again.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

#: Benchmark target names and the AnnData layer each trains on (SPEC §4): raw =
#: median-completed and ComBat-corrected data, completed = SpaCKLE-completed data.
TARGETS: dict[str, str] = {"raw": "c_d_log1p", "completed": "c_t_log1p"}

#: The two stages of a (dataset, model, target) block.
STAGES = ("search", "final")


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


def search_cells(dataset: str, models: Sequence[str], targets: Sequence[str], lrs: Sequence[float],
                 seed: int, steps: int, search_target: str | None = None) -> list[Cell]:
    """The learning-rate search cells of one dataset.

    With ``search_target=None`` each (model, target) block gets its own search; with
    ``search_target='raw'`` (the paper: "we search for the optimal learning rate in
    every dataset, and then, with this value fixed, we explore two training
    scenarios") the search runs on that target only and its learning rate is reused.
    """
    searched = targets if search_target is None else [search_target]
    return [Cell(dataset, m, t, "search", lr, seed, steps) for m in models for t in searched for lr in lrs]


def key_columns() -> list[str]:
    """Columns of the results table that identify a cell."""
    return ["dataset", "model", "target", "stage", "lr", "seed", "steps"]
