"""The benchmark runner: learning-rate search, final fits, one results table, resume.

For every dataset and model the runner

1. trains the model once per learning rate of a log grid on the ``raw`` target (stage
   ``search``; the paper searches once per dataset on raw data and reuses that rate for both
   training scenarios, which is also what makes raw vs completed a fair comparison) and keeps the
   learning rate with the lowest validation MSE (``FitResult.best_val_mse``);
2. trains it at that learning rate on every target (``raw`` = ``c_d_log1p``, ``completed`` =
   SpaCKLE's ``c_t_log1p``) for every seed (stage ``final``) and records the metrics on the test
   split (validation where the dataset has no test split).

A final run whose settings equal a search run (same target, learning rate, seed and steps) is not
trained twice: its row copies the search run's metrics and says so in ``reused_from``. SEPAL
refines a *trained* ViT-B+Δ: each SEPAL run gets, as its first stage, the ViT-B+Δ run of the same
dataset, target, learning rate, seed and steps — one the grid already trained, or one trained for
it first (stage ``stage1``) — and its row names that run and checkpoint. Every finished run is
written to the table at once; a cell with a finished row is never run again, so re-running the
same command after an interruption resumes where it stopped.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from spared_lib.metrics import METRICS

from .cells import Job, now, relative_to, run_cell
from .grid import KEY_COLUMNS, STAGE1_OF, TARGETS, Cell, lr_grid, parse_targets, round_lr, search_cells
from .store import ResultsStore

#: Settings that change what a cell means: resuming a results folder with other
#: values would mix incomparable rows, so the runner refuses.
_CONFIG_KEYS = ("size", "batch_size", "pretrained", "search_target")

#: Keywords of ``fit`` that the runner sets per cell; ``fit_options`` may not set them.
_CELL_KEYWORDS = {"model_name", "adata", "target_layer", "steps", "lr", "patches", "seed", "out_dir"}


def select_lr(table: pd.DataFrame, dataset: str, model: str, target: str, seed: int | None = None,
              lrs: Sequence[float] | None = None, steps: int | None = None) -> float | None:
    """Learning rate with the lowest validation MSE among the finished search runs
    of one block (ties: the smaller learning rate); ``None`` when none finished.

    ``seed``, ``lrs`` and ``steps`` restrict the candidates to the current grid, so
    search rows left in the table by an earlier, different grid do not take part.

    Defined in ``notebooks/06_benchmark.py``.
    """
    rows = table[(table["stage"] == "search") & (table["status"] == "ok") & (table["dataset"] == dataset)
                 & (table["model"] == model) & (table["target"] == target)]
    if seed is not None:
        rows = rows[rows["seed"] == seed]
    if lrs is not None:
        rows = rows[rows["lr"].isin([round_lr(v) for v in lrs])]
    if steps is not None:
        rows = rows[rows["steps"] == steps]
    rows = rows[np.isfinite(rows["best_val_mse"].astype(float))]
    if rows.empty:
        return None
    rows = rows.sort_values(["best_val_mse", "lr"], kind="stable")
    return float(rows["lr"].iloc[0])


class SequentialExecutor:
    """Runs jobs one after another in this process (the default)."""

    name = "sequential"

    def run(self, jobs: Sequence[Job], adata, patches, fit_fn, fit_kwargs, out_dir, on_row, progress=True,
            should_stop: Callable[[Job], bool] = lambda job: False):
        from tqdm.auto import tqdm

        for job in tqdm(jobs, desc="benchmark", disable=not progress, leave=False):
            if should_stop(job):
                return
            on_row(run_cell(job, adata, patches, fit_fn, fit_kwargs, out_dir))


# --------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class Grid:
    """The validated settings of one benchmark call (what :func:`run_benchmark` will train)."""

    names: tuple
    models: tuple
    targets: tuple
    lrs: tuple
    seeds: tuple
    steps: int
    search_steps: int
    search_target: str | None

    @property
    def searched(self) -> tuple:
        """The targets whose learning rate is searched."""
        return self.targets if self.search_target is None else (self.search_target,)

    @property
    def prepared_targets(self) -> list[str]:
        """Targets the dataset must provide (the searched one even when not trained finally)."""
        return sorted(set(self.targets) | set(self.searched))


def make_grid(datasets, models, targets, lrs, steps, search_steps, seeds, search_target) -> Grid:
    """Validate and normalise :func:`run_benchmark`'s grid arguments (errors name the argument)."""
    targets = parse_targets(targets)
    if search_target is not None:
        parse_targets([search_target])
    models = list(dict.fromkeys(models))
    if not models:
        raise ValueError("run_benchmark: no models given (--models)")
    from spared_lib.models import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"run_benchmark: unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    lrs = sorted({round_lr(v) for v in (lrs if lrs is not None else lr_grid())})
    if not lrs or any(v <= 0 for v in lrs):
        raise ValueError(f"run_benchmark: learning rates must be positive, got {lrs}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_benchmark: seeds must not be empty")
    if steps < 1 or (search_steps is not None and search_steps < 1):
        raise ValueError(f"run_benchmark: steps must be >= 1, got steps={steps}, search_steps={search_steps}")
    names = list(datasets) if isinstance(datasets, Mapping) else list(dict.fromkeys(datasets))
    if not names:
        raise ValueError("run_benchmark: no datasets given (--datasets)")
    return Grid(tuple(names), tuple(models), tuple(targets), tuple(lrs), tuple(seeds), int(steps),
                int(steps if search_steps is None else search_steps), search_target)


