"""Datasets, loaders and image transforms of the common trainer.

Introduced in ``notebooks/04_patch_models.py``.

Patches stay uint8 ``(n, 224, 224, 3)`` arrays outside the AnnData (an ``np.memmap`` from
:func:`spared_lib.preprocessing.extract_patches` is read lazily, row by row). Loaders
hand out uint8 images; conversion to float, ImageNet normalisation and augmentation
happen on the model's device after transfer (:func:`to_model_input`), which moves 4×
fewer bytes and lets a GPU do the work.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from spared_lib.preprocessing import IMAGENET_MEAN, IMAGENET_STD, first_ring, slide_codes


# --------------------------------------------------------------------------- images
def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` → float ``(B, 3, H, W)`` with ImageNet mean/std."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_dihedral(x: torch.Tensor) -> torch.Tensor:
    """Apply an independent random symmetry of the square to each image of ``(B, C, H, W)``.

    A random transpose followed by random horizontal and vertical flips reaches each of
    the 8 symmetries (the 4 rotations by 90° and their mirror images) with probability
    1/8, which is the flips + 90°-rotations augmentation of SPEC §2.11.
    """
    b = x.shape[0]
    # torch's global RNG: seeded by lightning's seed_everything, so CPU runs repeat exactly
    coins = torch.rand((3, b), device=x.device) < 0.5
    view = (b, 1, 1, 1)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(coins[0].view(view), x.transpose(-1, -2), x)
    x = torch.where(coins[1].view(view), x.flip(-1), x)
    return torch.where(coins[2].view(view), x.flip(-2), x)


def to_model_input(batch: dict, augment: bool) -> dict:
    """Turn a loader batch into the model's batch dict (see :mod:`spared_lib.models.base`)."""
    out = dict(batch)
    img = normalise(batch["image"])
    out["image"] = random_dihedral(img) if augment else img
    return out


# --------------------------------------------------------------------------- targets
@dataclass
class Targets:
    """Everything the trainer reads from a preprocessed AnnData, as plain arrays.

    Attributes
    ----------
    layer
        Evaluation layer (log1p space), e.g. ``'c_d_log1p'`` or ``'c_t_log1p'``.
    y
        ``(n, G)`` float32 truth in log1p space (what metrics compare against).
    target
        ``(n, G)`` float32 training target in the model's space (``y`` or its Δ).
    offset
        ``(G,)`` float32 added to predictions to return to log1p space (zeros unless Δ).
    mask
        ``(n, G)`` bool observed entries.
    """

    layer: str
    y: np.ndarray
    target: np.ndarray
    offset: np.ndarray
    mask: np.ndarray


def _dense(a) -> np.ndarray:
    return np.asarray(a.toarray() if hasattr(a, "toarray") else a)


def read_targets(adata, layer: str, uses_deltas: bool) -> Targets:
    """Read the target layer (and its Δ version for Δ models) with clear errors.

    Parameters
    ----------
    adata
        Output of :func:`spared_lib.preprocessing.preprocess` (and, for ``c_t_*``,
        :func:`spared_lib.completion.complete`).
    layer
        A log1p layer, e.g. ``'c_d_log1p'`` (raw) or ``'c_t_log1p'`` (SpaCKLE-completed).
    uses_deltas
        Train on ``layer.replace('log1p', 'deltas')`` and remember the train means
        ``var['<layer>_avg_exp']`` that turn predictions back into ``layer``.
    """
    if not layer.endswith("log1p"):
        raise ValueError(f"target_layer must be a log1p layer such as 'c_d_log1p' or 'c_t_log1p', got {layer!r}")
    if layer not in adata.layers:
        hint = (" Run spared_lib.completion.complete(adata) first to add the SpaCKLE-completed layers."
                if layer.startswith("c_t") else " Run spared_lib.preprocessing.preprocess(adata, dataset) first.")
        raise KeyError(f"adata.layers has no {layer!r} (available: {sorted(adata.layers)}).{hint}")
    if "mask" not in adata.layers:
        raise KeyError("adata.layers has no 'mask' (True = observed entry); run spared_lib.preprocessing.preprocess")
    y = _dense(adata.layers[layer]).astype(np.float32)
    mask = _dense(adata.layers["mask"]).astype(bool)
    offset = np.zeros(adata.n_vars, np.float32)
    target = y
    if uses_deltas:
        key = f"{layer}_avg_exp"
        if key not in adata.var:
            raise KeyError(f"adata.var has no {key!r}: the Δ model needs the train-split gene means of {layer!r}")
        offset = np.asarray(adata.var[key], dtype=np.float32)
        delta_layer = layer[: -len("log1p")] + "deltas"
        # the stored Δ layer if present, else the same thing computed from its definition
        target = (_dense(adata.layers[delta_layer]).astype(np.float32) if delta_layer in adata.layers
                  else y - offset)
    return Targets(layer, y, target, offset, mask)


