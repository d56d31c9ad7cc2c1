"""``fit`` and ``predict``: train any registered model the way the benchmark does.

Introduced in ``notebooks/04_patch_models.py``.

The protocol (SPEC §4): train for a fixed number of optimiser steps, evaluate on the
validation split every ``val_every`` steps, keep the checkpoint with the lowest
validation MSE (over observed entries), then score that checkpoint on the test split
(validation where the dataset has no test split) with
:func:`spared_lib.metrics.compute_metrics`. Lightning runs the loop, so the same call
uses a CPU, a Colab GPU (mixed precision) or several GPUs (DDP).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from spared_lib.engine import autocast, default_workers, make_trainer, resolve_device
from spared_lib.metrics import compute_metrics
from spared_lib.models import build_model, count_parameters, get_entry
from spared_lib.models.base import FitContext, SpotModel

from .data import (Targets, check_patches, first_ring, make_loader, normalise, read_targets,
                   spot_meta)
from .memory import PeakMemory, plan_micro_batch, plan_slide_spots, release_memory
from .module import SpotModule, predict_batch


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    model
        The model with the best-validation weights, in eval mode.
    metrics
        :func:`~spared_lib.metrics.compute_metrics` of that model on ``eval_split``.
    best_val_mse
        Lowest validation MSE seen (model space; equal to log1p space for Δ models).
    eval_split
        ``'test'``, or ``'val'`` for datasets without a test split.
    checkpoint_path
        The Lightning checkpoint of the best step.
    n_params
        Trainable parameters.
    wall_time_s
        Seconds spent in training (Lightning's fit, validation included).
    device
        ``'cpu'``, ``'cuda'``, ...
    history
        DataFrame with ``step``, ``train_loss``, ``val_mse`` (NaN where not evaluated).
    predictions
        ``(len(eval_index), G)`` predictions on ``eval_split`` in log1p space.
    eval_index
        Row positions (in ``adata``) of the evaluated spots.
    extra
        How the run went: ``steps`` (after ``SPARED_MAX_STEPS``), ``lr``, ``batch_size``,
        ``micro_batch_size`` and ``accumulate_grad_batches``, ``precision``, ``pretrained``,
        ``peak_memory_gb`` (GPU: the allocator's peak; CPU: the process's resident peak),
        ``memory_plan`` (what ``'auto'`` measured) and, for slide models, ``slide_input``
        (whole slides or crops of at most N spots).
    """

    model: Any
    metrics: dict
    best_val_mse: float
    eval_split: str
    checkpoint_path: str | None
    n_params: int
    wall_time_s: float
    device: str
    history: pd.DataFrame
    model_name: str = ""
    target_layer: str = ""
    predictions: np.ndarray | None = None
    eval_index: np.ndarray | None = None
    best_step: int | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- inference
def _iterate(model: SpotModel, adata, patches, index, batch_size: int, device: str, neighbors=None,
             targets: Targets | None = None, progress: bool = False, num_workers: int = 0):
    """Yield (positions in ``index``, normalised batch on ``device``) in evaluation order."""
    if targets is None:  # new data: no truth needed to predict
        g = adata.n_vars
        targets = Targets("", np.zeros((adata.n_obs, g), np.float32), np.zeros((adata.n_obs, g), np.float32),
                          np.zeros(g, np.float32), np.zeros((adata.n_obs, g), bool))
    batching = getattr(model, "batching", "spot")
    if batching == "slide" and neighbors is None:
        neighbors = first_ring(adata)
    loader = make_loader(batching, patches, targets, spot_meta(adata), index, batch_size=batch_size,
                         train=False, neighbors=neighbors, max_spots=getattr(model, "max_spots", None),
                         num_workers=num_workers)
    pos = np.full(adata.n_obs, -1, np.int64)
    pos[index] = np.arange(len(index))
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="predict", leave=False)
    for batch in loader:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch["image"] = normalise(batch["image"])
        yield pos[batch["index"].cpu().numpy()], batch


