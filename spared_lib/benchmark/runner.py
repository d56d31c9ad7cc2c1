"""The benchmark runner: learning-rate search, final fits, one results table, resume.

For every dataset, model and target (``raw`` = ``c_d_log1p``, ``completed`` =
SpaCKLE's ``c_t_log1p``) the runner

1. trains the model once per learning rate of a log grid (stage ``search``) and keeps
   the learning rate with the lowest validation MSE (``FitResult.best_val_mse``);
2. trains it at that learning rate for every seed (stage ``final``) and records the
   metrics on the test split (validation where the dataset has no test split).

A final run whose settings equal a search run (same learning rate, seed and steps)
is not trained twice: its row copies the search run's metrics and says so in
``reused_from``. Every finished run is written to the table at once; a cell with a
finished row is never run again, so re-running the same command after an
interruption resumes where it stopped.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .grid import TARGETS, Cell, lr_grid, parse_targets, round_lr, search_cells
from .store import METRICS, ResultsStore

#: Settings that change what a cell means: resuming a results folder with other
#: values would mix incomparable rows, so the runner refuses.
_CONFIG_KEYS = ("size", "batch_size", "pretrained", "search_target")


def result_row(cell: Cell, result: Any) -> dict:
    """The table row of a finished run (``result`` is a ``training.FitResult``)."""
    metrics = dict(getattr(result, "metrics", {}) or {})
    missing = [m for m in METRICS if m not in metrics]
    if missing:
        raise ValueError(f"fit returned metrics without {missing} (got {sorted(metrics)})")
    return {
        **cell.as_dict(),
        "target_layer": cell.target_layer,
        "best_val_mse": float(result.best_val_mse),
        **{m: float(metrics[m]) for m in METRICS},
        "n_params": int(result.n_params),
        "wall_time_s": float(result.wall_time_s),
        "device": str(result.device),
        "eval_split": str(result.eval_split),
        "status": "ok",
        "finished_at": _now(),
    }


def failed_row(cell: Cell, err: BaseException, wall_time_s: float) -> dict:
    """The table row of a run that raised (it is retried on the next invocation)."""
    return {**cell.as_dict(), "target_layer": cell.target_layer, "status": "failed",
            "error": f"{type(err).__name__}: {err}"[:500], "wall_time_s": wall_time_s,
            "finished_at": _now()}


def run_cell(cell: Cell, adata, patches, fit_fn: Callable, fit_kwargs: Mapping, out_dir: Path | None) -> dict:
    """Train one cell and return its row; errors become a ``failed`` row.

    ``KeyboardInterrupt`` is not caught: it stops the benchmark, and the cell simply
    has no row yet.
    """
    t0 = time.perf_counter()
    try:
        ckpt = None if out_dir is None else str(Path(out_dir) / "checkpoints" / cell.tag())
        result = fit_fn(cell.model, adata, target_layer=cell.target_layer, steps=cell.steps,
                        lr=cell.lr, patches=patches, seed=cell.seed, out_dir=ckpt, **fit_kwargs)
        return result_row(cell, result)
    except Exception as err:  # one broken model must not stop a 500-run benchmark
        warnings.warn(f"benchmark: {cell.tag()} failed: {type(err).__name__}: {err}")
        return failed_row(cell, err, time.perf_counter() - t0)


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
    """Runs cells one after another in this process (the default)."""

    name = "sequential"

    def run(self, cells: Sequence[Cell], adata, patches, fit_fn, fit_kwargs, out_dir, on_row, progress=True):
        from tqdm.auto import tqdm

        for cell in tqdm(cells, desc="benchmark", disable=not progress, leave=False):
            on_row(run_cell(cell, adata, patches, fit_fn, fit_kwargs, out_dir))


def _default_fit():
    from spared_lib.training import fit

    return fit


def run_benchmark(datasets: Iterable[str] | Mapping[str, tuple], models: Sequence[str],
                  targets: str | Sequence[str] = ("raw", "completed"), out: str | os.PathLike = "results",
                  *, lrs: Sequence[float] | None = None, steps: int = 1000, search_steps: int | None = None,
                  seeds: Sequence[int] = (0,), size: str = "paper", batch_size: int | None = None,
                  pretrained: Any = None, device: str = "auto", search_target: str | None = None,
                  backend: str = "sequential", ray_address: str | None = None, cpus_per_trial: float = 1,
                  gpus_per_trial: float | None = None, fit_fn: Callable | None = None,
                  prepare_fn: Callable | None = None, fit_options: Mapping | None = None,
                  table_name: str = "results.csv", progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the benchmark and return its results table.

    Parameters
    ----------
    datasets
        Dataset names, prepared by ``prepare_fn`` (default
        :func:`spared_lib.benchmark.prepare.prepare_dataset`, which caches the prepared
        AnnData and patches under ``out/prepared``), or a mapping ``name -> (adata,
        patches)`` of data you prepared yourself.
    models
        Names from :data:`spared_lib.models.MODELS`.
    targets
        ``raw`` (``c_d_log1p``) and/or ``completed`` (``c_t_log1p``).
    out
        Results folder: ``results.csv`` (the table), ``config.json``, ``checkpoints/``.
    lrs
        Learning-rate grid (default :func:`lr_grid`). A one-point grid skips the choice.
    steps, search_steps
        Optimisation steps of the final runs and of the search runs (default: ``steps``).
    seeds
        Seeds of the final runs; the search uses the first.
    size, batch_size, pretrained, device
        Passed to :func:`spared_lib.training.fit`.
    search_target
        ``None``: one search per (model, target). ``'raw'`` or ``'completed'``: search
        on that target only and reuse its learning rate for the other (the paper's protocol).
    backend
        ``'sequential'`` (default) or ``'ray'`` (Ray Tune trials; ``ray_address`` to join
        a cluster, ``gpus_per_trial`` defaults to 1 when the cluster has GPUs).
    fit_fn
        Replaces :func:`spared_lib.training.fit` (tests inject a fake one).
    fit_options
        More keyword arguments for every fit, e.g. ``{"val_every": 50, "progress": False}``.
        They do not enter the cell key: keep them fixed within one results folder.

    Returns
    -------
    pandas.DataFrame
        The table: one row per cell (latest attempt), search and final stages.

    Defined in ``notebooks/06_benchmark.py``.
    """
    targets = parse_targets(targets)
    if search_target is not None:
        parse_targets([search_target])
    models = list(dict.fromkeys(models))
    if not models:
        raise ValueError("run_benchmark: no models given (--models)")
    lrs = sorted({round_lr(v) for v in (lrs if lrs is not None else lr_grid())})
    if not lrs or any(v <= 0 for v in lrs):
        raise ValueError(f"run_benchmark: learning rates must be positive, got {lrs}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_benchmark: seeds must not be empty")
    if steps < 1 or (search_steps is not None and search_steps < 1):
        raise ValueError(f"run_benchmark: steps must be >= 1, got steps={steps}, search_steps={search_steps}")
    search_steps = steps if search_steps is None else int(search_steps)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_config(out, {"size": size, "batch_size": batch_size, "pretrained": _jsonable(pretrained),
                        "search_target": search_target})
    store = ResultsStore(out / table_name)
    fit_fn = fit_fn or _default_fit()
    fit_kwargs = {"size": size, "device": device, "pretrained": pretrained}
    if batch_size is not None:
        fit_kwargs["batch_size"] = batch_size
    clash = sorted(set(fit_options or {}) & {"model_name", "adata", "target_layer", "steps", "lr", "patches",
                                              "seed", "out_dir", *fit_kwargs})
    if clash:
        raise ValueError(f"run_benchmark: fit_options may not set {clash}; use the run_benchmark arguments")
    fit_kwargs.update(fit_options or {})
    executor = _executor(backend, ray_address=ray_address, cpus_per_trial=cpus_per_trial,
                         gpus_per_trial=gpus_per_trial, out=out)

    given = dict(datasets) if isinstance(datasets, Mapping) else None
    names = list(given) if given is not None else list(dict.fromkeys(datasets))
    if not names:
        raise ValueError("run_benchmark: no datasets given (--datasets)")
    needed_targets = sorted(set(targets) | ({search_target} if search_target else set()))

    for name in names:
        data: list = []  # prepared lazily: a finished dataset costs nothing on resume

        def get_data(name=name, data=data):
            if not data:
                if given is not None:
                    data.append(tuple(given[name]))
                else:
                    prep = prepare_fn or _default_prepare()
                    data.append(tuple(prep(name, targets=needed_targets, out_dir=out, seed=seeds[0])))
            return data[0]

        # stage 1: learning-rate search
        cells = search_cells(name, models, targets, lrs, seeds[0], search_steps, search_target)
        _run_pending(cells, store, executor, get_data, fit_fn, fit_kwargs, out, progress)

        # stage 2: final runs at the selected learning rate
        table = store.table()
        finals = []
        for model in models:
            for target in targets:
                lr = select_lr(table, name, model, search_target or target, seeds[0], lrs, search_steps)
                if lr is None:
                    warnings.warn(f"benchmark: no finished search run for {name}/{model}/"
                                  f"{search_target or target}; its final runs are skipped")
                    continue
                for seed in seeds:
                    cell = Cell(name, model, target, "final", lr, seed, steps)
                    twin = Cell(name, model, target, "search", lr, seed, search_steps)
                    if search_steps == steps and not store.is_done(cell) and store.is_done(twin):
                        store.append(_reuse_row(table, twin, cell))
                        continue
                    finals.append(cell)
        _run_pending(finals, store, executor, get_data, fit_fn, fit_kwargs, out, progress)
    return store.table()


