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
            default), the loss covers every entry of the target, as the original trainers do
            (``torch.nn.MSELoss`` over the whole target in BCV-Uniandes/SEPAL ``main.py`` and
            ``pretrain_backbone.py``): that is what makes training on median- or SpaCKLE-completed
            targets differ. The trainer sets it to ``mask`` when asked for an observed-only loss
            (``observed_only_loss=True``: our option; no original code restricts its loss so).
``index``   int64 ``(B,)``, row positions of the spots in the AnnData.
``slide``   int64 ``(B,)``, slide code (position in ``adata.obs['slide_id'].cat.categories``).
``grid``    int64 ``(B, 2)``, ``obs[['array_row', 'array_col']]``.
``xy``      float32 ``(B, 2)``, ``obsm['spatial']`` (full-resolution pixels).

When ``batching == 'slide'`` a batch holds the spots of one slide (or of one
spatially contiguous crop of at most ``max_spots`` spots) and also
``edge_index`` int64 ``(2, E)``: the spot adjacency with positions local to the batch.

Output initialisation
---------------------
Targets are log2(TPM + 1) values around 8–12, and a regression head starts near 0: a model
would spend its first hundreds of steps (and a learning-rate search would favour high rates)
only to reach the data's level. So every model with a linear output layer (:meth:`SpotModel.output_layer`)
starts its bias at the train-split mean of its target, computed over **all** training entries
(the loss covers all of them), unless built with ``init_bias=None`` (plain PyTorch init). This is
what ST-Net's original does (bryanhe/ST-Net ``stnet/cmd/run_spatial.py``: ``last.bias.data =
mean_expression``, the mean over all training spots, with zero weights); the other originals train
on targets near 0 instead (HisToGene, Hist2ST: natural-log library-size-normalised expression;
EGN/EGGN: min–max scaled to [0, 1]). Δ models predict deviations from the training mean, so
their target is centred already and they keep plain init.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
    #: Largest slide crop for ``batching == 'slide'``; ``None``: whole slides (the trainer may still
    #: crop where a slide does not fit the device: :mod:`spared_lib.training.memory`).
    max_spots: int | None = None
    #: ``'mean'``: :meth:`prepare` sets the output bias to the train-split mean of the target;
    #: ``None``: plain init (see "Output initialisation" above).
    init_bias: str | None = None

    def output_layer(self) -> "nn.Linear | None":
        """The linear layer that produces the genes (its bias is initialised), or None (retrieval)."""
        return None

    def prepare(self, ctx: FitContext) -> None:
        """Build whatever the model needs from the training spots; subclasses call ``super().prepare(ctx)``.

        Here: the output bias at the train mean of the target when ``init_bias == 'mean'``.
        """
        if self.init_bias == "mean" and self.output_layer() is not None:
            init_output_bias(self.output_layer(), ctx)

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


def train_mean(ctx: FitContext) -> np.ndarray:
    """``(G,)`` mean of the target over **all** training entries (observed or completed)."""
    t = np.asarray(ctx.target)[np.asarray(ctx.train_index, dtype=np.int64)]
    if t.shape[0] == 0:
        raise ValueError("the training split is empty: no train mean to start the output bias from")
    return t.mean(0, dtype=np.float64).astype(np.float32)


def init_output_bias(layer: "nn.Linear", ctx: FitContext) -> None:
    """Set ``layer.bias`` to :func:`train_mean` (see "Output initialisation" in the module docstring)."""
    if layer.bias is None:
        raise ValueError(f"init_bias='mean' needs an output layer with a bias, got {layer}")
    with torch.no_grad():
        layer.bias.copy_(torch.as_tensor(train_mean(ctx), dtype=layer.bias.dtype))


def check_init_bias(init_bias) -> str | None:
    """``'mean'`` or ``None``; anything else is a ``ValueError``."""
    if init_bias not in ("mean", None):
        raise ValueError(f"init_bias must be 'mean' (train-split mean of the target) or None (plain init), "
                         f"got {init_bias!r}")
    return init_bias


def build_configured(cls, name: str, n_genes: int, configs: dict, size: str, pretrained, kw: dict,
                     extra: tuple = ()):
    """Shared builder of the configured models: ``cls(n_genes, **configs[size] | kw)``.

    ``kw`` may override configuration keys and set ``extra`` constructor arguments (and ``verbose``,
    which every builder takes); anything else is a ``TypeError`` listing what is allowed. ``pretrained`` (``None``/``'imagenet'``/a path, see
    :func:`spared_lib.models.backbones.check_pretrained`) is passed to ``cls`` as ``'imagenet'`` or
    ``None``; a checkpoint path is loaded into the built model.
    """
    from .backbones import check_pretrained, load_checkpoint

    import inspect

    if size not in configs:
        raise ValueError(f"{name}: size must be one of {sorted(configs)}, got {size!r}")
    kw = dict(kw)
    verbose = kw.pop("verbose", True)  # every builder takes it; only models with a backbone log weights
    if "verbose" in inspect.signature(cls).parameters:
        kw["verbose"] = verbose
    allowed = set(configs[size]) | set(extra) | {"verbose"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(f"build({name!r}): unexpected keyword(s) {unknown}; allowed: {sorted(allowed)}")
    weights = check_pretrained(pretrained)
    model = cls(n_genes, **{**configs[size], **kw}, pretrained=None if isinstance(weights, Path) else weights)
    if isinstance(weights, Path):
        load_checkpoint(model, weights)
    return model