# --------------------------------------------------------------------------- one session
class _Session:
    """The results folder, the executor and the data of one ``run_benchmark`` call.

    ``run(cells)`` trains the pending ones; cells whose model refines another model's run (SEPAL)
    go last, after their first stages exist (found in the table, or trained first)."""

    def __init__(self, out: Path, store: ResultsStore, executor, fit_fn, fit_kwargs: dict,
                 keep_checkpoints: bool, progress: bool, deadline: float | None):
        self.out, self.store, self.executor = out, store, executor
        self.fit_fn, self.fit_kwargs = fit_fn, fit_kwargs
        self.keep_checkpoints, self.progress, self.deadline = keep_checkpoints, progress, deadline
        self.data_loader: Callable[[], tuple] | None = None
        self._data: tuple | None = None
        self.stopped = False

    # -- data, prepared lazily: a finished dataset costs nothing on resume
    def use_dataset(self, loader: Callable[[], tuple]) -> None:
        self.data_loader, self._data = loader, None

    def data(self) -> tuple:
        if self._data is None:
            self._data = tuple(self.data_loader())
        return self._data

    # -- running
    def job(self, cell: Cell, **kw) -> Job:
        keep = self.keep_checkpoints or cell.model in STAGE1_OF.values()
        return Job(cell, keep_checkpoint=keep, **kw)

    def execute(self, jobs: Sequence[Job]) -> None:
        if not jobs or self.stopped:
            return
        adata, patches = self.data()
        self.executor.run(jobs, adata, patches, self.fit_fn, self.fit_kwargs, self.out, self.store.append,
                          progress=self.progress, should_stop=self._over_budget)

    def _over_budget(self, job: Job) -> bool:
        """True once the next job would end after the deadline (its expected time: the median wall
        time of the model's finished runs in the table; unknown = only the deadline itself counts)."""
        if self.deadline is None:
            return False
        t = self.store.table()
        done = t[(t["model"] == job.cell.model) & (t["status"] == "ok") & t["reused_from"].isna()]
        expected = float(done["wall_time_s"].median()) if len(done) else 0.0
        if time.time() + expected > self.deadline:
            self.stopped = True
        return self.stopped

    def run(self, cells: Iterable[Cell]) -> None:
        done = self.store.done_keys()
        pending = [c for c in cells if c.key not in done]
        self.execute([self.job(c) for c in pending if c.stage1() is None])
        refining = [c for c in pending if c.stage1() is not None]
        if not refining:
            return
        missing = list(dict.fromkeys(c.stage1() for c in refining if self.find_stage1(c) is None))
        # a stage-1 cell with a row but no checkpoint on disk (deleted by hand) is trained again
        self.execute([self.job(c) for c in missing])
        jobs = []
        for c in refining:
            found = self.find_stage1(c)
            if found is None:
                if not self.stopped:
                    self.store.append(_stage1_failed_row(c, self.store.table()))
                continue
            run, path = found
            jobs.append(self.job(c, overrides=stage1_overrides(path),
                                 stage1={"run": run, "checkpoint": relative_to(path, self.out)}))
        self.execute(jobs)

    def find_stage1(self, cell: Cell) -> tuple[str, str] | None:
        """``(tag, checkpoint path)`` of a finished run that can serve as ``cell``'s first stage: the
        :data:`~spared_lib.benchmark.grid.STAGE1_OF` model with the same dataset, target, learning
        rate, seed and steps, at any stage, whose checkpoint is still on disk."""
        rows = _stage1_rows(self.store.table(), cell)
        rows = rows[(rows["status"] == "ok") & rows["checkpoint"].notna()]
        for _, row in rows.iterrows():  # a handful of rows at most (one per stage)
            path = Path(row["checkpoint"])
            path = path if path.is_absolute() else self.out / path
            if path.is_file():
                src = Cell(*(row[k] for k in KEY_COLUMNS))
                return src.tag(), str(path)
        return None


