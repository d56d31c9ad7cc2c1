"""Hist2ST: conv-mixer + transformer + graph layers over a slide (Zeng et al., 2022).

Per spot, a convolution splits the patch into ``patch × patch`` pixel tiles, depth-wise
conv-mixer blocks mix them, and a 1 × 1 convolution shrinks the channels so that the
flattened map is the spot token (width ``dim``). Learned row/column embeddings are
added and a transformer attends across all spots of the slide (long range); GraphSAGE
layers on the spot adjacency mix neighbours (short range); an LSTM reads the outputs of
the graph layers as a sequence ("jumping knowledge") and their mean is the spot
representation. Besides the MSE head, the original trains

* zero-inflated negative binomial (ZINB) heads on the raw counts (weight 0.25), and
* self-distillation: ``bake`` randomly augmented passes whose predictions, weighted by
  a learned softmax, must match the plain prediction (weight 0.5).

Both are switchable (``zinb=0``, ``bake=0``).

Paper size follows the SpaRED adaptation (``fig_size=224``, tiles of 7 px, 32 channels,
so ``dim = (224/7)² · 32/8 = 4096``; 2 conv-mixer, 8 attention (16 heads of 128), 4 graph
layers; 128 positions): about 0.9 billion parameters, the largest model of the benchmark.
Like the original (biomed-AI/Hist2ST ``HIST2ST_train.py``: ``DataLoader(trainset, batch_size=1)``
over whole slides), a batch is a whole slide (``max_spots=None``); where a slide does not fit
the device's memory (measured by the trainer, :mod:`spared_lib.training.memory`; the ``bake`` augmented passes multiply it) the
trainer cuts it into spatially contiguous crops and records that it did. The original has no
pretrained part, so ``pretrained='imagenet'`` trains from scratch and says so once in a warning.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpotModel, build_configured, check_init_bias, loss_mask, masked_mse
from .graph import scatter_mean
from .histogene import TransformerBlock, grid_positions, warn_no_imagenet

CONFIGS = {
    "paper": dict(fig_size=224, patch=7, channel=32, kernel=5, depth1=2, depth2=8, depth3=4, heads=16,
                  dim_head=128, n_pos=128, dropout=0.2, zinb=0.25, bake=5, lamb=0.5),
    "small": dict(fig_size=32, patch=4, channel=16, kernel=3, depth1=1, depth2=1, depth3=2, heads=2,
                  dim_head=16, n_pos=128, dropout=0.2, zinb=0.25, bake=2, lamb=0.5),
}


def original_n_params(n_genes: int, *, dim_head: int = 128) -> int:
    """Parameters of the SpaRED Hist2ST (ZINB and distillation heads on), layer by layer.

    ``dim_head=128`` is what the SpaRED adaptation passes (``dim_head=n_pos``); the
    biomed-AI original uses 64 (then the model has about 0.76 billion parameters).
    """
    c, k, d, g = 32, 5, 4096, n_genes
    inner = 16 * dim_head
    embed = 3 * c * 7 * 7 + c + 2 * 128 * d
    mixer = 2 * (2 * (c * k * k + c + 2 * c) + (c * c + c + 2 * c))
    down = c * (c // 8) + c // 8
    attn = 8 * (2 * d + d * 3 * inner + inner * d + d + 2 * d + 2 * d * d + 2 * d)
    gnn = 4 * d * d
    lstm = 2 * 4 * (2 * d * d + 2 * d)
    heads = (2 * d + d * g + g) + 3 * (d * g + g) + (d * d + d + d + 1)
    return embed + mixer + down + attn + gnn + lstm + heads


class ConvMixerBlock(nn.Module):
    """Two depth-wise convolutions (residual) then a point-wise convolution."""

    def __init__(self, ch: int, kernel: int):
        super().__init__()
        self.dw = nn.Sequential(
            nn.Conv2d(ch, ch, kernel, groups=ch, padding="same"), nn.BatchNorm2d(ch), nn.GELU(),
            nn.Conv2d(ch, ch, kernel, groups=ch, padding="same"), nn.BatchNorm2d(ch), nn.GELU())
        self.pw = nn.Sequential(nn.Conv2d(ch, ch, 1), nn.GELU(), nn.BatchNorm2d(ch))

    def forward(self, x):
        return self.pw(self.dw(x) + x)


class GraphSAGEMean(nn.Module):
    """Hist2ST's graph layer: mean over the spot and its neighbours, ``ReLU(W ·)``, L2 normalisation."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        loop = torch.arange(n, device=x.device)
        src = torch.cat([edge_index[0], loop])
        dst = torch.cat([edge_index[1], loop])
        agg = scatter_mean(x[src], dst, n)
        return F.normalize(F.relu(agg @ self.weight.T), dim=1)


