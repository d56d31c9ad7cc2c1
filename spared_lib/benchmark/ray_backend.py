"""Running the benchmark's cells as Ray Tune trials (one machine or a cluster).

Every pending cell of a stage (all learning rates of the search, for all models and
targets of one dataset; then all final runs) becomes one Tune trial of a grid
search, with ``{"cpu": cpus_per_trial, "gpu": gpus_per_trial}`` resources, so Ray
packs as many trials as the cluster has GPUs and queues the rest. The trial calls
the same :func:`spared_lib.benchmark.cells.run_cell` as the sequential path and
reports its row; a Tune callback in the driver appends each row to the results
table the moment the trial ends, so an interrupted Ray run resumes like a
sequential one.

The dataset (AnnData and patches) goes once into Ray's object store
(``tune.with_parameters``) and is shared by all trials of that dataset.

Needs ``pip install 'ray[tune]'`` (the ``cluster`` extra of spared-lib).

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from .cells import Job, failed_row, run_cell
from .store import COLUMNS


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError as err:  # fail early with the fix, not deep inside a trial
        raise ImportError("backend='ray' needs Ray Tune: pip install 'ray[tune]>=2.9' "
                          "(or pip install 'spared-lib[cluster]')") from err
    return ray, tune


def _trial(config: dict, adata=None, patches=None, fit_fn=None, fit_kwargs=None, out_dir=None):
    """One Tune trial: train one cell and report its table row."""
    from ray import tune

    job = Job.from_dict(config["job"])
    row = run_cell(job, adata, patches, fit_fn, fit_kwargs or {}, None if out_dir is None else Path(out_dir))
    row.setdefault("best_val_mse", float("nan"))  # Tune requires the search metric in every result
    tune.report(row)


def _row_writer(on_row: Callable[[dict], None]):
    from ray import tune

    class RowWriter(tune.Callback):
        """Runs in the driver: writes each trial's row as soon as it is reported."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            on_row({k: result[k] for k in COLUMNS if k in result})

    return RowWriter()


class RayExecutor:
    """Runs cells as Ray Tune trials.

    Parameters
    ----------
    address
        ``None`` starts (or reuses) a local Ray instance; ``"auto"`` or
        ``"ray://host:10001"`` joins an existing cluster.
    cpus_per_trial, gpus_per_trial
        Resources of one trial. ``gpus_per_trial=None`` means one GPU per trial when
        the cluster has GPUs, none otherwise.
    storage
        Folder for Tune's trial logs (``<out>/ray``).

    Defined in ``notebooks/06_benchmark.py``.
    """

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float | None = None,
                 storage: str | os.PathLike | None = None):
        _import_ray()
        self.address = address
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.storage = Path(storage or "ray_results").resolve()
        self._stage = 0

    def resources(self) -> dict:
        ray, _ = _import_ray()
        gpus = self.gpus_per_trial
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        return {"cpu": self.cpus_per_trial, "gpu": gpus}

    def run(self, jobs: Sequence[Job], adata, patches, fit_fn, fit_kwargs, out_dir, on_row, progress=True,
            should_stop=None):
        """Run ``jobs`` as one Tune grid search (``should_stop``, a time budget, is not supported)."""
        ray, tune = _import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=progress)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, adata=adata, patches=patches, fit_fn=fit_fn,
                                 fit_kwargs=dict(fit_kwargs), out_dir=None if out_dir is None else str(out_dir)),
            self.resources())
        self._stage += 1
        tuner = tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search([j.as_dict() for j in jobs])},
            tune_config=tune.TuneConfig(metric="best_val_mse", mode="min", reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(name=f"{jobs[0].cell.dataset}_{jobs[0].cell.stage}_{os.getpid()}_{self._stage}",
                                      storage_path=str(self.storage), callbacks=[_row_writer(on_row)],
                                      verbose=1 if progress else 0),
        )
        grid = tuner.fit()
        # a trial that died outside fit (worker lost, out of memory) reported no row:
        # record it as failed so the table says why; the next invocation retries it
        for result in grid:
            if result.error is not None:
                job = Job.from_dict(result.config["job"])
                on_row({**failed_row(job.cell, result.error, float("nan")), "device": "ray"})
