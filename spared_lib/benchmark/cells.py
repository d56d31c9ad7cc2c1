"""Running one cell of the benchmark and turning its outcome into a table row.

Both executors call :func:`run_cell` — :class:`spared_lib.benchmark.runner.SequentialExecutor` in
this process, :mod:`spared_lib.benchmark.ray_backend` inside a Ray Tune trial — so this module
imports neither of them (the runner imports the Ray backend, never the other way round).

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from spared_lib.metrics import METRICS

from .grid import Cell


@dataclass(frozen=True)
class Job:
    """A cell and how to run it: keywords of this cell only, whether its checkpoint is kept, and
    what to record about the stage-1 run it refines (see :func:`run_cell`)."""

    cell: Cell
    overrides: dict = field(default_factory=dict)
    keep_checkpoint: bool = False
    stage1: dict | None = None

    def as_dict(self) -> dict:
        """Plain values only (a Ray Tune trial's config)."""
        return {"cell": self.cell.as_dict(), "overrides": dict(self.overrides),
                "keep_checkpoint": self.keep_checkpoint, "stage1": self.stage1}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Job":
        return cls(Cell(**d["cell"]), dict(d.get("overrides") or {}), bool(d.get("keep_checkpoint")),
                   d.get("stage1"))


def now() -> str:
    """The current UTC time as the table writes it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def relative_to(path, out_dir) -> str | None:
    """``path`` relative to the results folder when it lies inside it (the folder may move,
    e.g. a Google Drive folder mounted elsewhere next session), else absolute."""
    if not path:
        return None
    path = Path(path)
    if out_dir is not None:
        try:
            return path.resolve().relative_to(Path(out_dir).resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def _batching(extra: Mapping) -> str | None:
    """How the run batched its input, in words: ``256 = 4 × 64`` or ``whole slides``."""
    if "slide_input" in extra:
        return str(extra["slide_input"])
    if "batch_size" not in extra:
        return None
    k = int(extra.get("accumulate_grad_batches", 1) or 1)
    return f"{extra['batch_size']}" + (f" = {k} × {extra['micro_batch_size']}" if k > 1 else "")


def result_row(cell: Cell, result: Any, out_dir=None, stage1: Mapping | None = None) -> dict:
    """The table row of a finished run (``result`` is a :class:`spared_lib.training.FitResult`).

    ``stage1`` names the run a SEPAL cell refined (``{'run': tag, 'checkpoint': path}``).
    """
    metrics = dict(getattr(result, "metrics", {}) or {})
    missing = [m for m in METRICS if m not in metrics]
    if missing:
        raise ValueError(f"fit returned metrics without {missing} (got {sorted(metrics)})")
    extra = dict(getattr(result, "extra", {}) or {})
    return {
        **cell.as_dict(),
        "target_layer": cell.target_layer,
        "best_val_mse": float(result.best_val_mse),
        **{m: float(metrics[m]) for m in METRICS},
        "n_params": int(result.n_params),
        "wall_time_s": float(result.wall_time_s),
        "peak_memory_gb": extra.get("peak_memory_gb"),
        "device": str(result.device),
        "precision": extra.get("precision"),
        "batching": _batching(extra),
        "pretrained": extra.get("pretrained"),
        "stage1_run": (stage1 or {}).get("run"),
        "stage1_checkpoint": (stage1 or {}).get("checkpoint"),
        "checkpoint": relative_to(getattr(result, "checkpoint_path", None), out_dir),
        "eval_split": str(result.eval_split),
        "status": "ok",
        "finished_at": now(),
    }


#: ``status`` of a run its device cannot hold (:class:`spared_lib.training.DoesNotFit`, raised
#: by the memory planner before the first step): nothing in it is broken, it needs a larger device.
DOES_NOT_FIT = "does_not_fit"


def failed_row(cell: Cell, err: BaseException | str, wall_time_s: float) -> dict:
    """The table row of a run that raised (it is retried on the next invocation).

    ``status`` is ``failed``, or :data:`DOES_NOT_FIT` when the memory planner found that even the
    smallest micro-batch does not fit the device; the message with its figures is in ``error``.
    """
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    status = "failed"
    if not isinstance(err, str):
        from spared_lib.training.memory import DoesNotFit  # torch is loaded once a fit has raised

        if isinstance(err, DoesNotFit):
            status = DOES_NOT_FIT
    return {**cell.as_dict(), "target_layer": cell.target_layer, "status": status,
            "error": text[:500], "wall_time_s": wall_time_s, "finished_at": now()}


def slim_checkpoint(path) -> None:
    """Keep only the weights of a Lightning checkpoint, its step and epoch. The trainer already
    saves weights only (:func:`spared_lib.engine.make_trainer`); this drops what Lightning adds
    beside them, and the optimiser state of a checkpoint written with it (twice the model's size
    for Adam: a ViT-B checkpoint shrinks from ~1 GB to ~350 MB).

    The file is replaced atomically, so an interruption leaves either checkpoint, never half."""
    import torch

    path = Path(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    keep = {k: state[k] for k in ("state_dict", "global_step", "epoch") if k in state}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(keep, tmp)
    os.replace(tmp, path)


def merge_kwargs(common: Mapping, own: Mapping) -> dict:
    """``fit`` keywords of every cell updated by one cell's own; ``model_kwargs`` are merged (a
    SEPAL cell adds its ``stage1`` to whatever model options the benchmark passes to all)."""
    out = {**common, **own}
    if "model_kwargs" in common and "model_kwargs" in own:
        out["model_kwargs"] = {**(common["model_kwargs"] or {}), **(own["model_kwargs"] or {})}
    return out


def checkpoint_dir(cell: Cell, out_dir) -> str | None:
    """Where a cell's best checkpoint goes: ``<out>/checkpoints/<cell tag>``."""
    return None if out_dir is None else str(Path(out_dir) / "checkpoints" / cell.tag())