def zinb_nll(x: torch.Tensor, mean: torch.Tensor, disp: torch.Tensor, pi: torch.Tensor,
             size_factor: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Negative log-likelihood of counts ``x`` under a zero-inflated negative binomial, averaged.

    ``mean`` is scaled by the spot's ``size_factor`` (as in DCA and Hist2ST).
    """
    mean = mean * size_factor.unsqueeze(1)
    t1 = torch.lgamma(disp + eps) + torch.lgamma(x + 1.0) - torch.lgamma(x + disp + eps)
    t2 = (disp + x) * torch.log1p(mean / (disp + eps)) + x * (torch.log(disp + eps) - torch.log(mean + eps))
    nb_case = t1 + t2 - torch.log(1.0 - pi + eps)
    zero_nb = torch.pow(disp / (disp + mean + eps), disp)
    zero_case = -torch.log(pi + (1.0 - pi) * zero_nb + eps)
    return torch.where(x < 1e-8, zero_case, nb_case).mean()


def random_augment(img: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Hist2ST's augmentation on a whole slide at once: grayscale (p=0.1), rotation by an
    angle in [-90°, 90°], horizontal flip (p=0.2); one draw for the whole batch, as in the original."""
    dev = img.device
    u = torch.rand(3, generator=gen).tolist()
    if u[0] < 0.1:
        w = torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=img.dtype).view(1, 3, 1, 1)
        img = (img * w).sum(1, keepdim=True).expand_as(img)
    ang = math.radians(180.0 * u[1] - 90.0)
    rot = torch.tensor([[math.cos(ang), -math.sin(ang), 0.0], [math.sin(ang), math.cos(ang), 0.0]],
                       device=dev, dtype=img.dtype)
    grid = F.affine_grid(rot.expand(img.shape[0], 2, 3), list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, align_corners=False)
    if u[2] < 0.2:
        img = img.flip(-1)
    return img


