"""Training SpaCKLE: random masking of observed entries, MSE, Adam, best-validation checkpoint.

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from spared_lib.preprocessing import nearest_in_slide

from .infer import gather_neighbourhoods, layer_arrays, resolve_device
from .model import SpaCKLE

TRAIN_INPUTS = ("zeroed", "median")


def masking_probabilities(mask: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """Per-gene masking probability ``fraction / glob_exp_frac``, capped at 1.

    ``glob_exp_frac`` is the fraction of spots that observe the gene (``mask`` True). Masking
    only observed entries with this probability removes ``fraction`` of each gene's observed
    entries on average, whatever its dropout rate.

    Introduced in ``notebooks/03_spackle.py``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    glob_exp_frac = np.asarray(mask, dtype=bool).mean(axis=0)
    with np.errstate(divide="ignore"):
        p = np.where(glob_exp_frac > 0, fraction / glob_exp_frac, 1.0)
    return np.minimum(p, 1.0).astype(np.float32)


def _split_indices(adata, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    split = np.asarray(adata.obs["split"]).astype(str) if "split" in adata.obs else np.full(adata.n_obs, "train")
    train = np.flatnonzero(split == "train")
    if train.size == 0:
        raise ValueError("adata.obs['split'] has no 'train' spots to train SpaCKLE on")
    for name in ("val", "test"):
        val = np.flatnonzero(split == name)
        if val.size:
            return train, val, name
    # A single-split dataset: hold out a random tenth of the spots (their own values stay
    # visible as neighbours, which is harmless for a self-supervised task).
    rng = np.random.default_rng(seed)
    held = rng.random(train.size) < 0.1
    return train[~held], train[held], "held-out 10% of train"


def _masked_loss(pred, target, valid_tokens):
    """MSE over every gene of the non-padding tokens (the paper's loss on the whole matrix)."""
    w = valid_tokens[..., None].to(pred.dtype)
    return ((pred - target) ** 2 * w).sum() / (w.sum() * pred.shape[-1]).clamp(min=1)


def train_spackle(
    adata,
    layer: str = "c_d_log1p",
    steps: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    device: str | torch.device = "auto",
    *,
    mask_fraction: float = 0.3,
    train_input: str = "zeroed",
    centre: bool = True,
    n_neighbors: int = 18,
    radius: float | None | str = "auto",
    val_every: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **model_kwargs,
):
    """Train a :class:`SpaCKLE` model on a preprocessed AnnData.

    Each step draws ``batch_size`` train-split centre spots, builds their neighbourhood matrix
    ``E`` (the spot and up to ``n_neighbors`` nearest spots of its slide), masks observed
    entries with per-gene probability ``mask_fraction / glob_exp_frac`` (capped at 1), and
    minimises the MSE between the reconstruction and ``E``. Every ``val_every`` steps the
    validation MSE is computed on the randomly masked observed entries of the centre spot
    (a fixed mask), and the weights with the lowest validation MSE are kept.

    Parameters
    ----------
    adata
        Preprocessed AnnData (layers ``layer`` and ``mask``, ``obs['slide_id']``,
        ``obs['split']``, ``obsm['spatial']``).
    layer
        The median-completed input layer (``c_d_log1p``).
    steps, batch_size, lr
        Optimisation (Adam); the paper trains 10,000 steps with batch 256 and lr 1e-3.
    seed
        Seeds the initial weights, batches, masks and dropout: same seed, same model.
    device
        ``'auto'`` (CUDA when available, else CPU), ``'cpu'``, ``'cuda'`` ...
    mask_fraction
        Fraction of each gene's observed entries masked during training (0.3).
    train_input
        What the model sees at entries that were missing in the data (mask False):
        ``'zeroed'`` (zeros, as at inference) or ``'median'`` (the median-filled values, as the
        original trained while zeroing them at inference). Chapter 03 compares the two.
    centre
        Feed the model expression minus the train-split gene means (``model.offset``), so a
        hidden entry (0) stands for the gene's mean; False feeds raw values as the original.
    n_neighbors, radius
        Neighbourhood, see :func:`spared_lib.preprocessing.nearest_in_slide`.
    val_every
        Validation interval in steps (default: ``max(1, steps // 50)``).
    out_dir
        If given, the best checkpoint is saved there as ``spackle.pt``.
    progress
        Show a ``tqdm.auto`` progress bar.
    **model_kwargs
        Passed to :class:`SpaCKLE` (``d_model``, ``n_layers``, ``n_heads``, ...).

    Returns
    -------
    model : SpaCKLE
        The best-validation model (on the CPU, in eval mode) with ``model.meta`` describing
        the data it was trained on.
    history : pandas.DataFrame
        One row per step: ``step``, ``train_loss``, ``val_mse`` (NaN between validations).

    Introduced in ``notebooks/03_spackle.py``.
    """
    if train_input not in TRAIN_INPUTS:
        raise ValueError(f"train_input must be one of {TRAIN_INPUTS}, got {train_input!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    x, m = layer_arrays(adata, layer)
    if not np.isfinite(x).all():
        raise ValueError(f"layer {layer!r} contains NaN or infinite values")
    dev = resolve_device(device)
    nbr = nearest_in_slide(adata, n_neighbors, radius)
    train_idx, val_idx, val_name = _split_indices(adata, seed)
    p_gene = masking_probabilities(m[train_idx], mask_fraction)
    val_every = val_every or max(1, steps // 50)

    offset = np.where(m[train_idx], x[train_idx], 0).sum(0) / np.maximum(m[train_idx].sum(0), 1)
    offset = offset.astype(np.float32) if centre else np.zeros(x.shape[1], np.float32)
    xt = torch.as_tensor(x, device=dev)
    off = torch.as_tensor(offset, device=dev)
    mt = torch.as_tensor(m, device=dev)
    nt = torch.as_tensor(nbr, device=dev)
    pt = torch.as_tensor(p_gene, device=dev)
    gen = torch.Generator().manual_seed(seed)  # CPU stream: identical draws on CPU and GPU
    n_tokens, n_genes = nbr.shape[1], x.shape[1]

    # A fixed validation mask, so successive validations are comparable.
    val_c = torch.as_tensor(val_idx, device=dev)
    val_e, val_obs, val_pad = gather_neighbourhoods(xt, mt, nt, val_c)
    val_r = (torch.rand(val_e.shape, generator=gen).to(dev) < pt) & val_obs
    val_in = (val_e - off).masked_fill(val_r | ~val_obs | val_pad[..., None], 0.0)  # as at inference

    def validate(model):
        model.eval()
        se, n = 0.0, 0
        with torch.no_grad():
            for s in range(0, val_idx.size, 1024):
                pred = model(val_in[s : s + 1024], val_pad[s : s + 1024])[:, 0]
                r = val_r[s : s + 1024, 0]
                se += float(((pred - val_e[s : s + 1024, 0]) ** 2)[r].sum())
                n += int(r.sum())
        model.train()
        return se / max(n, 1)

    rows = []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        model = SpaCKLE(n_genes, **model_kwargs).to(dev)
        model.offset.copy_(off)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        best, best_state, best_step = np.inf, None, 0
        model.train()
        bar = tqdm(range(1, steps + 1), desc="SpaCKLE", disable=not progress, mininterval=1.0)
        for step in bar:
            c = torch.randint(0, train_idx.size, (batch_size,), generator=gen)
            centres = torch.as_tensor(train_idx, device=dev)[c.to(dev)]
            e, obs, pad = gather_neighbourhoods(xt, mt, nt, centres)
            r = (torch.rand((batch_size, n_tokens, n_genes), generator=gen).to(dev) < pt) & obs
            hidden = r | ~obs if train_input == "zeroed" else r | pad[..., None]
            pred = model((e - off).masked_fill(hidden | pad[..., None], 0.0), pad)
            loss = _masked_loss(pred, e, ~pad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            row = {"step": step, "train_loss": loss.item(), "val_mse": np.nan}
            if step % val_every == 0 or step == steps:
                row["val_mse"] = validate(model)
                if row["val_mse"] < best:
                    best, best_step = row["val_mse"], step
                    best_state = copy.deepcopy(model.state_dict())
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_mse=f"{row['val_mse']:.3f}")
            rows.append(row)
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    model.meta = dict(
        layer=layer, var_names=list(map(str, adata.var_names)), n_neighbors=n_neighbors,
        radius=radius, train_input=train_input, centre=centre, mask_fraction=mask_fraction,
        best_val_mse=float(best), best_step=int(best_step), val_split=val_name,
        steps=int(steps), seed=int(seed), device=str(dev),
        train_time_s=time.perf_counter() - t0, dataset=adata.uns.get("dataset", {}).get("key"),
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"config": model.config, "meta": model.meta, "state_dict": model.state_dict()},
                   out_dir / "spackle.pt")
    return model, pd.DataFrame(rows)


def load_spackle(path: str | Path) -> SpaCKLE:
    """Load a checkpoint written by :func:`train_spackle` (``out_dir/spackle.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SpaCKLE checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(ckpt["config"])
    model = SpaCKLE(cfg.pop("n_genes"), **cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.meta = ckpt["meta"]
    return model.eval()