def _run_pending(cells, store, executor, get_data, fit_fn, fit_kwargs, out, progress):
    done = store.done_keys()
    pending = [c for c in cells if c.key not in done]
    if not pending:
        return
    adata, patches = get_data()
    executor.run(pending, adata, patches, fit_fn, fit_kwargs, out, store.append, progress=progress)


def _reuse_row(table: pd.DataFrame, twin: Cell, cell: Cell) -> dict:
    keys = ["dataset", "model", "target", "stage", "lr", "seed", "steps"]
    src = table.set_index(keys).loc[twin.key]
    src = src.iloc[-1] if isinstance(src, pd.DataFrame) else src
    row = {k: src[k] for k in src.index if k not in ("reused_from", "finished_at")}
    return {**row, **cell.as_dict(), "reused_from": "search", "finished_at": _now()}


def _executor(backend: str, **kw):
    if backend == "sequential":
        return SequentialExecutor()
    if backend == "ray":
        from .ray_backend import RayExecutor

        return RayExecutor(address=kw["ray_address"], cpus_per_trial=kw["cpus_per_trial"],
                           gpus_per_trial=kw["gpus_per_trial"], storage=Path(kw["out"]) / "ray")
    raise ValueError(f"run_benchmark: unknown backend {backend!r}; choose 'sequential' or 'ray'")


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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
    res["eval_split"] = agg["eval_split"].first()
    res["device"] = agg["device"].first()
    return res.reset_index()


__all__ = ["run_benchmark", "select_lr", "final_results", "run_cell", "result_row", "TARGETS"]
