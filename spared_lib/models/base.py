"""The contract every prediction model in :mod:`spared_lib.models` follows.

The common trainer (:func:`spared_lib.training.fit`) only talks to models through
this interface, so that patch models (ShuffleNet, ViT-B, ST-Net), neighbourhood
models (SEPAL, EGGN), exemplar and retrieval models (EGN, BLEEP) and slide models
(HisToGene, Hist2ST) share one loop, one set of metrics and one checkpoint rule.

Introduced in ``notebooks/04_patch_models.py``.

Batches
-------
A batch is a ``dict`` of tensors on the model's device:

``image``   float32 ``(B, 3, 224, 224)``, ImageNet-normalised (augmented when training).
``target``  float32 ``(B, G)``, the training target in the model's space
            (``c_d_log1p``/``c_t_log1p``, or their ``*_deltas`` when ``uses_deltas``).
``mask``    bool ``(B, G)``, True where the entry was observed (``layers['mask']``): metrics
            and validation MSE use only these entries (SPEC §5).
``loss_mask`` bool ``(B, G)``, optional: the entries the training loss may use. Absent (the
            default), the loss covers every entry of the target, as the original trainer does:
            that is what makes training on median- or SpaCKLE-completed targets differ. The
            trainer sets it to ``mask`` when asked for an observed-only loss (the original's
            ``robust_loss``).
``index``   int64 ``(B,)``, row positions of the spots in the AnnData.
``slide``   int64 ``(B,)``, slide code (position in ``adata.obs['slide_id'].cat.categories``).
``grid``    int64 ``(B, 2)``, ``obs[['array_row', 'array_col']]``.
``xy``      float32 ``(B, 2)``, ``obsm['spatial']`` (full-resolution pixels).

When ``batching == 'slide'`` a batch holds the spots of one slide (or of one
spatially contiguous crop of at most ``max_spots`` spots) and also
``edge_index`` int64 ``(2, E)``: the spot adjacency with positions local to the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

try:  # torch is a hard dependency, but keep this module importable for docs tools
    import torch
    from torch import nn
except ImportError:  # pragma: no cover
    torch = None
    nn = None


@dataclass
class FitContext:
    """What a model may look at before training starts (:meth:`SpotModel.prepare`).

    Only ``train_index`` rows may feed a memory bank, exemplar set or retrieval
    database: validation and test spots are never used for that.

    Attributes
    ----------
    adata
        The preprocessed AnnData (all splits).
    patches
        Array-like ``(n_obs, 224, 224, 3)`` uint8 aligned with ``adata.obs``.
    target
        ``(n_obs, G)`` float32 targets in the model's space (deltas for Δ models).
    mask
        ``(n_obs, G)`` bool, observed entries.
    train_index
        Row positions of the training spots.
    neighbors
        ``(n_obs, K)`` int64 positions of each spot's spatial neighbours in its own
        slide (1-hop for hex grids: K = 6 plus the spot itself at column 0), -1 = padding.
    device
        The device the model will train on.
    encode
        ``encode(module, index) -> Tensor``: runs ``module`` over the (un-augmented,
        normalised) patches of ``index`` in batches without gradients and returns the
        concatenated outputs on CPU. Use it to precompute frozen features.
    """

    adata: Any
    patches: Any
    target: np.ndarray
    mask: np.ndarray
    train_index: np.ndarray
    neighbors: np.ndarray
    device: Any
    encode: Callable[..., Any]
    extra: dict = field(default_factory=dict)


class SpotModel(nn.Module if nn is not None else object):
    """Base class of every model built by :func:`spared_lib.models.build_model`.

    Subclasses implement :meth:`forward`; they override :meth:`loss` when the
    original method trains with more than the masked MSE, and :meth:`prepare` when
    they need something computed from the training spots first.
    """

    #: ``'spot'``: batches of independent spots; ``'slide'``: one slide (or crop) a batch.
    batching: Literal["spot", "slide"] = "spot"
    #: Train on ``*_deltas`` and add ``var['<layer>_avg_exp']`` back before metrics.
    uses_deltas: bool = False
    #: Average the prediction over the 8 dihedral symmetries at evaluation.
    test_time_augmentation: bool = False
    #: Optimiser the original used: ``'adam'``, ``'adamw'`` or ``'sgd'`` (momentum 0.9).
    optimizer: str = "adam"
    #: Largest slide crop for ``batching == 'slide'``.
    max_spots: int = 1024

    def prepare(self, ctx: FitContext) -> None:
        """Build whatever the model needs from the training spots (default: nothing)."""

    def forward(self, batch: dict) -> "torch.Tensor":  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: dict, pred: "torch.Tensor") -> "torch.Tensor":
        """Mean squared error over the entries the loss may use (:func:`loss_mask`)."""
        return masked_mse(pred, batch["target"], loss_mask(batch))

    def predict(self, batch: dict) -> "torch.Tensor":
        """Prediction used for metrics; retrieval models override it."""
        return self.forward(batch)


def loss_mask(batch: dict) -> "torch.Tensor":
    """The entries a training loss may use: ``batch['loss_mask']``, else every entry."""
    m = batch.get("loss_mask")
    return m if m is not None else torch.ones_like(batch["target"], dtype=torch.bool)


def masked_mse(pred: "torch.Tensor", target: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean of ``(pred - target)**2`` over the entries where ``mask`` is True."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp_min(1.0)