def check_patches(patches, n_obs: int):
    """Validate a patch array against the AnnData it should be aligned with."""
    shape = getattr(patches, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"patches must be an (n_obs, H, W, 3) uint8 array, got shape {shape}")
    if shape[0] != n_obs:
        raise ValueError(f"patches has {shape[0]} rows but adata has {n_obs} spots; they must be aligned with adata.obs")
    if getattr(patches, "dtype", None) != np.uint8:
        raise ValueError(f"patches must be uint8 (as extract_patches returns), got {patches.dtype}")
    return patches


# --------------------------------------------------------------------------- spot metadata
def spot_meta(adata) -> dict:
    """Per-spot slide code, array grid position and pixel coordinates as arrays."""
    obs = adata.obs
    slide = slide_codes(adata)[0]
    grid = (obs[["array_row", "array_col"]].to_numpy(np.int64) if {"array_row", "array_col"} <= set(obs)
            else np.zeros((adata.n_obs, 2), np.int64))
    xy = (np.asarray(adata.obsm["spatial"], np.float32) if "spatial" in adata.obsm
          else np.zeros((adata.n_obs, 2), np.float32))
    return {"slide": slide, "grid": grid, "xy": xy}


# --------------------------------------------------------------------------- datasets
class SpotDataset(Dataset):
    """One spot per item: its uint8 patch, target, mask and position (``batching='spot'``)."""

    def __init__(self, patches, targets: Targets, meta: dict, index: np.ndarray):
        self.patches = patches
        self.target = targets.target
        self.mask = targets.mask
        self.meta = meta
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        r = int(self.index[i])
        return {
            # a copy: one row of a read-only memmap is a read-only view, which torch must not wrap
            "image": torch.from_numpy(np.array(self.patches[r])),
            "target": torch.from_numpy(self.target[r]),
            "mask": torch.from_numpy(self.mask[r]),
            "index": torch.tensor(r),
            "slide": torch.tensor(self.meta["slide"][r]),
            "grid": torch.from_numpy(self.meta["grid"][r]),
            "xy": torch.from_numpy(self.meta["xy"][r]),
        }


def contiguous_crops(xy: np.ndarray, rows: np.ndarray, max_spots: int | None) -> list[np.ndarray]:
    """Split the spots ``rows`` of one slide into spatially contiguous crops of ≤ ``max_spots``
    (``None``: the whole slide, one crop).

    Recursive halving along the longer side of the bounding box at the median (a k-d
    split): each crop is a compact rectangle of the slide. The recursion is over crops
    (a few), never over spots.
    """
    if max_spots is None or len(rows) <= max_spots:
        return [rows]
    pts = xy[rows]
    axis = int(np.ptp(pts[:, 0]) < np.ptp(pts[:, 1]))
    order = np.argsort(pts[:, axis], kind="stable")
    half = len(rows) // 2
    return (contiguous_crops(xy, rows[order[:half]], max_spots)
            + contiguous_crops(xy, rows[order[half:]], max_spots))


def local_edge_index(rows: np.ndarray, neighbors: np.ndarray) -> torch.Tensor:
    """Edges among ``rows`` from the global neighbour table, with positions local to ``rows``.

    Returns ``(2, E)`` int64, row 0 = source (neighbour), row 1 = target (spot); the
    graph is made symmetric and has no self-loops.
    """
    n = neighbors.shape[0]
    g2l = np.full(n + 1, -1, dtype=np.int64)  # index n catches the -1 padding
    g2l[rows] = np.arange(len(rows))
    nb = neighbors[rows, 1:]
    src = g2l[np.where(nb >= 0, nb, n)]
    dst = np.broadcast_to(np.arange(len(rows))[:, None], src.shape)
    keep = src >= 0
    e = np.stack([src[keep], dst[keep]])
    e = np.concatenate([e, e[::-1]], axis=1)
    e = np.unique(e[:, e[0] != e[1]], axis=1)
    return torch.from_numpy(np.ascontiguousarray(e))


