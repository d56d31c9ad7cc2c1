"""Patch models: one H&E patch in, one gene vector out (ShuffleNet, ViT-B, ViT-B+Δ, ST-Net).

Introduced in ``notebooks/04_patch_models.py``.

All four are a torchvision backbone followed by one linear layer to the G genes:

============  =====================  ==========================================
name          backbone               what differs
============  =====================  ==========================================
shufflenet    ShuffleNetV2 x0.5      MSE, Adam
vit_b         ViT-B/16               MSE, Adam
vit_b_delta   ViT-B/16               trains on Δ = expression − train mean
stnet         DenseNet-121           head starts at zero weights, bias = train
                                     mean; SGD momentum 0.9; 8-symmetry TTA
============  =====================  ==========================================
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .backbones import build_backbone
from .base import FitContext, SpotModel

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
        ST-Net's initialisation: zero weights, and :meth:`prepare` sets the bias to the
        (masked) training mean of each gene, so training starts from the mean predictor.

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """

    def __init__(self, backbone: nn.Module, feat_dim: int, n_genes: int, *, name: str = "patch",
                 uses_deltas: bool = False, test_time_augmentation: bool = False,
                 optimizer: str = "adam", zero_head: bool = False):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, n_genes)
        self.uses_deltas = uses_deltas
        self.test_time_augmentation = test_time_augmentation
        self.optimizer = optimizer
        self.zero_head = zero_head
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def prepare(self, ctx: FitContext) -> None:
        if not self.zero_head:
            return
        t = np.asarray(ctx.target)[ctx.train_index]
        m = np.asarray(ctx.mask)[ctx.train_index]
        # mean over observed entries, as the loss sees them; 0 for a gene never observed
        mean = (t * m).sum(0) / np.maximum(m.sum(0), 1)
        with torch.no_grad():
            self.head.bias.copy_(torch.as_tensor(mean, dtype=self.head.bias.dtype))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, D)``; other models reuse it as a patch encoder."""
        return self.backbone(image)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone(batch["image"]))


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> PatchRegressor:
    """Build ``shufflenet``, ``vit_b``, ``vit_b_delta`` or ``stnet`` (see the module docstring).

    Extra keywords override the table's settings (``uses_deltas``,
    ``test_time_augmentation``, ``optimizer``, ``zero_head``), e.g. to compare ST-Net
    with and without test-time averaging; ``image_size`` (default 224) sets the ViT's
    input size and ``verbose=False`` silences the weights message.

    Notes
    -----
    Introduced in ``notebooks/04_patch_models.py``.
    """
    if name not in _CONFIG:
        raise ValueError(f"spared_lib.models.patch builds {sorted(_CONFIG)}, not {name!r}")
    arch, deltas, tta, opt, zero = _CONFIG[name]
    settings = dict(uses_deltas=deltas, test_time_augmentation=tta, optimizer=opt, zero_head=zero)
    unknown = set(kw) - set(settings) - {"verbose", "image_size"}
    if unknown:
        raise TypeError(f"build({name!r}): unexpected keyword(s) {sorted(unknown)}; allowed: {sorted(settings)}")
    verbose = kw.pop("verbose", True)
    image_size = kw.pop("image_size", 224)
    settings.update(kw)
    backbone, dim = build_backbone(arch, pretrained=pretrained, size=size, verbose=verbose, image_size=image_size)
    return PatchRegressor(backbone, dim, n_genes, name=name, **settings)
