"""What a benchmark grid costs on a GPU, before any run: runs, time and whether each model fits.

The number of runs comes from :func:`spared_lib.benchmark.count_runs`; the work of one run from
the measured forward + backward FLOPs per sample of each model at paper size
(``benchmarks/train_memory.py``, committed as the results file ``train_memory``); the time from an
assumed sustained throughput of the GPU. The estimate is only as good as that assumption: the
first finished rows of a real run (``wall_time_s``) replace it.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import pandas as pd

from .grid import count_runs


@dataclass(frozen=True)
class GPU:
    """A GPU for the estimate: its memory, and the throughput training sustains on it.

    Attributes
    ----------
    name
        What it is called.
    memory_gb
        Memory a run can use (GiB).
    tflops
        Sustained mixed-precision training throughput, in 10¹² FLOP/s: an assumption (see the
        chapter for where the default comes from).
    """

    name: str
    memory_gb: float
    tflops: float


#: The free Colab GPU. 15 GiB of its 16 GB are usable. NVIDIA measured 1,198 images/s of
#: mixed-precision ResNet-50 inference on a T4 (DeepLearningExamples, resnet50v1.5 README), i.e.
#: ≈ 9.8 TFLOP/s at 8.2 GFLOP per image; training is assumed to sustain half of that.
COLAB_T4 = GPU("Colab T4 (16 GB)", 15.0, 4.9)


def grid_cost(memory: Mapping, models: Sequence[str], targets: Sequence[str] = ("raw", "completed"),
              n_lrs: int = 5, n_seeds: int = 1, n_datasets: int = 1, steps: int = 1000, batch_size: int = 256,
              gpu: GPU = COLAB_T4, search_target: str | None = "raw") -> pd.DataFrame:
    """Per model: runs of the grid, minutes per run and hours on ``gpu``, and whether it fits.

    Parameters
    ----------
    memory
        The ``results`` of the committed file ``train_memory`` (``load_result('train_memory')['results']``):
        per model ``gflop_per_sample``, ``weights_gb``, ``fixed_gb``, ``batching``; and ``slide_spots``
        (spots per step of a slide model).
    models, targets, n_lrs, n_seeds, n_datasets, search_target
        The grid, as for :func:`spared_lib.benchmark.run_benchmark`.
    steps, batch_size
        Optimiser steps per run and spots per step (slide models: one slide of
        ``memory['slide_spots']`` spots per step).
    gpu
        The GPU (default :data:`COLAB_T4`).

    Returns
    -------
    pandas.DataFrame
        Indexed by model: ``runs``, ``gflop_per_step``, ``min_per_run``, ``hours``, ``fits``
        (weights + gradients + optimiser state within ``gpu.memory_gb``); a last row ``total``
        (hours of the models that fit).

    Defined in ``notebooks/06_benchmark.py``.
    """
    per_model = {r["model"]: r for r in memory["models"] if "error" not in r}
    missing = [m for m in models if m not in per_model]
    if missing:
        raise KeyError(f"grid_cost: the memory results have no figures for {missing}; rerun "
                       "benchmarks/train_memory.py")
    runs = count_runs(models, targets, n_lrs=n_lrs, n_seeds=n_seeds, n_datasets=n_datasets,
                      search_target=search_target)["runs"]
    rows = {}
    for m in models:
        r = per_model[m]
        per_step = r["gflop_per_sample"] * (memory["slide_spots"] if r["batching"] == "slide" else batch_size)
        minutes = steps * per_step / (gpu.tflops * 1e3) / 60
        fits = r["weights_gb"] + r["fixed_gb"] < gpu.memory_gb
        rows[m] = {"runs": int(runs[m]), "gflop_per_step": per_step, "min_per_run": minutes,
                   "hours": runs[m] * minutes / 60 if fits else float("nan"), "fits": bool(fits)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.loc["total"] = {"runs": int(out["runs"][out["fits"]].sum()), "gflop_per_step": float("nan"),
                        "min_per_run": float("nan"), "hours": out["hours"].sum(), "fits": bool(out["fits"].all())}
    return out