def stage1_overrides(checkpoint: str) -> dict:
    """The ``fit`` keywords that give SEPAL its trained first stage: the ViT-B+Δ checkpoint as
    ``build_model('sepal', ..., stage1=<path>)`` (see :mod:`spared_lib.models.sepal`)."""
    return {"model_kwargs": {"stage1": checkpoint}}


def _stage1_rows(table: pd.DataFrame, cell: Cell) -> pd.DataFrame:
    """Rows of ``table`` that are runs of ``cell``'s first stage: the same dataset, target, learning
    rate, seed and steps, at any stage."""
    want = cell.stage1()
    keep = np.ones(len(table), bool)
    for col in ("dataset", "model", "target", "lr", "seed", "steps"):
        keep &= (table[col] == getattr(want, col)).to_numpy()
    return table[keep]


def _stage1_failed_row(cell: Cell, table: pd.DataFrame) -> dict:
    """The row of a refining cell without a first stage: ``does_not_fit`` when its stage-1 run did
    not fit the device (then neither does the refinement, which holds that model inside), else
    ``failed``."""
    from .cells import DOES_NOT_FIT, failed_row

    want = cell.stage1()
    rows = _stage1_rows(table, cell)
    if len(rows) and rows["status"].iloc[-1] == DOES_NOT_FIT:
        row = failed_row(cell, f"its stage 1 ({want.tag()}) does not fit this device: {rows['error'].iloc[-1]}",
                         float("nan"))
        return {**row, "status": DOES_NOT_FIT}
    return failed_row(cell, f"no trained stage-1 run ({want.tag()} failed or has no checkpoint)", float("nan"))


# --------------------------------------------------------------------------- the stages
def search_stage(session: _Session, name: str, grid: Grid) -> None:
    """Stage 1 of a dataset: one run per model and learning rate on the searched target."""
    session.run(search_cells(name, grid.models, grid.targets, grid.lrs, grid.seeds[0], grid.search_steps,
                             grid.search_target))


def final_stage(session: _Session, name: str, grid: Grid) -> None:
    """Stage 2 of a dataset: every model, target and seed at the searched learning rate.

    A final cell whose twin search run (same target, lr, seed, steps) finished copies its row."""
    store = session.store
    table = store.table()
    done = store.done_keys()
    finals = []
    for model in grid.models:
        for target in grid.targets:
            source = grid.search_target or target
            lr = select_lr(table, name, model, source, grid.seeds[0], grid.lrs, grid.search_steps)
            if lr is None:
                if not session.stopped:
                    warnings.warn(f"benchmark: no search run of {name}/{model}/{source} finished with a "
                                  "validation MSE; its final runs are skipped")
                continue
            for seed in grid.seeds:
                cell = Cell(name, model, target, "final", lr, seed, grid.steps)
                twin = Cell(name, model, target, "search", lr, seed, grid.search_steps)
                if cell.key in done:
                    continue
                if grid.search_steps == grid.steps and twin.key in done:
                    store.append(_reuse_row(table, twin, cell))
                else:
                    finals.append(cell)
    session.run(finals)


def _reuse_row(table: pd.DataFrame, twin: Cell, cell: Cell) -> dict:
    src = table.set_index(list(KEY_COLUMNS)).loc[twin.key]
    src = src.iloc[-1] if isinstance(src, pd.DataFrame) else src
    row = {k: src[k] for k in src.index if k not in ("reused_from", "finished_at")}
    return {**row, **cell.as_dict(), "reused_from": "search", "finished_at": now()}


