"""Command line of the benchmark.

Examples
--------
One GPU (or CPU), sequentially, with the paper's protocol (ImageNet weights, one learning-rate
search per dataset on raw data reused for the completed target, SEPAL on the trained ViT-B+Δ,
SpaCKLE at the library's 10,000 steps, batch 256 in micro-batches that fit the GPU)::

    python -m spared_lib.benchmark --datasets 10xgenomic_human_brain --models all \
        --targets raw,completed --out results/

On Colab, ``--out`` on Google Drive and ``--max-hours`` a little under the session's limit: the
same command in the next session continues the grid.

A Ray cluster, one GPU per trial::

    ray start --head                      # on the head node (and `ray start --address=...` on workers)
    python -m spared_lib.benchmark --datasets all --models all --targets raw,completed \
        --out results/ --ray --address auto --gpus-per-trial 1 --cpus-per-trial 8

Re-running the same command resumes: finished cells are read from
``results/results.csv`` and never trained again.

Exit status: 0 when every run of the table finished; 1 when a run failed (its ``error`` says
why); 3 when the only unfinished runs are models the device cannot hold (``status``
``does_not_fit``: the memory planner's figures are in ``error``), e.g. paper-size Hist2ST on a
24 GiB machine: every other run is done, and the same command on a larger device finishes the grid.

Introduced in ``notebooks/06_benchmark.py``.
"""
from __future__ import annotations

import argparse
import sys
import time

from .cells import DOES_NOT_FIT
from .grid import TARGETS, lr_grid, parse_targets

#: Exit status when a run failed.
EXIT_FAILED = 1
#: Exit status when the only unfinished runs did not fit the device's memory.
EXIT_DOES_NOT_FIT = 3


def _csv(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def _model_names() -> dict:
    from spared_lib.models import MODELS

    return MODELS


def _pretrained(value: str):
    return None if value.strip().lower() in ("none", "random", "") else value


def _micro_batch(value: str):
    v = value.strip().lower()
    if v in ("auto", "none"):
        return None if v == "none" else "auto"
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--micro-batch must be 'auto', 'none' or a positive integer, got {value!r}")
    if n < 1:
        raise argparse.ArgumentTypeError(f"--micro-batch must be >= 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m spared_lib.benchmark",
        description="Learning-rate search and raw vs SpaCKLE-completed training of SpaRED prediction models; "
                    "one tidy results table that resumes after an interruption.",
        epilog=f"exit status: 0 every run finished; {EXIT_FAILED} a run failed; {EXIT_DOES_NOT_FIT} the only "
               "unfinished runs are models this device's memory cannot hold (status does_not_fit)")
    p.add_argument("--datasets", required=True,
                   help="comma-separated dataset keys (SpaRED registry keys, 'synthetic', a fixture such as "
                        "'her2st', or a folder); 'all' = the 26 SpaRED datasets")
    names = ", ".join(f"{k} ({e.display})" for k, e in _model_names().items())
    p.add_argument("--models", required=True, help=f"comma-separated model names or 'all': {names}")
    p.add_argument("--targets", default="raw,completed", help=f"comma-separated, from {sorted(TARGETS)}")
    p.add_argument("--out", default="results", help="results folder (table: <out>/results.csv)")
    p.add_argument("--table", default="results.csv", help="table file name in --out (.csv or .parquet)")
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--lrs", help="explicit learning rates, comma-separated (e.g. 1e-4,3e-4)")
    grid.add_argument("--lr-grid", default="1e-5:1e-3:5", help="log grid LOW:HIGH:N (default 1e-5:1e-3:5)")
    p.add_argument("--search-target", choices=[*sorted(TARGETS), "each"], default="raw",
                   help="search the learning rate on this target only and reuse it for the others "
                        "(default raw: the paper's protocol); 'each': one search per target")
    p.add_argument("--steps", type=int, default=1000, help="training steps of the final runs (paper: 1000)")
    p.add_argument("--search-steps", type=int, default=None, help="training steps of search runs (default --steps)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the final runs")
    p.add_argument("--size", choices=["paper", "small"], default="paper", help="model size (small: CPU tests)")
    p.add_argument("--batch-size", type=int, default=256, help="spots per optimiser step (default: the paper's 256)")
    p.add_argument("--micro-batch", type=_micro_batch, default="auto",
                   help="largest batch put through the model at once: 'auto' (default: chosen from the "
                        "device's free memory; the effective batch stays --batch-size), 'none', or a number")
    p.add_argument("--pretrained", type=_pretrained, default="imagenet",
                   help="backbone weights: 'imagenet' (default, the paper's), 'none' (random initialisation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--spackle-steps", type=int, default=None,
                   help="SpaCKLE training steps when preparing 'completed' targets (default: the library's, "
                        "the paper's 10,000)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every run's best checkpoint (default: only ViT-B+Δ's, which SEPAL refines)")
    p.add_argument("--max-hours", type=float, default=None,
                   help="stop starting runs after this many hours (e.g. a Colab session's limit); "
                        "the same command continues the grid")
    p.add_argument("--ray", action="store_true", help="run cells as Ray Tune trials")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto', 'ray://host:10001'); "
                                                    "default: a local Ray instance")
    p.add_argument("--cpus-per-trial", type=float, default=1)
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per Ray trial (default: 1 when the cluster has GPUs, else 0)")
    return p


