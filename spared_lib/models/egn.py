"""EGN: exemplar-guided ViT (Yang et al., WACV 2023), and the exemplar retrieval shared with EGGN.

For every spot, the ``k = 6`` most similar *training* spots in the feature space of a
frozen ImageNet ResNet-50 are its exemplars; their features and expression enter the
network. A ViT encodes the patch (256-px input, 32-px tokens, width 1024, depth 8,
16 heads, MLP 4096); every second block is followed by an exemplar-bridging (EB) block:
the exemplars, projected with their expression, update the spot's query vector with
gated messages, and that query gates the patch tokens (``value = W_x x · σ(W_k q)``).
A class-specific residual-attention pooling of the tokens, concatenated with the query,
feeds a linear head. Loss: MSE + 0.5 (1 − PCC), optimiser AdamW.

Memory bank: only training spots (``FitContext.train_index``). As in the original
(Yan98/EGN ``v1/build_exemplar.py``: the search skips the query's own slide and every slide
outside the training fold; Euclidean distance between frozen ResNet-50 features), a spot's
exemplars come from *other* training slides, so that a training spot sees exemplars of the same
kind as a test spot does: spots of another tissue section. Where a dataset has a single training
slide (the five 10x datasets of SpaRED) there is no other slide; the exemplars then come from
that slide, excluding the spot itself, as SpaRED's adaptation does for all datasets
(danielaruizl1/EGGN_spared ``build_exemplar_spared.py``: the whole training split is the bank and
a training spot drops its nearest match, itself). The price: a training spot's exemplars can be
its tissue neighbours, whose expression is closer to its own than a test spot's exemplars are to
the test spot's, so the exemplars look more informative in training than they are at test time.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spared_lib.preprocessing import slide_codes

from .backbones import build_backbone
from .base import SpotModel, build_configured, check_init_bias, loss_mask, masked_mse
from .histogene import Attention, FeedForward, PreNorm

CONFIGS = {
    "paper": dict(image_size=256, patch=32, dim=1024, depth=8, heads=16, dim_head=64, mlp_dim=4096, bhead=8,
                  bdim=64, bfre=2, player=2, k=6, backbone="resnet50", feature_px=224),
    "small": dict(image_size=32, patch=4, dim=64, depth=2, heads=2, dim_head=16, mlp_dim=128, bhead=2,
                  bdim=16, bfre=2, player=1, k=6, backbone="resnet18", feature_px=32),
}
FEATURE_DIM = {"resnet10": 512, "resnet18": 512, "resnet34": 512, "resnet50": 2048}


def original_n_params(n_genes: int) -> int:
    """Trainable parameters of the original EGN (README configuration; ``mdim=2048``), layer by layer.

    Counts the unused ``to_out`` layer of the original EB block too (it has parameters).
    """
    d, g, m, mlp, inner_b = 1024, n_genes, 2048, 4096, 8 * 64
    embed = 3 * 32 * 32 * d + d + 65 * d
    projector = (m * d + d) + ((m + g) * d + d) + 2 * (2 * d + d * d + d + d * d + d) + (g * d + d)
    block = (2 * d + d * 3 * 1024 + 1024 * d + d) + (2 * d + d * mlp + mlp + mlp * d + d)
    update = (2 * d * 256 + 256 + 256 * 2 * d + 2 * d) + (d * d + d) + 2 * d
    eb = update + (2 * d + d * inner_b + inner_b) + (2 * d + d * 64 * 8 + 64 * 8) + inner_b * d + inner_b * d \
        + (inner_b * d + d)
    pool = d * d + d
    head = 2 * 2 * d + 2 * d * g + g
    return embed + projector + 8 * block + 4 * eb + pool + head


# --------------------------------------------------------------------------- backbone + retrieval
def resnet_trunk(arch: str, pretrained=None, verbose: bool = True) -> nn.Module:
    """A torchvision ResNet without its classifier (pooled features), from the one weights loader.

    ``pretrained``: ``None`` or ``'imagenet'`` (:func:`spared_lib.models.backbones.build_backbone`);
    ``arch='resnet10'`` is the CPU-sized variant (no ImageNet weights).
    """
    return build_backbone(arch, pretrained=pretrained, verbose=verbose)[0]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` (in place) by torchvision's ``FrozenBatchNorm2d``
    with the same statistics and affine values: it normalises with the stored statistics in
    training mode too, so a frozen network behaves the same whatever mode the trainer sets."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.running_mean.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


class FrozenEncoder(nn.Module):
    """Resize to ``px`` then run a frozen backbone (for :meth:`FitContext.encode`).

    No parameter trains and the batch-norm layers are frozen (:func:`freeze_batchnorm`), so the
    encoder needs no special mode: it computes the same features in training and in evaluation.
    """

    def __init__(self, backbone: nn.Module, px: int):
        super().__init__()
        self.backbone, self.px = freeze_batchnorm(backbone), px
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.px:
            x = F.interpolate(x, size=(self.px, self.px), mode="bilinear", align_corners=False)
        return self.backbone(x).flatten(1)


def exemplar_table(features: np.ndarray | torch.Tensor, slide: np.ndarray, train_index: np.ndarray, k: int,
                   chunk: int = 2048, p: float = 2.0) -> np.ndarray:
    """The ``k`` nearest training spots (Minkowski ``p`` distance in ``features``) of every spot.

    Returns ``(n_obs, k)`` int64 positions **into** ``train_index`` (the memory bank). A spot's
    exemplars come from training slides other than its own when at least ``k`` such spots exist
    (always, for validation and test spots, whose slides hold no training spot); otherwise (a single
    training slide) from all training spots except the spot itself — see the module docstring for
    why. ``p=2``: Euclidean (EGN); ``p=1``: L1 (EGGN). Introduced in ``notebooks/05_context_models.py``.
    """
    feats = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    train_index = np.asarray(train_index, dtype=np.int64)
    if train_index.size == 0:
        raise ValueError("exemplar_table: train_index is empty; the memory bank needs training spots")
    slide = torch.as_tensor(np.asarray(slide).astype(np.int64))
    k = min(k, train_index.size - 1) if train_index.size > 1 else 1
    bank = feats[train_index]
    bank_slide = slide[train_index]
    bank_pos = torch.as_tensor(train_index)
    out = []
    for start in range(0, feats.shape[0], chunk):
        q = feats[start:start + chunk]
        rows = torch.arange(start, start + q.shape[0])
        d = torch.cdist(q, bank, p=p)
        same_slide = slide[rows].unsqueeze(1) == bank_slide.unsqueeze(0)
        itself = rows.unsqueeze(1) == bank_pos.unsqueeze(0)
        enough_other = (~same_slide).sum(1, keepdim=True) >= k
        d = d.masked_fill(itself | (same_slide & enough_other), float("inf"))
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out).numpy()


class ExemplarBank(nn.Module):
    """Frozen features of all spots, the training targets and each spot's exemplars (built in ``prepare``)."""

    def __init__(self, n_genes: int, feat_dim: int):
        super().__init__()
        self.register_buffer("features", torch.zeros(0, feat_dim), persistent=False)
        self.register_buffer("bank_target", torch.zeros(0, n_genes), persistent=False)
        self.register_buffer("table", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("train_index", torch.zeros(0, dtype=torch.long), persistent=False)

    def build(self, ctx, encoder: nn.Module, k: int, p: float = 2.0) -> None:
        """Encode every spot once, keep training targets only, and look up exemplars (``p``: distance)."""
        n = ctx.target.shape[0]
        feats = ctx.encode(encoder, np.arange(n)).float()
        slide = slide_codes(ctx.adata)[0]
        train = np.asarray(ctx.train_index, dtype=np.int64)
        dev = self.features.device
        self.features = feats.to(dev)
        self.bank_target = torch.as_tensor(np.asarray(ctx.target)[train], dtype=torch.float32, device=dev)
        self.train_index = torch.as_tensor(train, device=dev)
        self.table = torch.as_tensor(exemplar_table(feats, slide, train, k, p=p), device=dev)

    def lookup(self, index: torch.Tensor):
        """Features ``(B, D)``, exemplar features ``(B, k, D)``, targets ``(B, k, G)`` and bank ids ``(B, k)``."""
        if self.table.shape[0] == 0:
            raise RuntimeError("the exemplar bank is empty: call model.prepare(ctx) before forward")
        index = index.to(self.table.device)
        ex = self.table[index]
        return self.features[index], self.features[self.train_index[ex]], self.bank_target[ex], ex


def pcc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 − mean over genes of Pearson's r`` across the spots of the batch (observed entries only)."""
    m = mask.to(pred.dtype)
    n = m.sum(0).clamp_min(1.0)
    pm = (pred * m).sum(0) / n
    tm = (target * m).sum(0) / n
    pc, tc = (pred - pm) * m, (target - tm) * m
    r = (pc * tc).sum(0) / ((pc.pow(2).sum(0) * tc.pow(2).sum(0)).sqrt() + 1e-8)
    return 1.0 - r.mean()


# --------------------------------------------------------------------------- EGN network
class Projector(nn.Module):
    """Align the spot feature and the exemplars (feature ‖ expression) to the ViT width."""

    def __init__(self, mdim: int, dim: int, n_genes: int, layers: int):
        super().__init__()
        self.proq = nn.Linear(mdim, dim)
        self.proe = nn.Linear(mdim + n_genes, dim)
        self.layers = nn.ModuleList([PreNorm(dim, FeedForward(dim, dim)) for _ in range(layers)])
        self.to_v = nn.Linear(n_genes, dim)

    def forward(self, q, oq, oq_y):
        x = torch.cat([self.proq(q), self.proe(torch.cat([oq, oq_y], -1))], 1)
        for ff in self.layers:
            x = ff(x) + x
        q, oq = x.split([q.shape[1], oq.shape[1]], 1)
        return q, oq, self.to_v(oq_y)


class ExemplarUpdate(nn.Module):
    """Gated update of the query from the exemplars and of the exemplars from the query."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.query = nn.Sequential(nn.Linear(2 * dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * dim))
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, q, k, v):
        value = self.value(v)
        gq, gk = self.query(torch.cat([q - k, k], 2)).chunk(2, 2)
        return (gq.sigmoid() * value).mean(1, keepdim=True) + q, self.norm(gk.sigmoid() * value + k)


class ExemplarBridge(nn.Module):
    """EB block: the exemplar-updated query gates an 8 × 8 token map, per head."""

    def __init__(self, dim: int, heads: int, dim_head: int, side: int = 8):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.side = heads, side
        self.update = ExemplarUpdate(dim, 4 * dim_head)
        self.to_x = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner))
        self.to_k = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, side * side * heads))
        self.to_v = nn.Linear(inner, dim, bias=False)
        self.to_n = nn.Linear(inner, dim, bias=False)

    def forward(self, x, q, oq, oq_v):
        b, t, _ = x.shape
        new_q, new_k = self.update(q, oq, oq_v)
        key = self.to_k(new_q).view(b, self.heads, 1, t)  # one gate map per head
        value = self.to_x(x).view(b, t, self.heads, -1).permute(0, 2, 3, 1) * key.sigmoid()  # (b, h, c, t)
        value = value.permute(0, 3, 1, 2).reshape(b, t, -1)
        x = self.to_v(value) + x
        q = self.to_n(value.mean(1, keepdim=True)) + q
        return x, q, new_k


class CSRA(nn.Module):
    """Class-specific residual attention pooling over tokens (``λ = 0.5``, ``T = 0.1``)."""

    def __init__(self, dim: int, T: float = 0.1, lam: float = 0.5):
        super().__init__()
        self.head = nn.Linear(dim, dim)
        self.T, self.lam = T, lam

    def forward(self, x):
        score = self.head(x)
        att = (score * torch.softmax(score * self.T, dim=1)).sum(1)
        return score.mean(1) + self.lam * att


class EGN(SpotModel):
    """EGN as a :class:`~spared_lib.models.base.SpotModel` (``batching='spot'``, AdamW)."""

    optimizer = "adamw"

    def __init__(self, n_genes: int, *, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 dim_head: int, mlp_dim: int, bhead: int, bdim: int, bfre: int, player: int, k: int,
                 backbone: str, feature_px: int, pretrained=None, init_bias: str | None = "mean",
                 verbose: bool = True):
        super().__init__()
        self.init_bias = check_init_bias(init_bias)
        side = image_size // patch
        if image_size % patch or side != 8:
            raise ValueError("egn: the exemplar-bridging blocks need an 8 x 8 token grid (image_size = 8 * patch)")
        self.image_size, self.patch, self.k = image_size, patch, k
        self.encoder = FrozenEncoder(resnet_trunk(backbone, pretrained, verbose), feature_px)
        mdim = FEATURE_DIM[backbone]
        self.bank = ExemplarBank(n_genes, mdim)
        self.to_patch = nn.Linear(3 * patch * patch, dim)
        self.pos_embedding = nn.Parameter(torch.randn(1, side * side + 1, dim))
        self.projector = Projector(mdim, dim, n_genes, player)
        self.layers = nn.ModuleList()
        for i in range(depth):
            self.layers.append(nn.ModuleList([
                PreNorm(dim, Attention(dim, heads, dim_head)),
                ExemplarBridge(dim, bhead, bdim) if (i + 1) % bfre == 0 else nn.Identity(),
                PreNorm(dim, FeedForward(dim, mlp_dim))]))
        self.pool = CSRA(dim)
        self.head = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, n_genes))

    def output_layer(self) -> nn.Linear:
        return self.head[-1]

    def prepare(self, ctx) -> None:
        """Output bias at the train mean; encode all spots with the frozen ResNet; exemplars from
        training spots only (Euclidean, as Yan98/EGN ``v1/build_exemplar.py``)."""
        super().prepare(ctx)
        self.bank.build(ctx, self.encoder, self.k, p=2.0)

    def forward(self, batch: dict) -> torch.Tensor:
        img = batch["image"]
        if img.shape[-1] != self.image_size:
            img = F.interpolate(img, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        b, p = img.shape[0], self.patch
        tokens = img.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(b, -1, p * p * 3)
        x = self.to_patch(tokens)
        pos = self.pos_embedding[:, : x.shape[1]]
        x = x + pos
        feat, ex_feat, ex_y, _ = self.bank.lookup(batch["index"])
        q, oq, oq_v = self.projector(feat.unsqueeze(1).to(x.dtype), ex_feat.to(x.dtype), ex_y.to(x.dtype))
        for attn, eb, ff in self.layers:
            x = attn(x + pos) + x
            if isinstance(eb, ExemplarBridge):
                x, q, oq = eb(x, q, oq, oq_v)
            x = ff(x) + x
        return self.head(torch.cat([self.pool(x), q.squeeze(1)], 1))

    def loss(self, batch: dict, pred: torch.Tensor) -> torch.Tensor:
        return mse_pcc_loss(batch, pred)


def mse_pcc_loss(batch: dict, pred: torch.Tensor) -> torch.Tensor:
    """EGN's and EGGN's loss: MSE + 0.5 (1 − PCC) over the entries the loss may use (Yan98/EGN
    ``v2/train.py``: ``loss + corrloss * 0.5``)."""
    m = loss_mask(batch)
    return masked_mse(pred, batch["target"], m) + 0.5 * pcc_loss(pred, batch["target"], m)


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> EGN:
    """Build EGN. ``pretrained='imagenet'`` gives the frozen ResNet its ImageNet weights (as the
    original's ``torchvision.models.resnet50(True)``); a path loads a checkpoint of this model.

    Introduced in ``notebooks/05_context_models.py``.
    """
    return build_configured(EGN, name, n_genes, CONFIGS, size, pretrained, kw, extra=("init_bias",))
