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

import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spared_lib.metrics import compute_metrics
from spared_lib.models import build_model, count_parameters, get_entry
from spared_lib.models.base import FitContext, SpotModel

from .data import (Targets, check_patches, first_ring, make_loader, normalise, read_targets,
                   spot_meta)
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


# --------------------------------------------------------------------------- devices
def resolve_device(device: str = "auto") -> str:
    """``'auto'`` → ``'cuda'`` when a GPU is visible, else ``'cpu'``; ``'gpu'`` means ``'cuda'``."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("gpu", "cuda") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but torch sees no CUDA GPU; use device='auto' or 'cpu'")
        return "cuda"
    if device in ("cpu", "mps"):
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda'/'gpu' or 'mps', got {device!r}")


def _autocast(device: str):
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def _default_workers(device: str) -> int:
    # CPU runs stay single-process: deterministic and kind to small machines
    return 0 if device == "cpu" else min(4, max(1, (os.cpu_count() or 2) - 1))


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
                         train=False, neighbors=neighbors, max_spots=getattr(model, "max_spots", 1024),
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
    workers = _default_workers(device) if num_workers is None else num_workers
    for pos, batch in _iterate(model, adata, patches, index, batch_size, device, progress=progress,
                               num_workers=workers):
        with _autocast(device):
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
            with _autocast(device):
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


def _history_callback():
    import lightning.pytorch as pl

    class History(pl.Callback):
        def __init__(self):
            self.rows = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.rows.append({"step": trainer.global_step, "train_loss": float(loss), "val_mse": np.nan})

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking or "val_mse" not in trainer.callback_metrics:
                return
            v = float(trainer.callback_metrics["val_mse"])
            if self.rows and self.rows[-1]["step"] == trainer.global_step:
                self.rows[-1]["val_mse"] = v
            else:
                self.rows.append({"step": trainer.global_step, "train_loss": np.nan, "val_mse": v})

        def frame(self) -> pd.DataFrame:
            return pd.DataFrame(self.rows, columns=["step", "train_loss", "val_mse"])

    return History()


def fit(model_name, adata, target_layer: str = "c_d_log1p", steps: int = 1000, lr: float | None = None, *,
        patches=None, batch_size: int = 256, seed: int = 0, pretrained=None, size: str = "paper",
        device: str = "auto", out_dir=None, eval_split: str | None = None, val_every: int | None = None,
        tta: bool | None = None, model_kwargs: dict | None = None, devices="auto",
        num_workers: int | None = None, eval_batch_size: int | None = None, progress: bool = True,
        precision: str | None = None, verbose: bool = True, observed_only_loss: bool = False) -> FitResult:
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
    steps
        Optimiser steps (the paper: 1,000).
    lr
        Learning rate; ``None`` uses the registry's default for the model.
    patches
        ``(n_obs, 224, 224, 3)`` uint8 aligned with ``adata``; ``None`` extracts them with
        :func:`spared_lib.preprocessing.extract_patches`.
    batch_size
        Spots per batch for ``batching='spot'`` models (the paper: 256). Slide models
        take one slide (or crop of ≤ ``model.max_spots``) per step.
    seed
        Seeds model initialisation, shuffling and augmentation; CPU runs repeat exactly.
    pretrained, size, model_kwargs
        Passed to :func:`spared_lib.models.build_model`.
    device
        ``'auto'`` (GPU if present), ``'cpu'`` or ``'cuda'``. On GPU training uses mixed
        precision (bf16 where supported, else fp16); with several GPUs Lightning runs DDP.
    out_dir
        Where the best checkpoint goes (a temporary folder when ``None``).
    eval_split
        ``'test'`` or ``'val'``; default test where the dataset has one.
    val_every
        Validate every this many steps (default ``max(1, steps // 10)``).
    tta
        8-symmetry test-time averaging at validation and evaluation; ``None`` follows
        the model (on for ST-Net).
    observed_only_loss
        Restrict the training loss to observed entries (the original's ``robust_loss``).
        Default False, as the original: the loss covers every entry of the target layer, which
        is how completed targets (``c_t_log1p``) change training. Metrics use observed entries only.

    Returns
    -------
    FitResult

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    dev = resolve_device(device)
    pl.seed_everything(seed, workers=True, verbose=False)

    if isinstance(model_name, str):
        name = model_name
        model = build_model(name, adata.n_vars, pretrained=pretrained, size=size, **(model_kwargs or {}))
        lr = get_entry(name).lr if lr is None else lr
    else:
        model, name = model_name, getattr(model_name, "name", type(model_name).__name__)
        if lr is None:
            raise ValueError("fit(model, ...) with a model instance needs an explicit lr")
    targets = read_targets(adata, target_layer, model.uses_deltas)
    idx, eval_split = _splits(adata, eval_split)

    if patches is None:
        from spared_lib.preprocessing import extract_patches

        patches = extract_patches(adata)
    check_patches(patches, adata.n_obs)
    meta = spot_meta(adata)
    neighbors = first_ring(adata)

    # the Δ offset travels with the model (and its checkpoint) so predict() needs no adata.var
    offset = torch.as_tensor(targets.offset)
    if "target_offset" in getattr(model, "_buffers", {}):
        model.target_offset = offset
    else:
        model.register_buffer("target_offset", offset)
    model.target_layer = target_layer

    model.to(dev)
    ctx = FitContext(adata=adata, patches=patches, target=targets.target, mask=targets.mask,
                     train_index=idx["train"], neighbors=neighbors, device=torch.device(dev),
                     encode=make_encoder(adata, patches, dev))
    model.prepare(ctx)

    workers = _default_workers(dev) if num_workers is None else num_workers
    gen = torch.Generator().manual_seed(seed)
    common = dict(neighbors=neighbors, max_spots=getattr(model, "max_spots", 1024), num_workers=workers)
    train_loader = make_loader(model.batching, patches, targets, meta, idx["train"], batch_size=batch_size,
                               train=True, generator=gen, **common)
    val_loader = make_loader(model.batching, patches, targets, meta, idx["val"],
                             batch_size=eval_batch_size or batch_size, train=False, **common)

    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"spared_fit_{name}_"))
    ckpt = ModelCheckpoint(dirpath=out_dir, filename=f"{name}-best-{{step}}", monitor="val_mse", mode="min",
                           save_top_k=1, save_last=False)
    history = _history_callback()
    callbacks = [ckpt, history] + ([TQDMProgressBar(refresh_rate=max(1, steps // 50))] if progress else [])
    if precision is None:
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if dev == "cuda" else "32-true"
    val_every = val_every or max(1, steps // 10)
    trainer = pl.Trainer(
        accelerator="gpu" if dev == "cuda" else dev, devices=devices if dev == "cuda" else 1,
        strategy="auto", precision=precision, max_steps=steps, val_check_interval=min(val_every, steps),
        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False, callbacks=callbacks,
        enable_progress_bar=progress, enable_model_summary=False, deterministic=dev == "cpu",
        default_root_dir=out_dir, log_every_n_steps=1,
    )
    module = SpotModule(model, lr=lr, tta=tta, observed_only_loss=observed_only_loss)
    n_params = count_parameters(model)
    if verbose:
        print(f"fit {name}: {n_params:,} trainable parameters, target {target_layer}"
              f"{' (as deltas)' if model.uses_deltas else ''}, {steps} steps, lr {lr:g}, on {dev} ({precision}); "
              f"train/val/{eval_split} = {len(idx['train'])}/{len(idx['val'])}/{len(idx[eval_split])} spots")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*(smaller than the logging interval|isn't divisible).*")
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    wall = time.perf_counter() - t0

    best_path = ckpt.best_model_path or None
    if best_path:
        state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    best_step = None
    hist = history.frame()
    if len(hist) and hist["val_mse"].notna().any():
        best_step = int(hist.loc[hist["val_mse"].idxmin(), "step"])
    model = module.model.eval()
    use_tta = module.tta
    pred = predict(model, adata, patches, idx[eval_split], batch_size=eval_batch_size or batch_size,
                   device=dev, tta=use_tta, num_workers=workers)
    metrics = compute_metrics(targets.y[idx[eval_split]], pred, targets.mask[idx[eval_split]])
    best = ckpt.best_model_score
    return FitResult(model=model, metrics=metrics, best_val_mse=float(best) if best is not None else float("nan"),
                     eval_split=eval_split, checkpoint_path=best_path, n_params=n_params, wall_time_s=wall,
                     device=dev, history=hist, model_name=name, target_layer=target_layer, predictions=pred,
                     eval_index=idx[eval_split], best_step=best_step)
