"""The one training engine: devices, precision, the step cap and the Lightning ``Trainer``.

Introduced in ``notebooks/03_spackle.py`` (SpaCKLE) and ``notebooks/04_patch_models.py`` (the
prediction models). Every training loop of the library — :func:`spared_lib.completion.train_spackle`
and :func:`spared_lib.training.fit` — is a ``LightningModule`` run by the trainer that
:func:`make_trainer` builds, so both get the same things for free: the checkpoint with the lowest
validation metric, mixed precision on a GPU, a progress bar, gradient accumulation, DDP on
several GPUs, and :func:`cap_steps`.

This module imports nothing else from :mod:`spared_lib`; completion, models and training all sit
above it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch

#: Environment variable that caps every training loop's optimiser steps (the offline rehearsal
#: of the full-size defaults sets it, e.g. to 2; unset in normal use).
MAX_STEPS_ENV = "SPARED_MAX_STEPS"

# Loggers that print banners ("GPU available: ...", "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES") at INFO.
_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                      "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")

# Lightning warnings about choices we make on purpose (single-process CPU loaders, step-based
# validation); anything else still shows.
_EXPECTED_WARNINGS = (
    r".*does not have many workers.*",
    r".*(smaller than the logging interval|isn't divisible).*",
    r".*`max_epochs` was not set.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    # Lightning 2.6 on torch >= 2.10 calls a deprecated torch pytree check on every step
    r".*isinstance\(treespec, LeafSpec\).*",
)


# --------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device = "auto") -> str:
    """``'auto'`` → ``'cuda'`` when a GPU is visible, else ``'cpu'``; ``'gpu'``/``'cuda:N'`` → ``'cuda'``.

    Parameters
    ----------
    device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'gpu'``, ``'cuda:N'``, ``'mps'`` or a ``torch.device``.

    Returns
    -------
    str
        ``'cpu'``, ``'cuda'`` or ``'mps'``.

    Raises
    ------
    RuntimeError
        A GPU was asked for and torch sees none.
    """
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


def default_precision(device: str) -> str:
    """Lightning precision for ``device``: bf16 mixed where the GPU has it, else fp16 mixed; fp32 on CPU."""
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def autocast(device: str):
    """The autocast context matching :func:`default_precision` (a no-op on CPU)."""
    if device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def default_workers(device: str) -> int:
    """Data-loader worker processes: none on CPU (deterministic, kind to small machines)."""
    return 0 if device == "cpu" else min(4, max(1, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------- the step cap
def cap_steps(steps: int) -> int:
    """``steps``, or fewer when the environment variable ``SPARED_MAX_STEPS`` caps it.

    Every training loop of the library calls this, so one variable shortens all of them (the
    offline rehearsal runs each chapter's full-size defaults with 2 steps). Nothing else changes:
    model sizes, batch sizes and schedules stay what the caller asked for.

    Raises
    ------
    ValueError
        ``steps`` < 1, or ``SPARED_MAX_STEPS`` is not a positive integer.
    """
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    raw = os.environ.get(MAX_STEPS_ENV, "").strip()
    if not raw:
        return steps
    try:
        cap = int(raw)
    except ValueError:
        cap = 0
    if cap < 1:
        raise ValueError(f"environment variable {MAX_STEPS_ENV}={raw!r} must be a positive integer")
    return min(steps, cap)


# --------------------------------------------------------------------------- quiet output
@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's INFO banners and its warnings about deliberate choices, silenced for a block.

    Warnings that point at a real problem still show; the previous logger levels come back after.
    """
    loggers = [logging.getLogger(n) for n in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# --------------------------------------------------------------------------- the trainer
def _history_callback(monitor: str):
    import lightning.pytorch as pl

    class History(pl.Callback):
        """One row per optimiser step: ``step``, ``train_loss``, and the monitored metric where evaluated."""

        def __init__(self):
            self.rows: list[dict] = []
            self._batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self._batches += 1
            if loss is None:
                return
            # with gradient accumulation k micro-batches make one step: the row keeps their mean
            step = -(-self._batches // max(1, int(trainer.accumulate_grad_batches)))
            if self.rows and self.rows[-1]["step"] == step:
                row = self.rows[-1]
                row["_n"] += 1
                row["train_loss"] += (float(loss) - row["train_loss"]) / row["_n"]
            else:
                self.rows.append({"step": step, "train_loss": float(loss), monitor: np.nan, "_n": 1})

        # on_validation_end, not on_validation_epoch_end: Lightning calls the callbacks' epoch-end
        # hook before the module's own and before it updates callback_metrics, so a metric the
        # module logs at epoch end would be read one validation late
        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or monitor not in trainer.callback_metrics:
                return
            v = float(trainer.callback_metrics[monitor])
            if self.rows and self.rows[-1]["step"] == trainer.global_step:
                self.rows[-1][monitor] = v
            else:
                self.rows.append({"step": trainer.global_step, "train_loss": np.nan, monitor: v, "_n": 0})

        def frame(self) -> pd.DataFrame:
            return pd.DataFrame(self.rows, columns=["step", "train_loss", monitor])

    return History()


def _checkpoint_io():
    """Lightning checkpoint IO that streams ``torch.save`` to a temporary file beside the target
    and renames it into place.

    Lightning's own (``TorchCheckpointIO``, through ``_atomic_save``) serialises the whole
    checkpoint into an in-memory buffer and writes a copy of that buffer: twice the checkpoint in
    host memory for a moment. For paper-size Hist2ST (0.9 B parameters: 3.3 GiB of weights, 10 GiB
    with Adam's state) that killed the full-size rehearsal's CPU run at its first checkpoint (the
    out-of-memory killer, at 23.7 GB). Writing to a file needs no buffer, and the rename keeps the
    save atomic: an interruption leaves the previous checkpoint, never half of one."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    class StreamingCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            if storage_options is not None:
                raise TypeError("StreamingCheckpointIO.save_checkpoint takes no storage_options")
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                torch.save(checkpoint, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)

    return StreamingCheckpointIO()


@dataclass
class TrainerBundle:
    """What :func:`make_trainer` returns.

    Attributes
    ----------
    trainer
        The ``lightning.pytorch.Trainer``.
    checkpoint
        Its ``ModelCheckpoint`` (lowest ``monitor``; ``best_model_path``, ``best_model_score``).
    history
        A callback whose ``frame()`` is the DataFrame ``step``, ``train_loss``, ``monitor``.
    steps
        Optimiser steps the trainer will run (after :func:`cap_steps`).
    device, precision
        What it runs on.
    out_dir
        Folder of the checkpoint.
    """

    trainer: object
    checkpoint: object
    history: object
    steps: int
    device: str
    precision: str
    out_dir: Path

    def fit(self, module, train_loader, val_loader) -> None:
        """``trainer.fit`` with Lightning's expected-choice warnings and banners silenced."""
        with quiet_lightning():
            self.trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)

    def load_best(self, module) -> int | None:
        """Load the best checkpoint's weights into ``module``; return its step (None if none was saved)."""
        path = self.checkpoint.best_model_path
        if not path:
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        hist = self.history.frame()
        col = hist.columns[-1]
        return int(hist.loc[hist[col].idxmin(), "step"]) if hist[col].notna().any() else None


def make_trainer(steps: int, *, device: str = "auto", val_every: int | None = None, monitor: str = "val_mse",
                 out_dir=None, name: str = "model", precision: str | None = None, devices="auto",
                 accumulate_grad_batches: int = 1, progress: bool = True,
                 callbacks: Sequence = ()) -> TrainerBundle:
    """A Lightning ``Trainer`` for a fixed number of optimiser steps, validating every ``val_every``.

    Parameters
    ----------
    steps
        Optimiser steps (capped by :func:`cap_steps`). With ``accumulate_grad_batches = k`` each
        step consumes k loader batches.
    device
        ``'auto'``, ``'cpu'``, ``'cuda'`` ...; see :func:`resolve_device`. On CPU the run is
        deterministic (same seed, same weights).
    val_every
        Validate every this many steps (default ``max(1, steps // 10)``); the checkpoint candidates
        are the steps that are multiples of it.
    monitor
        The logged validation metric whose lowest value selects the checkpoint.
    out_dir
        Checkpoint folder (a fresh temporary folder when ``None``).
    name
        Prefix of the checkpoint file.
    precision
        Lightning precision; default :func:`default_precision`.
    devices
        GPUs to use (``'auto'`` = all visible: DDP on several). CPU runs use one process.
    accumulate_grad_batches
        Micro-batches per optimiser step (keeps the effective batch when one batch does not fit).
    progress
        Show Lightning's tqdm progress bar.
    callbacks
        More Lightning callbacks.

    Returns
    -------
    TrainerBundle
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    steps = cap_steps(steps)
    dev = resolve_device(device)
    precision = precision or default_precision(dev)
    val_every = min(int(val_every or max(1, steps // 10)), steps)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"spared_{name}_"))
    # weights only: the optimiser's state (twice the weights for Adam) is never read back, since a
    # run is resumed by training it again, not from its middle
    ckpt = ModelCheckpoint(dirpath=out_dir, filename=f"{name}-best-{{step}}", monitor=monitor, mode="min",
                           save_top_k=1, save_last=False, save_weights_only=True)
    history = _history_callback(monitor)
    cbs = [ckpt, history, *callbacks]
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=max(1, steps // 50)))
    with quiet_lightning():
        trainer = pl.Trainer(
            accelerator="gpu" if dev == "cuda" else dev, devices=devices if dev == "cuda" else 1,
            strategy="auto", precision=precision, max_steps=steps,
            # counted in loader batches: k micro-batches per optimiser step
            val_check_interval=val_every * int(accumulate_grad_batches),
            check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False, callbacks=cbs,
            enable_progress_bar=progress, enable_model_summary=False, deterministic=dev == "cpu",
            default_root_dir=out_dir, log_every_n_steps=1, accumulate_grad_batches=int(accumulate_grad_batches),
            plugins=[_checkpoint_io()],
        )
    return TrainerBundle(trainer, ckpt, history, steps, dev, precision, out_dir)