@torch.no_grad()
def predict(model: SpotModel, adata, patches, index=None, *, batch_size: int = 64, device: str = "auto",
            tta: bool | None = None, progress: bool = False, num_workers: int | None = None) -> np.ndarray:
    """Predict expression for the spots of ``adata`` (all of them, or the rows ``index``).

    Parameters
    ----------
    model
        A trained :class:`~spared_lib.models.base.SpotModel` (e.g. ``FitResult.model``).
    adata
        AnnData aligned with ``patches`` (``obs['slide_id']`` and ``obsm['spatial']`` are
        used by slide models; no expression layer is needed).
    patches
        ``(n_obs, H, W, 3)`` uint8 (:func:`spared_lib.preprocessing.extract_patches`).
    index
        Row positions to predict; default all rows.
    tta
        Average over the 8 symmetries; ``None`` follows ``model.test_time_augmentation``.

    Returns
    -------
    numpy.ndarray
        ``(len(index), G)`` float32 in log1p space: Δ models get their training means
        (``model.target_offset``, stored by :func:`fit`) added back.

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    check_patches(patches, adata.n_obs)
    index = np.arange(adata.n_obs) if index is None else np.asarray(index, dtype=np.int64)
    device = resolve_device(device)
    tta = model.test_time_augmentation if tta is None else tta
    model = model.to(device).eval()
    out = None
    workers = default_workers(device) if num_workers is None else num_workers
    for pos, batch in _iterate(model, adata, patches, index, batch_size, device, progress=progress,
                               num_workers=workers):
        with autocast(device):
            pred = predict_batch(model, batch, tta).float().cpu().numpy()
        if out is None:
            out = np.empty((len(index), pred.shape[1]), np.float32)
        out[pos] = pred
    offset = getattr(model, "target_offset", None)
    if offset is not None:
        out += offset.detach().cpu().numpy()
    return out


def make_encoder(adata, patches, device: str, batch_size: int = 64):
    """The ``FitContext.encode(module, index)`` function: frozen features of un-augmented patches."""

    @torch.no_grad()
    def encode(module, index, batch_size: int = batch_size) -> torch.Tensor:
        index = np.asarray(index, dtype=np.int64)
        was_training = module.training
        module.eval()
        chunks = []
        for start in range(0, len(index), batch_size):  # a loop over batches, not spots
            rows = np.sort(index[start:start + batch_size])
            order = np.argsort(np.argsort(index[start:start + batch_size]))
            img = normalise(torch.from_numpy(np.ascontiguousarray(patches[rows])).to(device))
            with autocast(device):
                chunks.append(module(img).float().cpu()[order])
        module.train(was_training)
        return torch.cat(chunks) if chunks else torch.empty(0)

    return encode


# --------------------------------------------------------------------------- training
def _splits(adata, eval_split):
    if "split" not in adata.obs:
        raise KeyError("adata.obs has no 'split' column (train/val/test); see spared_lib.data.load_dataset")
    split = np.asarray(adata.obs["split"].astype(str))
    idx = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    if not len(idx["train"]) or not len(idx["val"]):
        raise ValueError(f"fit needs train and val spots; adata.obs['split'] has counts "
                         f"{ {k: len(v) for k, v in idx.items()} }")
    if eval_split is None:
        eval_split = "test" if len(idx["test"]) else "val"
    if eval_split not in idx or not len(idx[eval_split]):
        raise ValueError(f"eval_split={eval_split!r} has no spots in adata.obs['split']")
    return idx, eval_split



@dataclass(frozen=True)
class FitOptions:
    """How :func:`fit` trains: the protocol's knobs in one object (defaults: the paper's).

    Pass one to ``fit(..., options=FitOptions(...))``, or give any field as a keyword of
    ``fit`` (``fit('stnet', adata, steps=30)``), which overrides the options object.

    Attributes
    ----------
    steps
        Optimiser steps (the paper: 1,000). ``SPARED_MAX_STEPS`` caps it
        (:func:`spared_lib.engine.cap_steps`).
    lr
        Learning rate; ``None`` uses the registry's default for the model
        (:data:`spared_lib.models.MODELS`).
    batch_size
        Spots per optimiser step for ``batching='spot'`` models (the paper: 256). Slide models
        take one slide (or crop of ≤ ``model.max_spots``) per step.
    micro_batch_size
        Largest batch put through the model at once; when smaller than ``batch_size`` the step
        accumulates gradients over ``batch_size / micro_batch_size`` micro-batches, so the
        effective batch stays ``batch_size``. ``'auto'`` (default): the largest that fits the
        device's free memory, measured on the model before training
        (:func:`spared_lib.training.memory.plan_micro_batch`). ``None``: no accumulation.
    slide_spots
        Slide models (``batching='slide'``: HisToGene, Hist2ST) train on one slide per step, as
        their authors did. ``'auto'`` (default): whole slides where they fit the device's free
        memory, else the largest contiguous crops that do
        (:func:`spared_lib.training.memory.plan_slide_spots`); a number: crops of at most that
        many spots; ``None``: the model's own ``max_spots``. ``FitResult.extra['slide_input']``
        says which was used.
    seed
        Seeds model initialisation, shuffling and augmentation; CPU runs repeat exactly.
    pretrained
        ``'imagenet'`` (the paper's: torchvision's ImageNet weights for the backbone), ``None``
        (random initialisation) or a path to a checkpoint; see :func:`spared_lib.models.build_model`.
    size
        ``'paper'`` (the original architectures) or ``'small'`` (CPU-friendly; no ImageNet weights).
    model_kwargs
        More keywords of :func:`spared_lib.models.build_model`.
    device, devices, precision
        ``device='auto'`` uses a GPU when there is one, in mixed precision (bf16 where supported,
        else fp16); ``devices`` GPUs run DDP. ``precision`` overrides Lightning's precision.
    val_every
        Validate every this many steps (default ``max(1, steps // 10)``).
    eval_split
        ``'test'`` or ``'val'``; default test where the dataset has one.
    tta
        8-symmetry test-time averaging at validation and evaluation; ``None`` follows the model
        (on for ST-Net).
    observed_only_loss
        Restrict the training loss to observed entries. Default False, as the original SpaRED
        trainer: the loss covers every entry of the target layer, which is how completed targets
        (``c_t_log1p``) change training. Metrics use observed entries only.
    out_dir
        Where the best checkpoint goes (a temporary folder when ``None``).
    num_workers, eval_batch_size
        Loader processes (default: none on CPU) and the evaluation batch (default ``batch_size``,
        or four micro-batches when the step accumulates: evaluation keeps no activations).
    progress, verbose
        Progress bar; one line saying what is trained.
    """

    steps: int = 1000
    lr: float | None = None
    batch_size: int = 256
    micro_batch_size: int | str | None = "auto"
    slide_spots: int | str | None = "auto"
    seed: int = 0
    pretrained: Any = "imagenet"
    size: str = "paper"
    model_kwargs: dict | None = None
    device: str = "auto"
    devices: Any = "auto"
    precision: str | None = None
    val_every: int | None = None
    eval_split: str | None = None
    tta: bool | None = None
    observed_only_loss: bool = False
    out_dir: Any = None
    num_workers: int | None = None
    eval_batch_size: int | None = None
    progress: bool = True
    verbose: bool = True

    def replace(self, **changes) -> "FitOptions":
        """A copy with ``changes``; an unknown name is a ``TypeError`` that lists the valid ones."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"fit: unknown option(s) {unknown}; FitOptions has {sorted(names)}")
        return dataclasses.replace(self, **changes)


def accumulation(batch_size: int, micro_batch_size: int | None) -> tuple[int, int]:
    """``(micro-batch, micro-batches per step)`` whose product is exactly ``batch_size``.

    The number of micro-batches is the smallest divisor of ``batch_size`` that brings each
    micro-batch to at most ``micro_batch_size``, so every optimiser step sees ``batch_size`` spots.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if micro_batch_size is None or micro_batch_size >= batch_size:
        return batch_size, 1
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    k = math.ceil(batch_size / micro_batch_size)
    while batch_size % k:
        k += 1
    return batch_size // k, k


def _build(model_name, adata, opt: FitOptions):
    """The model to train, its name and learning rate."""
    if isinstance(model_name, str):
        model = build_model(model_name, adata.n_vars, pretrained=opt.pretrained, size=opt.size,
                            **(opt.model_kwargs or {}))
        return model, model_name, get_entry(model_name).lr if opt.lr is None else opt.lr
    if opt.lr is None:
        raise ValueError("fit(model, ...) with a model instance needs an explicit lr")
    return model_name, getattr(model_name, "name", type(model_name).__name__), opt.lr


def _attach_targets(model: SpotModel, targets: Targets, target_layer: str) -> None:
    # the Δ offset travels with the model (and its checkpoint) so predict() needs no adata.var
    offset = torch.as_tensor(targets.offset)
    if "target_offset" in getattr(model, "_buffers", {}):
        model.target_offset = offset
    else:
        model.register_buffer("target_offset", offset)
    model.target_layer = target_layer


def _probe_batches(model, patches, targets: Targets, meta: dict, rows: np.ndarray, neighbors, device: str):
    """``make_batch(n)``: a model-input batch of ``n`` spots of ``rows`` on ``device`` (for slide
    models the ``n`` spots nearest the centre of ``rows``, a contiguous disc), built by the training
    loaders' datasets."""
    from torch.utils.data import default_collate

    from .data import SlideDataset, SpotDataset, to_model_input

    xy = meta["xy"][rows]
    by_centre = rows[np.argsort(np.hypot(*(xy - xy.mean(0)).T), kind="stable")]

    def make_batch(n: int) -> dict:
        if model.batching == "slide":
            crop = by_centre[:n]
            item = SlideDataset(patches, targets, meta, crop, neighbors, max_spots=len(crop))[0]
        else:
            ds = SpotDataset(patches, targets, meta, rows[:n])
            item = default_collate([ds[i] for i in range(len(ds))])
        return to_model_input({k: v.to(device) for k, v in item.items()}, augment=False)

    return make_batch


def _plan_memory(model, opt: FitOptions, dev: str, patches, targets, meta, idx, neighbors):
    """``(micro-batch, micro-batches per step, what to record)``; sets a slide model's ``max_spots``.

    Spot models: :func:`~spared_lib.training.memory.plan_micro_batch` for ``'auto'``. Slide models:
    :func:`~spared_lib.training.memory.plan_slide_spots` for ``slide_spots='auto'`` (whole slides
    where they fit)."""
    train = idx["train"]
    if model.batching == "spot":
        micro = opt.micro_batch_size
        info = {}
        if micro == "auto":
            plan = plan_micro_batch(model, _probe_batches(model, patches, targets, meta, train, neighbors, dev),
                                    opt.batch_size, dev)
            micro, info = plan.size, {"memory_plan": plan.as_dict()}
        elif micro is not None and not isinstance(micro, (int, np.integer)):
            raise ValueError(f"micro_batch_size must be 'auto', None or a positive integer, got {micro!r}")
        micro, accumulate = accumulation(opt.batch_size, micro)
        return micro, accumulate, info
    # slide models: one slide (or crop) per step; the largest slide of any split bounds the crop
    slide = meta["slide"]
    largest = int(np.bincount(slide).max())
    info = {}
    if opt.slide_spots == "auto":
        biggest = np.bincount(slide[train]).argmax()
        rows = train[slide[train] == biggest]
        plan = plan_slide_spots(model, _probe_batches(model, patches, targets, meta, rows, neighbors, dev),
                                largest, dev)
        model.max_spots = plan.size
        info["memory_plan"] = plan.as_dict()
    elif opt.slide_spots is not None:
        if int(opt.slide_spots) != opt.slide_spots or opt.slide_spots < 1:
            raise ValueError(f"slide_spots must be 'auto', None or a positive integer, got {opt.slide_spots!r}")
        model.max_spots = int(opt.slide_spots)
    n = model.max_spots  # None: whole slides (the model's own default where its original did so)
    info["slide_input"] = (f"whole slides (up to {largest} spots)" if n is None or n >= largest
                           else f"crops of at most {int(n)} spots (largest slide {largest})")
    return opt.batch_size, 1, info


def fit(model_name, adata, target_layer: str = "c_d_log1p", options: FitOptions | None = None, *,
        patches=None, **overrides) -> FitResult:
    """Train a model on one preprocessed dataset and score its best checkpoint.

    Parameters
    ----------
    model_name
        A name of :data:`spared_lib.models.MODELS`, or an already built SpotModel.
    adata
        Preprocessed AnnData with ``obs['split']``, the target layer and ``layers['mask']``.
    target_layer
        ``'c_d_log1p'`` (raw, median-completed) or ``'c_t_log1p'`` (SpaCKLE-completed).
        Δ models train on the matching ``*_deltas`` layer.
    options
        A :class:`FitOptions` (default: the paper's protocol).
    patches
        ``(n_obs, 224, 224, 3)`` uint8 aligned with ``adata``; ``None`` extracts them with
        :func:`spared_lib.preprocessing.extract_patches`.
    **overrides
        Fields of :class:`FitOptions` (``steps``, ``lr``, ``batch_size``, ``pretrained``, ...).

    Returns
    -------
    FitResult

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    import lightning.pytorch as pl

    opt = (options or FitOptions()).replace(**overrides)
    dev = resolve_device(opt.device)
    # what earlier runs freed goes back first: it would inflate this run's peak and shrink 'auto'
    release_memory(dev)
    pl.seed_everything(opt.seed, workers=True, verbose=False)
    model, name, lr = _build(model_name, adata, opt)
    job = _prepare(model, adata, target_layer, patches, opt, dev)
    micro, accumulate, memory = _plan_memory(model, opt, dev, job.patches, job.targets, job.meta, job.idx,
                                             job.neighbors)
    eval_batch = opt.eval_batch_size or (opt.batch_size if accumulate == 1 else min(opt.batch_size, 4 * micro))
    workers = default_workers(dev) if opt.num_workers is None else opt.num_workers
    train_loader, val_loader = _loaders(model, job, micro, accumulate, eval_batch, workers, opt.seed)

    run = make_trainer(opt.steps, device=dev, val_every=opt.val_every, out_dir=opt.out_dir, name=name,
                       precision=opt.precision, devices=opt.devices, accumulate_grad_batches=accumulate,
                       progress=opt.progress)
    module = SpotModule(model, lr=lr, tta=opt.tta, observed_only_loss=opt.observed_only_loss)
    n_params = count_parameters(model)
    if opt.verbose:
        batch = (f"batch {opt.batch_size}" + (f" as {accumulate} × {micro}" if accumulate > 1 else "")
                 if model.batching == "spot" else memory["slide_input"])
        _announce(name, n_params, target_layer, model, run, lr, batch, dev, job)
    t0 = time.perf_counter()
    with PeakMemory(dev) as peak:
        run.fit(module, train_loader, val_loader)
    wall = time.perf_counter() - t0

    best_step = run.load_best(module)
    model = module.model.eval()
    ev = job.idx[job.eval_split]
    pred = predict(model, adata, job.patches, ev, batch_size=eval_batch, device=dev, tta=module.tta,
                   num_workers=workers)
    metrics = compute_metrics(job.targets.y[ev], pred, job.targets.mask[ev])
    best = run.checkpoint.best_model_score
    return FitResult(model=model, metrics=metrics, best_val_mse=float(best) if best is not None else float("nan"),
                     eval_split=job.eval_split, checkpoint_path=run.checkpoint.best_model_path or None,
                     n_params=n_params, wall_time_s=wall, device=dev, history=run.history.frame(),
                     model_name=name, target_layer=target_layer, predictions=pred, eval_index=ev,
                     best_step=best_step,
                     extra={"steps": run.steps, "lr": lr, "batch_size": opt.batch_size, "micro_batch_size": micro,
                            "accumulate_grad_batches": accumulate, "precision": run.precision,
                            "pretrained": None if opt.pretrained is None else str(opt.pretrained),
                            "peak_memory_gb": round(peak.peak_gb, 3), **memory})


@dataclass
class _Job:
    """What one ``fit`` call trains on: patches, targets, splits, spot metadata, neighbours."""

    patches: Any
    targets: Targets
    idx: dict
    eval_split: str
    meta: dict
    neighbors: np.ndarray


def _prepare(model: SpotModel, adata, target_layer: str, patches, opt: FitOptions, dev: str) -> _Job:
    """Read the targets and splits, check (or cut) the patches, and let the model prepare itself."""
    targets = read_targets(adata, target_layer, model.uses_deltas)
    idx, eval_split = _splits(adata, opt.eval_split)
    if patches is None:
        from spared_lib.preprocessing import extract_patches

        patches = extract_patches(adata)
    check_patches(patches, adata.n_obs)
    job = _Job(patches, targets, idx, eval_split, spot_meta(adata), first_ring(adata))
    _attach_targets(model, targets, target_layer)
    model.to(dev)
    model.prepare(FitContext(adata=adata, patches=patches, target=targets.target, mask=targets.mask,
                             train_index=idx["train"], neighbors=job.neighbors, device=torch.device(dev),
                             encode=make_encoder(adata, patches, dev)))
    return job


def _loaders(model: SpotModel, job: _Job, micro: int, accumulate: int, eval_batch: int, workers: int, seed: int):
    """The shuffled training loader (``accumulate`` micro-batches per step) and the validation loader."""
    common = dict(neighbors=job.neighbors, max_spots=getattr(model, "max_spots", None), num_workers=workers)
    train = make_loader(model.batching, job.patches, job.targets, job.meta, job.idx["train"], batch_size=micro,
                        train=True, generator=torch.Generator().manual_seed(seed), accumulate=accumulate, **common)
    val = make_loader(model.batching, job.patches, job.targets, job.meta, job.idx["val"], batch_size=eval_batch,
                      train=False, **common)
    return train, val


def _announce(name, n_params, target_layer, model, run, lr, batch, dev, job: _Job) -> None:
    """The one line ``fit(verbose=True)`` prints: what is trained, how, on what."""
    n = {k: len(v) for k, v in job.idx.items()}
    print(f"fit {name}: {n_params:,} trainable parameters, target {target_layer}"
          f"{' (as deltas)' if model.uses_deltas else ''}, {run.steps} steps, lr {lr:g}, {batch}, "
          f"on {dev} ({run.precision}); train/val/{job.eval_split} = "
          f"{n['train']}/{n['val']}/{n[job.eval_split]} spots", flush=True)