# --------------------------------------------------------------------------- the entry point
def run_benchmark(datasets: Iterable[str] | Mapping[str, tuple], models: Sequence[str],
                  targets: str | Sequence[str] = ("raw", "completed"), out: str | os.PathLike = "results",
                  *, lrs: Sequence[float] | None = None, steps: int = 1000, search_steps: int | None = None,
                  seeds: Sequence[int] = (0,), size: str = "paper", batch_size: int = 256,
                  micro_batch_size: int | str | None = "auto", pretrained: Any = "imagenet",
                  device: str = "auto", search_target: str | None = "raw", keep_checkpoints: bool = False,
                  max_hours: float | None = None, backend: str = "sequential", ray_address: str | None = None,
                  cpus_per_trial: float = 1, gpus_per_trial: float | None = None, fit_fn: Callable | None = None,
                  prepare_fn: Callable | None = None, fit_options: Mapping | None = None,
                  table_name: str = "results.csv", progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the benchmark and return its results table.

    Parameters
    ----------
    datasets
        Dataset names, prepared by ``prepare_fn`` (default
        :func:`spared_lib.benchmark.prepare_dataset`, which caches the prepared
        AnnData and patches under ``out/prepared``), or a mapping ``name -> (adata,
        patches)`` of data you prepared yourself.
    models
        Names from :data:`spared_lib.models.MODELS`.
    targets
        ``raw`` (``c_d_log1p``) and/or ``completed`` (``c_t_log1p``).
    out
        Results folder: ``results.csv`` (the table), ``config.json``, ``checkpoints/``,
        ``prepared/``. On Colab put it on Google Drive, so the next session continues the grid.
    lrs
        Learning-rate grid (default :func:`lr_grid`). A one-point grid skips the choice.
    steps, search_steps
        Optimisation steps of the final runs and of the search runs (default: ``steps``).
    seeds
        Seeds of the final runs; the search uses the first.
    size, batch_size, micro_batch_size, pretrained, device
        Passed to :func:`spared_lib.training.fit` (``batch_size``: spots per optimiser step, the
        paper's 256; slide models take one slide per step). ``pretrained='imagenet'`` (the paper's)
        starts every backbone from its ImageNet weights; ``micro_batch_size='auto'`` keeps the
        effective batch and splits it into micro-batches that fit the device's free memory.
    search_target
        ``'raw'`` (default, the paper's protocol): search on raw data and reuse that learning
        rate for every target. ``'completed'``: search there instead. ``None``: one search per
        (model, target).
    keep_checkpoints
        Keep every run's best checkpoint (weights only). By default only the ViT-B+Δ checkpoints
        are kept (SEPAL refines them); the rest are deleted once their metrics are in the table.
    max_hours
        Stop starting runs once the next one would end after this many hours (its expected time
        is the median of the model's finished runs); the same call continues later. Sequential only.
    backend
        ``'sequential'`` (default) or ``'ray'`` (Ray Tune trials; ``ray_address`` to join
        a cluster, ``gpus_per_trial`` defaults to 1 when the cluster has GPUs; ``out`` must be
        on storage every node sees, for SEPAL to find its stage-1 checkpoints).
    fit_fn
        Replaces :func:`spared_lib.training.fit` (tests inject a fake one).
    prepare_fn
        Replaces :func:`spared_lib.benchmark.prepare_dataset`: ``prepare_fn(name, targets=...,
        out_dir=..., seed=...) -> (adata, patches)``.
    fit_options
        More keyword arguments for every fit, e.g. ``{"val_every": 50, "progress": False}``.
        They do not enter the cell key: keep them fixed within one results folder.

    Returns
    -------
    pandas.DataFrame
        The table: one row per cell (latest attempt), every stage.

    Defined in ``notebooks/06_benchmark.py``.
    """
    grid = make_grid(datasets, models, targets, lrs, steps, search_steps, seeds, search_target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, {"size": size, "batch_size": batch_size, "pretrained": _jsonable(pretrained),
                        "search_target": search_target})
    fit_kwargs = _fit_kwargs(size, device, pretrained, batch_size, micro_batch_size, fit_options)
    executor = _executor(backend, ray_address=ray_address, cpus_per_trial=cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, out=out)
    if max_hours is not None and backend != "sequential":
        raise ValueError("run_benchmark: max_hours works with backend='sequential' only")
    deadline = None if max_hours is None else time.time() + 3600 * float(max_hours)
    session = _Session(out, ResultsStore(out / table_name), executor, fit_fn or _default_fit(), fit_kwargs,
                       keep_checkpoints, progress, deadline)
    for name in grid.names:
        session.use_dataset(_dataset_loader(name, datasets, prepare_fn, grid, out))
        search_stage(session, name, grid)
        final_stage(session, name, grid)
    if session.stopped:
        left = count_pending(session.store.table(), grid)
        print(f"run_benchmark: stopped after max_hours={max_hours}; {left} runs of this grid are left — "
              "run the same command (or cell) again to continue", flush=True)
    return session.store.table()


def count_pending(table: pd.DataFrame, grid: Grid) -> int:
    """Search runs of ``grid`` without a finished row, plus two finals per unsearched block (a
    lower bound on what is left: the finals' learning rates are known only after the search)."""
    done = set(map(tuple, table[table["status"] == "ok"][list(KEY_COLUMNS)].itertuples(index=False, name=None)))
    left = 0
    for name in grid.names:
        cells = search_cells(name, grid.models, grid.targets, grid.lrs, grid.seeds[0], grid.search_steps,
                             grid.search_target)
        left += sum(c.key not in done for c in cells)
        finals = table[(table["dataset"] == name) & (table["stage"] == "final") & (table["status"] == "ok")]
        left += max(0, len(grid.models) * len(grid.targets) * len(grid.seeds) - len(finals))
    return left


def _fit_kwargs(size, device, pretrained, batch_size, micro_batch_size, fit_options) -> dict:
    kw = {"size": size, "device": device, "pretrained": pretrained}
    if batch_size is not None:
        kw["batch_size"] = batch_size
    if micro_batch_size is not None:
        kw["micro_batch_size"] = micro_batch_size
    clash = sorted(set(fit_options or {}) & (_CELL_KEYWORDS | set(kw)))
    if clash:
        raise ValueError(f"run_benchmark: fit_options may not set {clash}; use the run_benchmark arguments")
    return {**kw, **(fit_options or {})}


def _dataset_loader(name, datasets, prepare_fn, grid: Grid, out: Path) -> Callable[[], tuple]:
    if isinstance(datasets, Mapping):
        return lambda: tuple(datasets[name])

    def load():
        prep = prepare_fn or _default_prepare()
        return tuple(prep(name, targets=grid.prepared_targets, out_dir=out, seed=grid.seeds[0]))

    return load


def _executor(backend: str, **kw):
    if backend == "sequential":
        return SequentialExecutor()
    if backend == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(address=kw["ray_address"], cpus_per_trial=kw["cpus_per_trial"],
                           gpus_per_trial=kw["gpus_per_trial"], storage=Path(kw["out"]) / "ray")
    raise ValueError(f"run_benchmark: unknown backend {backend!r}; choose 'sequential' or 'ray'")


def _default_fit():
    from spared_lib.training import fit

    return fit


def _default_prepare():
    from .prepare import prepare_dataset

    return prepare_dataset


def _check_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); delete it or use another --out") from err
        diff = {k: (old.get(k), config[k]) for k in _CONFIG_KEYS if old.get(k) != config[k]}
        if diff:
            raise ValueError(f"{out}: these results were made with other settings {diff} "
                             "(saved, requested); use another --out to keep the table comparable")
    else:
        path.write_text(json.dumps(config, indent=1))


def _jsonable(v):
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def final_results(table: pd.DataFrame) -> pd.DataFrame:
    """Finished final runs averaged over seeds: one row per (dataset, model, target).

    Where a folder holds final runs from several grids, the latest run of each seed counts.

    Defined in ``notebooks/06_benchmark.py``.
    """
    rows = table[(table["stage"] == "final") & (table["status"] == "ok")]
    # a later grid may have chosen another learning rate: the latest final run of a seed wins
    rows = rows.drop_duplicates(["dataset", "model", "target", "seed"], keep="last")
    num = ["lr", *METRICS, "best_val_mse", "n_params", "wall_time_s"]
    agg = rows.groupby(["dataset", "model", "target"], sort=False)
    res = agg[num].mean()
    res["n_seeds"] = agg.size()
    for col in ("eval_split", "device", "stage1_run"):
        res[col] = agg[col].first()
    return res.reset_index()


__all__ = ["run_benchmark", "select_lr", "final_results", "make_grid", "Grid", "search_stage", "final_stage",
           "count_pending", "stage1_overrides", "SequentialExecutor", "TARGETS"]
