"""BLEEP: a joint image–expression embedding learned contrastively (Xie et al., NeurIPS 2023).

An image encoder (ResNet-50, trained) and a projection head map a patch to a 256-d
embedding; a second projection head maps the spot's expression to the same space. The
CLIP-style loss uses *soft* targets: the softmax of the average of the image–image and
expression–expression similarities, so that spots that look alike or express alike are
not pushed apart. Prediction is retrieval: the mean expression of the 50 training spots
whose expression embeddings are nearest (cosine) to the patch's image embedding.

``pretrained='imagenet'`` starts the ResNet-50 from torchvision's ImageNet weights; the original
uses timm's (bowang-lab/BLEEP ``modules.py``: ``timm.create_model('resnet50', pretrained=True,
num_classes=0)``): the same architecture, a different ImageNet training run. BLEEP has no output
layer (it predicts averages of training targets, already on the data's scale), so it takes no
``init_bias``.

The retrieval database holds training spots only (``FitContext.train_index``); their
embeddings are recomputed with the current weights at every :meth:`predict` call, so
they never go stale during training.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import SpotModel, build_configured
from .egn import FEATURE_DIM, resnet_trunk

CONFIGS = {
    "paper": dict(backbone="resnet50", projection_dim=256, dropout=0.1, temperature=1.0, top_k=50, image_px=224),
    "small": dict(backbone="resnet10", projection_dim=64, dropout=0.1, temperature=1.0, top_k=50, image_px=32),
}


def original_n_params(n_genes: int) -> int:
    """Trainable parameters of the original BLEEP (timm ResNet-50 without classifier + two heads)."""
    resnet50 = 23_508_032  # torchvision / timm ResNet-50 without the fc layer

    def head(d_in, p=256):
        return d_in * p + p + p * p + p + 2 * p

    return resnet50 + head(2048) + head(n_genes)


class ProjectionHead(nn.Module):
    """``Linear → GELU → Linear → Dropout``, residual to the first projection, then LayerNorm."""

    def __init__(self, d_in: int, d_out: int, dropout: float):
        super().__init__()
        self.projection = nn.Linear(d_in, d_out)
        self.fc = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x):
        p = self.projection(x)
        return self.norm(self.dropout(self.fc(F.gelu(p))) + p)


def soft_clip_loss(img: torch.Tensor, spot: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """BLEEP's contrastive loss with soft targets from within-modality similarities."""
    logits = spot @ img.T / temperature
    targets = torch.softmax((img @ img.T + spot @ spot.T) / 2 * temperature, dim=-1)
    spots_loss = -(targets * logits.log_softmax(-1)).sum(1)
    images_loss = -(targets.T * logits.T.log_softmax(-1)).sum(1)
    return ((spots_loss + images_loss) / 2).mean()


class BLEEP(SpotModel):
    """BLEEP as a :class:`~spared_lib.models.base.SpotModel`.

    :meth:`forward` returns the image embeddings ``(B, projection_dim)`` that :meth:`loss`
    contrasts with the expression embeddings of ``batch['target']``; :meth:`predict` returns
    expression ``(B, G)`` by retrieval.
    """

    optimizer = "adamw"

    def __init__(self, n_genes: int, *, backbone: str, projection_dim: int, dropout: float, temperature: float,
                 top_k: int, image_px: int, pretrained=None, verbose: bool = True):
        super().__init__()
        self.temperature, self.top_k, self.image_px = temperature, top_k, image_px
        self.image_encoder = resnet_trunk(backbone, pretrained, verbose)
        self.image_projection = ProjectionHead(FEATURE_DIM[backbone], projection_dim, dropout)
        self.spot_projection = ProjectionHead(n_genes, projection_dim, dropout)
        self.register_buffer("db_target", torch.zeros(0, n_genes), persistent=False)

    def prepare(self, ctx) -> None:
        """The retrieval database: targets of the training spots only."""
        super().prepare(ctx)
        train = np.asarray(ctx.train_index, dtype=np.int64)
        if train.size == 0:
            raise ValueError("bleep: no training spots for the retrieval database")
        self.db_target = torch.as_tensor(np.asarray(ctx.target)[train], dtype=torch.float32,
                                         device=self.db_target.device)

    def embed_image(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] != self.image_px:
            image = F.interpolate(image, size=(self.image_px, self.image_px), mode="bilinear", align_corners=False)
        return self.image_projection(self.image_encoder(image).flatten(1))

    def forward(self, batch: dict) -> torch.Tensor:
        return self.embed_image(batch["image"])

    def loss(self, batch: dict, pred: torch.Tensor) -> torch.Tensor:
        spot = self.spot_projection(batch["target"])
        return soft_clip_loss(pred, spot, self.temperature)

    @torch.no_grad()
    def predict(self, batch: dict) -> torch.Tensor:
        if self.db_target.shape[0] == 0:
            raise RuntimeError("bleep: call model.prepare(ctx) before predict (the retrieval database is empty)")
        img = F.normalize(self.embed_image(batch["image"]), dim=-1)
        db = F.normalize(self.spot_projection(self.db_target), dim=-1)
        k = min(self.top_k, db.shape[0])
        nearest = (img @ db.T).topk(k, dim=1).indices  # (B, k)
        return self.db_target[nearest].mean(1)


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> BLEEP:
    """Build BLEEP. ``pretrained='imagenet'`` initialises the ResNet with torchvision's ImageNet weights;
    a path loads a checkpoint of this model.

    Introduced in ``notebooks/05_context_models.py``.
    """
    return build_configured(BLEEP, name, n_genes, CONFIGS, size, pretrained, kw)
