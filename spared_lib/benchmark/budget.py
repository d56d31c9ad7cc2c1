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

from .grid import STAGE1_OF, count_runs


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
              gpu: GPU = COLAB_T4, search_target: str | None = "raw", spackle_steps: int = 10_000) -> pd.DataFrame:
    """Per model: runs of the grid, minutes per run and hours on ``gpu``, and whether it fits.

    With a ``completed`` target, a first row ``spackle`` counts SpaCKLE's training (one run of
    ``spackle_steps`` per dataset, at ``memory['spackle']['gflop_per_step']``).

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
        Indexed by model (and ``spackle``): ``runs``, ``gflop_per_step``, ``min_per_run``, ``hours``,
        ``fits`` (weights + gradients + optimiser state within ``gpu.memory_gb``); a last row
        ``total`` (hours of what fits).

    Defined in ``notebooks/06_benchmark.py``.
    """
    per_model = {r["model"]: r for r in memory["models"] if "error" not in r}
    needed = set(models) | {STAGE1_OF[m] for m in models if m in STAGE1_OF}
    missing = sorted(needed - set(per_model))
    if missing:
        raise KeyError(f"grid_cost: the memory results have no figures for {missing}; rerun "
                       "benchmarks/train_memory.py")
    counts = count_runs(models, targets, n_lrs=n_lrs, n_seeds=n_seeds, n_datasets=n_datasets,
                        search_target=search_target)

    def per_run(m):
        r = per_model[m]
        per_step = r["gflop_per_sample"] * (memory["slide_spots"] if r["batching"] == "slide" else batch_size)
        return per_step, steps * per_step / (gpu.tflops * 1e3) / 60, r["weights_gb"] + r["fixed_gb"] < gpu.memory_gb

    rows = {}
    sp = memory.get("spackle") or {}
    if "completed" in targets and "gflop_per_step" in sp:
        minutes = spackle_steps * sp["gflop_per_step"] / (gpu.tflops * 1e3) / 60
        rows["spackle"] = {"runs": int(n_datasets), "gflop_per_step": sp["gflop_per_step"], "min_per_run": minutes,
                           "hours": n_datasets * minutes / 60, "fits": True}
    for m in models:
        per_step, minutes, fits = per_run(m)
        own = counts.loc[m, "search"] + counts.loc[m, "final"]
        # a model's stage-1 runs are runs of its base model (SEPAL: ViT-B+Δ), priced as such
        base = per_run(STAGE1_OF[m])[1] if m in STAGE1_OF else 0.0
        hours = (own * minutes + counts.loc[m, "stage1"] * base) / 60
        rows[m] = {"runs": int(counts.loc[m, "runs"]), "gflop_per_step": per_step, "min_per_run": minutes,
                   "hours": hours if fits else float("nan"), "fits": bool(fits)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.loc["total"] = {"runs": int(out["runs"][out["fits"]].sum()), "gflop_per_step": float("nan"),
                        "min_per_run": float("nan"), "hours": out["hours"].sum(), "fits": bool(out["fits"].all())}
    return out


def plan_sessions(cost: pd.DataFrame, hours: float = 8.0) -> pd.DataFrame:
    """Split a grid into sessions of at most ``hours`` each, to run one after another on one GPU.

    Models are packed first-fit in decreasing order of their hours (:func:`grid_cost`). A model and
    the model that refines its runs (ViT-B+Δ and SEPAL) go into the same session, so the refining
    model finds its stage 1; SpaCKLE goes into the first session, whose completed targets need it.
    Models that do not fit the GPU form a last session of their own (``fits`` False). A model
    longer than a session keeps one to itself and simply continues in the next (the table resumes).

    Returns
    -------
    pandas.DataFrame
        One row per session: ``session`` (1, 2, ...), ``models`` (list), ``hours``, ``fits``.

    Defined in ``notebooks/06_benchmark.py``.
    """
    rows = cost.drop(index=[i for i in ("total", "spackle") if i in cost.index])
    units: list[tuple[list[str], float]] = []
    placed: set[str] = set()
    for m in rows.index:
        if m in placed or not rows.loc[m, "fits"]:
            continue
        base = STAGE1_OF.get(m, m) if STAGE1_OF.get(m) in rows.index else m
        group = [base] + [r for r, b in STAGE1_OF.items() if b == base and r in rows.index and rows.loc[r, "fits"]]
        placed |= set(group)
        units.append((group, float(rows.loc[group, "hours"].sum())))
    units.sort(key=lambda u: -u[1])
    sessions: list[tuple[list[str], float]] = []
    for group, h in units:
        for i, (members, total) in enumerate(sessions):
            if total + h <= hours:
                sessions[i] = (members + group, total + h)
                break
        else:
            sessions.append((list(group), h))
    if "spackle" in cost.index and sessions:
        sessions[0] = (sessions[0][0], sessions[0][1] + float(cost.loc["spackle", "hours"]))
    out = [{"session": i + 1, "models": members, "hours": total, "fits": True}
           for i, (members, total) in enumerate(sessions)]
    too_big = [m for m in rows.index if not rows.loc[m, "fits"]]
    if too_big:
        out.append({"session": len(out) + 1, "models": too_big, "hours": float("nan"), "fits": False})
    return pd.DataFrame(out)
