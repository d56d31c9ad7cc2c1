"""HisToGene: a whole slide as one sequence of spot tokens (Pang et al., 2021).

Each spot's patch is flattened and linearly embedded, learned row and column
embeddings of its array position are added, and a ViT-style transformer encoder
(pre-norm, 8 layers, 16 heads in the paper) attends across *all spots of the slide*,
so every prediction can use the whole tissue as context. A layer norm and a linear
layer map each token to the genes.

Paper size follows the SpaRED adaptation of the original code: flattened
224 × 224 × 3 patches, width 1024, 8 layers, 16 heads of 64, MLP 2048, dropout 0.1,
128 position embeddings per axis. The patch embedding alone is 3·224²·1024 ≈ 154 M
weights, most of the model.

Like the original (maxpmx/HisToGene ``vis_model.py`` class ``HisToGene``, trained one slide
per batch on ``ViT_HER2ST``; SpaRED's adaptation danielaruizl1/HisToGene_spared
``main_histogene_spared.py`` uses ``DataLoader(batch_size=1)`` over slides), a batch is a
whole slide: ``max_spots=None``. Attention uses
:func:`torch.nn.functional.scaled_dot_product_attention` (memory-efficient kernels on GPU, no
N × N matrix kept for backward); where a slide does not fit the device's memory
(measured by the trainer: :mod:`spared_lib.training.memory`) the trainer cuts it into spatially contiguous crops and records
that it did.

The original has no pretrained part (the patch embedding is a linear layer trained from
scratch), so ``pretrained='imagenet'`` trains from scratch, and says so once in a warning.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import warnings

from .base import SpotModel, build_configured, check_init_bias

CONFIGS = {
    "paper": dict(patch_px=224, dim=1024, depth=8, heads=16, dim_head=64, mlp_dim=2048, n_pos=128, dropout=0.1),
    "small": dict(patch_px=16, dim=64, depth=2, heads=4, dim_head=16, mlp_dim=128, n_pos=128, dropout=0.1),
}


def original_n_params(n_genes: int, n_pos: int = 128) -> int:
    """Parameter count of the original HisToGene as configured in SpaRED, layer by layer.

    From the original code: ``Linear(3·224·224, 1024)``, two ``Embedding(n_pos, 1024)``,
    8 × [LayerNorm, qkv ``Linear(1024, 3·16·64, bias=False)``, ``Linear(1024, 1024)``,
    LayerNorm, ``Linear(1024, 2048)``, ``Linear(2048, 1024)``], head LayerNorm + ``Linear(1024, G)``.
    """
    d, inner, mlp, p = 1024, 16 * 64, 2048, 3 * 224 * 224
    layer = 2 * d + d * 3 * inner + inner * d + d + 2 * d + d * mlp + mlp + mlp * d + d
    return p * d + d + 2 * n_pos * d + 8 * layer + 2 * d + d * n_genes + n_genes


class Attention(nn.Module):
    """Multi-head self-attention with a bias-free qkv projection (the vit-pytorch layout)."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Sequential):
    """``Linear → GELU → Dropout → Linear → Dropout``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


class PreNorm(nn.Module):
    """Apply ``fn`` to the layer-normalised input."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, *args, **kw):
        return self.fn(self.norm(x), *args, **kw)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN x)`` then ``x + FF(LN x)``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head, dropout))
        self.ff = PreNorm(dim, FeedForward(dim, mlp_dim, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(x) + x
        return self.ff(x) + x


_WARNED: set = set()


def warn_no_imagenet(model: str, source: str) -> None:
    """Say once per process that ``model`` has no ImageNet weights and trains from scratch."""
    if model not in _WARNED:
        _WARNED.add(model)
        warnings.warn(f"{model}: the original has no ImageNet-pretrained part ({source}); pretrained='imagenet' "
                      "trains it from scratch, as the original does", stacklevel=3)


def grid_positions(batch: dict, n_pos: int) -> torch.Tensor:
    """``(N, 2)`` array (row, col) of the batch, checked against the embedding table size."""
    grid = batch["grid"].long()
    if grid.numel() and (grid.min() < 0 or grid.max() >= n_pos):
        raise ValueError(
            f"array_row/array_col range {int(grid.min())}..{int(grid.max())} does not fit the model's "
            f"{n_pos} position embeddings; build the model with n_pos={int(grid.max()) + 1}")
    return grid


class HisToGene(SpotModel):
    """HisToGene as a :class:`~spared_lib.models.base.SpotModel` (``batching='slide'``)."""

    batching = "slide"
    optimizer = "adam"

    def __init__(self, n_genes: int, *, patch_px: int, dim: int, depth: int, heads: int, dim_head: int,
                 mlp_dim: int, n_pos: int, dropout: float, max_spots: int | None = None,
                 init_bias: str | None = "mean", pretrained=None):
        super().__init__()
        if pretrained == "imagenet":
            warn_no_imagenet("HisToGene", "maxpmx/HisToGene vis_model.py: a linear patch embedding")
        self.patch_px, self.n_pos = patch_px, n_pos
        self.max_spots = max_spots
        self.init_bias = check_init_bias(init_bias)
        self.patch_embedding = nn.Linear(3 * patch_px * patch_px, dim)
        self.x_embed = nn.Embedding(n_pos, dim)
        self.y_embed = nn.Embedding(n_pos, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])
        self.gene_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))

    def output_layer(self) -> nn.Linear:
        return self.gene_head[-1]

    def forward(self, batch: dict) -> torch.Tensor:
        img = batch["image"]
        if img.shape[-1] != self.patch_px:
            # 'small' size: average-pool the patch before flattening (CPU fast mode)
            img = F.interpolate(img, size=(self.patch_px, self.patch_px), mode="area")
        grid = grid_positions(batch, self.n_pos)
        # the spots of one slide form one sequence (batch dimension 1)
        tokens = self.patch_embedding(img.flatten(1)) + self.x_embed(grid[:, 1]) + self.y_embed(grid[:, 0])
        h = self.blocks(self.dropout(tokens).unsqueeze(0)).squeeze(0)
        return self.gene_head(h)


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> HisToGene:
    """Build HisToGene (``size='paper'`` or ``'small'``; keyword arguments override the configuration,
    plus ``init_bias`` and ``max_spots``). ``pretrained``: ``None``; ``'imagenet'`` (from scratch, with a
    warning: the original has no pretrained part); or a path to a checkpoint of this model.

    Introduced in ``notebooks/05_context_models.py``.
    """
    return build_configured(HisToGene, name, n_genes, CONFIGS, size, pretrained, kw,
                            extra=("init_bias", "max_spots"))
