"""Patch models: one H&E patch in, one gene vector out (ShuffleNet, ViT-B, ViT-B+Δ, ST-Net).

Introduced in ``notebooks/04_patch_models.py``.

All four are a torchvision backbone followed by one linear layer to the G genes:

============  =====================  ==========================================
name          backbone               what differs
============  =====================  ==========================================
shufflenet    ShuffleNetV2 x0.5      MSE, Adam
vit_b         ViT-B/16               MSE, Adam
vit_b_delta   ViT-B/16               trains on Δ = expression − train mean
stnet         DenseNet-121           head starts at zero weights; SGD momentum
                                     0.9; 8-symmetry TTA
============  =====================  ==========================================

Every non-Δ head starts its bias at the train-split mean of the target (``init_bias='mean'``,
:mod:`spared_lib.models.base`); ST-Net's original does exactly this with zero weights
(bryanhe/ST-Net ``stnet/cmd/run_spatial.py``), so an untrained ST-Net predicts the training mean.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbones import build_backbone, check_pretrained, load_checkpoint, log
from .base import SpotModel, check_init_bias

_CONFIG = {
    # name: (backbone, uses_deltas, test_time_augmentation, optimizer, zero_head)
    "shufflenet": ("shufflenet_v2_x0_5", False, False, "adam", False),
    "vit_b": ("vit_b_16", False, False, "adam", False),
    "vit_b_delta": ("vit_b_16", True, False, "adam", False),
    "stnet": ("densenet121", False, True, "sgd", True),
}


class PatchRegressor(SpotModel):
    """Backbone features → ``Linear(D, G)``.

    Parameters
    ----------
    backbone
        Module mapping ``(B, 3, H, W)`` images to ``(B, D)`` features.
    feat_dim
        D.
    n_genes
        G, the number of predicted genes.
    zero_head
        ST-Net's initialisation: zero weights, so that (with ``init_bias='mean'``) training starts
        from the mean predictor.
    init_bias
        ``'mean'``: :meth:`prepare` sets the bias to the train mean of the target (all entries);
        ``None``: plain init. Default: ``'mean'``, except Δ models (their target is centred).

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, n_genes: int, *, name: str = "patch",
                 uses_deltas: bool = False, test_time_augmentation: bool = False,
                 optimizer: str = "adam", zero_head: bool = False, init_bias: str | None = "auto"):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, n_genes)
        self.uses_deltas = uses_deltas
        self.test_time_augmentation = test_time_augmentation
        self.optimizer = optimizer
        self.zero_head = zero_head
        self.init_bias = check_init_bias((None if uses_deltas else "mean") if init_bias == "auto" else init_bias)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def output_layer(self) -> nn.Linear:
        return self.head

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, D)``; other models reuse it as a patch encoder."""
        return self.backbone(image)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone(batch["image"]))


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> PatchRegressor:
    """Build ``shufflenet``, ``vit_b``, ``vit_b_delta`` or ``stnet`` (see the module docstring).

    Extra keywords override the table's settings (``uses_deltas``, ``test_time_augmentation``,
    ``optimizer``, ``zero_head``, ``init_bias``), e.g. to compare ST-Net with and without test-time
    averaging; ``image_size`` (default 224) sets the ViT's input size and ``verbose=False``
    silences the weights message (logged at INFO). ``pretrained``: ``None``, ``'imagenet'`` (the backbone's
    torchvision weights) or a path to a checkpoint of this model
    (:func:`spared_lib.models.backbones.load_checkpoint`).

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    if name not in _CONFIG:
        raise ValueError(f"spared_lib.models.patch builds {sorted(_CONFIG)}, not {name!r}")
    arch, deltas, tta, opt, zero = _CONFIG[name]
    settings = dict(uses_deltas=deltas, test_time_augmentation=tta, optimizer=opt, zero_head=zero, init_bias="auto")
    unknown = set(kw) - set(settings) - {"verbose", "image_size"}
    if unknown:
        raise TypeError(f"build({name!r}): unexpected keyword(s) {sorted(unknown)}; allowed: {sorted(settings)}")
    verbose = kw.pop("verbose", True)
    image_size = kw.pop("image_size", 224)
    settings.update(kw)
    weights = check_pretrained(pretrained)
    from_checkpoint = weights not in (None, "imagenet")
    backbone, dim = build_backbone(arch, pretrained=None if from_checkpoint else weights, size=size,
                                   verbose=verbose and not from_checkpoint, image_size=image_size)
    model = PatchRegressor(backbone, dim, n_genes, name=name, **settings)
    if from_checkpoint:
        load_checkpoint(model, weights)
        if verbose:
            log.info("%s (%s): checkpoint %s", name, size, weights)
    return model