def run_cell(job: Job | Cell, adata, patches, fit_fn: Callable, fit_kwargs: Mapping, out_dir) -> dict:
    """Train one cell and return its row; errors become a ``failed`` row (``does_not_fit`` when
    the memory planner finds the device too small).

    Parameters
    ----------
    job
        The run: a :class:`Job`, or a plain :class:`~spared_lib.benchmark.grid.Cell` (no
        overrides, checkpoint deleted after scoring). A job says
    adata, patches
        The prepared dataset.
    fit_fn, fit_kwargs
        :func:`spared_lib.training.fit` (or a stand-in) and the keywords every cell shares.
    out_dir
        Results folder (checkpoints go to ``<out>/checkpoints/<tag>``).

    A job's ``overrides`` are keywords of this cell only (SEPAL: its stage-1 checkpoint);
    ``keep_checkpoint`` keeps the best checkpoint (weights only) after scoring, because another
    cell will refine it (ViT-B+Δ for SEPAL) — otherwise it is deleted once the metrics are in the
    row, so a grid of hundreds of runs does not fill the disk (or a Google Drive); ``stage1`` is
    recorded in the row (``{'run': tag, 'checkpoint': path}``).

    ``KeyboardInterrupt`` is not caught: it stops the benchmark, and the cell simply has no row yet.

    Defined in ``notebooks/06_benchmark.py``.
    """
    job = job if isinstance(job, Job) else Job(job)
    cell = job.cell
    t0 = time.perf_counter()
    try:
        result = fit_fn(cell.model, adata, target_layer=cell.target_layer, steps=cell.steps, lr=cell.lr,
                        patches=patches, seed=cell.seed, out_dir=checkpoint_dir(cell, out_dir),
                        **merge_kwargs(fit_kwargs, job.overrides))
        row = result_row(cell, result, out_dir, job.stage1)
    except Exception as err:  # one broken model must not stop a 500-run benchmark
        warnings.warn(f"benchmark: {cell.tag()} failed: {type(err).__name__}: {err}")
        return failed_row(cell, err, time.perf_counter() - t0)
    path = getattr(result, "checkpoint_path", None)
    if path and Path(path).is_file():
        if job.keep_checkpoint:
            slim_checkpoint(path)
        else:
            Path(path).unlink()
            row["checkpoint"] = None
    return row


__all__ = ["DOES_NOT_FIT", "Job", "run_cell", "result_row", "failed_row", "slim_checkpoint", "checkpoint_dir", "relative_to", "now"]