def kwargs_from_args(args: argparse.Namespace) -> dict:
    """Turn parsed arguments into :func:`run_benchmark` keyword arguments."""
    if args.datasets.strip() == "all":
        from spared_lib.data import DATASETS

        datasets = list(DATASETS)
    else:
        datasets = _csv(args.datasets)
    known = _model_names()
    models = list(known) if args.models.strip() == "all" else _csv(args.models)
    unknown = [m for m in models if m not in known]
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; choose from {', '.join(known)} or 'all'")
    try:
        if args.lrs:
            lrs = [float(v) for v in _csv(args.lrs)]
        else:
            low, high, n = args.lr_grid.split(":")
            lrs = lr_grid(float(low), float(high), int(n))
        targets = parse_targets(args.targets)
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError as err:
        raise SystemExit(f"bad argument: {err} (--lr-grid is LOW:HIGH:N, --lrs and --seeds comma-separated)")
    if args.size == "small" and args.pretrained == "imagenet":
        raise SystemExit("--size small: the small models have no ImageNet weights; add --pretrained none")
    kw = dict(datasets=datasets, models=models, targets=targets, out=args.out, lrs=lrs, steps=args.steps,
              search_steps=args.search_steps, seeds=seeds, size=args.size, batch_size=args.batch_size,
              micro_batch_size=args.micro_batch, pretrained=args.pretrained, device=args.device,
              search_target=None if args.search_target == "each" else args.search_target,
              keep_checkpoints=args.keep_checkpoints, max_hours=args.max_hours, table_name=args.table,
              backend="ray" if args.ray else "sequential", ray_address=args.address,
              cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial)
    if args.spackle_steps is not None:
        from functools import partial

        from .prepare import prepare_dataset

        kw["prepare_fn"] = partial(prepare_dataset, spackle_steps=args.spackle_steps)
    return kw


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kw = kwargs_from_args(args)
    from .runner import final_results, run_benchmark

    t0 = time.perf_counter()
    table = run_benchmark(**kw)
    res = final_results(table)
    print(res[["dataset", "model", "target", "lr", "MSE", "PCC-Gene", "n_params", "wall_time_s"]].to_string(index=False))
    n_failed = int((table["status"] == "failed").sum())
    too_big = table[table["status"] == DOES_NOT_FIT]
    print(f"\n{len(table)} runs in the table ({n_failed} failed, {len(too_big)} did not fit the device) · "
          f"this invocation took {time.perf_counter() - t0:.0f} s · table: {kw['out']}/{kw['table_name']}")
    for model, rows in too_big.groupby("model", sort=False):
        print(f"  {model}: {len(rows)} runs did not fit: {rows['error'].iloc[0]}")
    return EXIT_FAILED if n_failed else EXIT_DOES_NOT_FIT if len(too_big) else 0


if __name__ == "__main__":
    sys.exit(main())