class Hist2ST(SpotModel):
    """Hist2ST as a :class:`~spared_lib.models.base.SpotModel` (``batching='slide'``).

    Loss: masked MSE + ``zinb`` × ZINB NLL on raw counts + ``lamb`` × distillation MSE.
    The ZINB term needs :meth:`prepare` (it reads ``adata.layers['counts']``).
    """

    batching = "slide"
    optimizer = "adam"

    def __init__(self, n_genes: int, *, fig_size: int, patch: int, channel: int, kernel: int, depth1: int,
                 depth2: int, depth3: int, heads: int, dim_head: int, n_pos: int, dropout: float,
                 zinb: float, bake: int, lamb: float, max_spots: int | None = None,
                 init_bias: str | None = "mean", pretrained=None):
        super().__init__()
        if fig_size % patch or channel % 8:
            raise ValueError("hist2st: fig_size must be a multiple of patch and channel a multiple of 8")
        if pretrained == "imagenet":
            warn_no_imagenet("Hist2ST", "biomed-AI/Hist2ST HIST2ST.py: convolutions trained from scratch")
        dim = (fig_size // patch) ** 2 * channel // 8
        self.fig_size, self.n_pos, self.zinb, self.bake, self.lamb = fig_size, n_pos, zinb, bake, lamb
        self.max_spots = max_spots
        self.init_bias = check_init_bias(init_bias)
        self.patch_embedding = nn.Conv2d(3, channel, patch, patch)
        self.x_embed = nn.Embedding(n_pos, dim)
        self.y_embed = nn.Embedding(n_pos, dim)
        self.dropout = nn.Dropout(dropout)
        self.mixer = nn.Sequential(*[ConvMixerBlock(channel, kernel) for _ in range(depth1)])
        self.down = nn.Sequential(nn.Conv2d(channel, channel // 8, 1), nn.Flatten())
        self.attn = nn.Sequential(*[TransformerBlock(dim, heads, dim_head, dim, dropout) for _ in range(depth2)])
        self.gnn = nn.ModuleList([GraphSAGEMean(dim) for _ in range(depth3)])
        self.jknet = nn.LSTM(dim, dim, 2)
        self.gene_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_genes))
        if zinb > 0:
            self.zinb_mean = nn.Linear(dim, n_genes)
            self.zinb_disp = nn.Linear(dim, n_genes)
            self.zinb_pi = nn.Linear(dim, n_genes)
        if bake > 0:
            self.coef = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self._hidden = None
        self.register_buffer("counts", torch.zeros(0, n_genes), persistent=False)
        self.register_buffer("size_factor", torch.zeros(0), persistent=False)

    def prepare(self, ctx) -> None:
        """Output bias at the train mean; keep the raw counts of the genes and per-spot size factors
        for the ZINB term."""
        super().prepare(ctx)
        if self.zinb <= 0:
            return
        layers = ctx.adata.layers
        if "counts" not in layers:
            raise ValueError("hist2st: the ZINB loss needs adata.layers['counts'] (raw counts of the selected "
                             "genes); preprocess the data first or build with zinb=0")
        counts = torch.as_tensor(_dense(layers["counts"]), dtype=torch.float32)
        lib = counts.sum(1)
        med = lib[torch.as_tensor(ctx.train_index)].median().clamp_min(1.0)
        self.counts = counts.to(self.counts.device)
        self.size_factor = (lib / med).clamp_min(1e-3).to(self.counts.device)

    def output_layer(self) -> nn.Linear:
        return self.gene_head[-1]

    def encode(self, batch: dict, image: torch.Tensor | None = None) -> torch.Tensor:
        """Spot representations ``(N, dim)`` of a slide (or crop)."""
        img = batch["image"] if image is None else image
        if img.shape[-1] != self.fig_size:
            img = F.interpolate(img, size=(self.fig_size, self.fig_size), mode="bilinear", align_corners=False)
        grid = grid_positions(batch, self.n_pos)
        x = self.down(self.mixer(self.dropout(self.patch_embedding(img))))
        g = self.attn((x + self.x_embed(grid[:, 1]) + self.y_embed(grid[:, 0])).unsqueeze(0)).squeeze(0)
        jk = []
        for layer in self.gnn:
            g = layer(g, batch["edge_index"])
            jk.append(g)
        out, _ = self.jknet(torch.stack(jk))  # the graph layers as a length-depth3 sequence
        return out.mean(0)

    def forward(self, batch: dict) -> torch.Tensor:
        h = self.encode(batch)
        # kept for the auxiliary heads in loss(); only while training
        self._hidden = h if self.training else None
        return self.gene_head(h)

    def loss(self, batch: dict, pred: torch.Tensor) -> torch.Tensor:
        total = masked_mse(pred, batch["target"], loss_mask(batch))
        h = self._hidden
        if self.zinb > 0 and h is not None:
            if self.counts.shape[0] == 0:
                raise RuntimeError("hist2st: call prepare(ctx) before training with zinb > 0")
            idx = batch["index"]
            # lgamma and the likelihood in float32 even under mixed precision
            with torch.autocast(device_type=h.device.type, enabled=False):
                hf = h.float()
                m = torch.exp(self.zinb_mean(hf)).clamp(1e-5, 1e6)
                d = F.softplus(self.zinb_disp(hf)).clamp(1e-4, 1e4)
                p = torch.sigmoid(self.zinb_pi(hf))
                total = total + self.zinb * zinb_nll(self.counts[idx].to(h.device), m, d, p,
                                                     self.size_factor[idx].to(h.device))
        if self.bake > 0 and self.training:
            preds, weights = [], []
            for _ in range(self.bake):
                ha = self.encode(batch, random_augment(batch["image"]))
                preds.append(self.gene_head(ha))
                weights.append(self.coef(ha))
            w = torch.softmax(torch.stack(weights), dim=0)  # (bake, N, 1)
            distilled = (torch.stack(preds) * w).sum(0)
            total = total + self.lamb * F.mse_loss(distilled, pred)
        return total


def _dense(x):
    return x.toarray() if hasattr(x, "toarray") else x


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> Hist2ST:
    """Build Hist2ST (``size='paper'`` or ``'small'``; keyword arguments override the configuration,
    e.g. ``zinb=0, bake=0`` to train with the MSE only, plus ``init_bias`` and ``max_spots``).
    ``pretrained``: ``None``; ``'imagenet'`` (from scratch, with a warning: the original has no
    pretrained part); or a path to a checkpoint of this model.

    Introduced in ``notebooks/05_context_models.py``.
    """
    return build_configured(Hist2ST, name, n_genes, CONFIGS, size, pretrained, kw,
                            extra=("init_bias", "max_spots"))