class SlideDataset(Dataset):
    """One slide, or one contiguous crop of ≤ ``max_spots`` spots, per item (``batching='slide'``)."""

    def __init__(self, patches, targets: Targets, meta: dict, index: np.ndarray, neighbors: np.ndarray,
                 max_spots: int):
        self.patches = patches
        self.targets = targets
        self.meta = meta
        self.neighbors = neighbors
        index = np.asarray(index, dtype=np.int64)
        self.crops = []
        for s in np.unique(meta["slide"][index]):  # a loop over slides, not spots
            rows = index[meta["slide"][index] == s]
            self.crops += contiguous_crops(meta["xy"], rows, max_spots)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> dict:
        rows = self.crops[i]
        # sorted reads are much faster from a memmap
        order = np.argsort(rows)
        rows = rows[order]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self.patches[rows])),
            "target": torch.from_numpy(self.targets.target[rows]),
            "mask": torch.from_numpy(self.targets.mask[rows]),
            "index": torch.from_numpy(rows),
            "slide": torch.from_numpy(self.meta["slide"][rows]),
            "grid": torch.from_numpy(self.meta["grid"][rows]),
            "xy": torch.from_numpy(self.meta["xy"][rows]),
            "edge_index": local_edge_index(rows, self.neighbors),
        }


class StepBatchSampler(Sampler):
    """Micro-batches that add up to whole optimiser steps: ``accumulate`` of them per step, always.

    Each pass draws a permutation of the ``n`` training spots (``torch.randperm`` with
    ``generator``, as a shuffling ``DataLoader`` does, so a step sees the same spots with or
    without accumulation), cuts it into steps of ``step_size`` spots (the last one shorter), and
    splits every step into ``accumulate`` near-equal micro-batches. A loader cutting the permutation
    into micro-batches instead would end a pass on a partial step of fewer micro-batches, and
    Lightning, which counts ``val_check_interval`` in loader batches, would then validate at the
    wrong steps — or never, in a run of a few steps (the full-size rehearsal of chapter 6: ViT-B+Δ
    at 4 × 64 never validated, so it kept no checkpoint for SEPAL's stage 1). A last step of fewer
    than two spots per micro-batch is dropped (BatchNorm cannot train on one spot).

    Introduced in ``notebooks/04_patch_models.py`` (micro-batches), through :func:`make_loader`.
    """

    def __init__(self, n: int, step_size: int, accumulate: int, generator: torch.Generator | None = None):
        if accumulate < 1 or step_size < accumulate:
            raise ValueError(f"need step_size >= accumulate >= 1, got step_size={step_size}, accumulate={accumulate}")
        self.n, self.step_size, self.accumulate, self.generator = int(n), int(step_size), int(accumulate), generator

    def _steps(self) -> int:
        full, rest = divmod(self.n, self.step_size)
        return full + (rest >= 2 * self.accumulate)

    def __len__(self) -> int:
        return self._steps() * self.accumulate

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).numpy()
        for s in range(self._steps()):
            step = order[s * self.step_size:(s + 1) * self.step_size]
            for micro in np.array_split(step, self.accumulate):
                yield micro.tolist()


def make_loader(batching: str, patches, targets: Targets, meta: dict, index, *, batch_size: int,
                train: bool, neighbors=None, max_spots: int = 1024, num_workers: int = 0,
                generator: torch.Generator | None = None, accumulate: int = 1) -> DataLoader:
    """A loader over ``index`` for either batching mode.

    Evaluation loaders keep every spot (no ``drop_last``, no shuffling); training loaders
    shuffle, and drop a last spot batch of one (BatchNorm cannot train on it). A training spot
    loader with ``accumulate`` > 1 micro-batches of ``batch_size`` hands out exactly
    ``accumulate`` of them per optimiser step (:class:`StepBatchSampler`).
    """
    kw = dict(num_workers=num_workers, persistent_workers=num_workers > 0,
              pin_memory=torch.cuda.is_available())
    if batching == "slide":
        if neighbors is None:
            raise ValueError("batching='slide' needs the neighbour table")
        ds = SlideDataset(patches, targets, meta, index, neighbors, max_spots)
        return DataLoader(ds, batch_size=None, shuffle=train, generator=generator, **kw)
    if batching != "spot":
        raise ValueError(f"batching must be 'spot' or 'slide', got {batching!r}")
    ds = SpotDataset(patches, targets, meta, index)
    if train and accumulate > 1:
        sampler = StepBatchSampler(len(ds), batch_size * accumulate, accumulate, generator)
        # the loader draws its base seed from the generator, as a shuffling one does, before the sampler
        return DataLoader(ds, batch_sampler=sampler, generator=generator, **kw)
    drop_last = train and len(ds) % batch_size == 1
    return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=drop_last, generator=generator, **kw)
