"""SEPAL: refine a ViT-B+Δ with a graph over each spot's first ring (Mejia et al., ICCV-W 2023).

Stage 1 is ViT-B+Δ (:mod:`spared_lib.models.patch`), trained on Δ = expression − train mean.
Stage 2 freezes it and, as published (BCV-Uniandes/SEPAL ``models.py`` class ``st_network`` with
``configs/models/best_sepal_visium.json``; the graphs of ``datasets.py``
``get_graph_dataloaders`` with ``n_hops=1``):

* nodes: the spot and its first ring of neighbours (7 on a hex grid), edges: the adjacency among
  them; each node's feature is the frozen ViT's 768-d embedding (its head replaced by the
  identity: ``compute_patches_embeddings_and_predictions(preds=False)``) concatenated with a
  768-d sine/cosine code of the node's array position relative to the spot
  (``pos_emb_sum=false``): 1536 values;
* an MLP 1536 → 512 with ELU, two GCN layers 512 → 256 → 128 each followed by ELU;
* SAGPooling with ``ratio=1``: PyG reads an integer ratio as a number of nodes, so the pooling
  keeps the **single** top-scoring node of each graph (score: a GraphConv 128 → 1 over the
  neighbours), multiplied by ``tanh`` of its score;
* a prediction MLP 128 → G that also ends in ELU (the original's ``MLP`` applies its activation
  after every layer, the last included);
* the output is *added* to the frozen ViT's own Δ prediction of the centre spot
  (``pred = gnn_pred + batch_pred`` in ``main.py``). Loss: MSE on Δ.

The position code here is of the offset itself (``spared_lib.models.graph.sinusoidal_2d``); the
original's (``positional_encodings.PositionalEncoding2D``) is of the offset shifted by the dataset's
largest offset, a different but equally fixed code.

Usage, as in the original two stages::

    vit = fit('vit_b_delta', adata, ...)                                       # stage 1
    sep = fit('sepal', adata, model_kwargs={'stage1': vit.checkpoint_path})    # stage 2, ViT frozen

``stage1`` is a trained ViT-B+Δ (the model, or the path of its :func:`spared_lib.training.fit`
checkpoint or state dict). ``pretrained`` means what it means for every model: ``None``;
``'imagenet'`` (without ``stage1``: an *untrained* ViT-B+Δ with ImageNet weights, and a warning
saying so); or a path to a checkpoint of SEPAL itself.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbones import check_pretrained, load_checkpoint
from .base import SpotModel
from .graph import DenseGCNConv, sinusoidal_2d

CONFIGS = {
    "paper": dict(h_pre=512, h_graph=(256, 128)),
    "small": dict(h_pre=64, h_graph=(32, 16)),
}
VIT_B_DELTA_PARAMS = 85_798_656  # torchvision ViT-B/16 without its classification head
VIT_B_DIM = 768


def original_n_params(n_genes: int) -> int:
    """Parameters of the original SEPAL: ViT-B+Δ (stage 1) + the stage-2 graph network, layer by layer."""
    g, e = n_genes, VIT_B_DIM
    vit = VIT_B_DELTA_PARAMS + e * g + g
    pooling = 128 + 1 + 128  # GraphConv(128, 1): lin_rel with bias, lin_root without
    stage2 = (2 * e * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + pooling + (128 * g + g)
    return vit + stage2


class _Stage1Outputs(nn.Module):
    """Embedding ‖ Δ prediction of a ViT-B+Δ for an image tensor (for :meth:`FitContext.encode`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        emb = self.model.features(x)
        return torch.cat([emb, self.model.head(emb)], -1)


class SAGPool(nn.Module):
    """Self-attention graph pooling keeping the top node (PyG ``SAGPooling(ratio=1)``) on dense graphs.

    Score: ``GraphConv(dim, 1)`` = ``lin_rel(Σ neighbours) + lin_root(x)``; output: the feature of the
    highest-scoring real node times ``tanh(score)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.lin_rel = nn.Linear(dim, 1)
        self.lin_root = nn.Linear(dim, 1, bias=False)

    def scores(self, x, adj, node_mask):
        m = node_mask.to(x.dtype)
        a = adj.to(x.dtype) * m.unsqueeze(1) * m.unsqueeze(2)
        return (self.lin_rel(a @ x) + self.lin_root(x)).squeeze(-1)  # (B, K)

    def forward(self, x, adj, node_mask):
        score = self.scores(x, adj, node_mask).masked_fill(~node_mask, float("-inf"))
        top = score.argmax(1)
        rows = torch.arange(x.shape[0], device=x.device)
        return x[rows, top] * torch.tanh(score[rows, top]).unsqueeze(-1)


class SEPAL(SpotModel):
    """SEPAL stage 2 around a frozen stage-1 ViT-B+Δ (``batching='spot'``, ``uses_deltas=True``)."""

    uses_deltas = True
    optimizer = "adam"

    def __init__(self, n_genes: int, stage1: nn.Module, *, h_pre: int, h_graph: tuple[int, int]):
        super().__init__()
        if not (hasattr(stage1, "features") and hasattr(stage1, "head")):
            raise TypeError("sepal: stage1 must be a ViT-B+Δ (build_model('vit_b_delta', ...)) with .features and .head")
        # frozen; stage 2 reads its outputs precomputed in prepare (under eval), never calls it in training
        self.stage1 = stage1
        for p in self.stage1.parameters():
            p.requires_grad_(False)
        self.emb_dim = int(stage1.head.in_features)
        self.act = nn.ELU()
        self.pre = nn.Linear(2 * self.emb_dim, h_pre)
        self.gcn1 = DenseGCNConv(h_pre, h_graph[0])
        self.gcn2 = DenseGCNConv(h_graph[0], h_graph[1])
        self.pool = SAGPool(h_graph[1])
        self.head = nn.Linear(h_graph[1], n_genes)
        self.register_buffer("embeddings", torch.zeros(0, self.emb_dim), persistent=False)
        self.register_buffer("stage1_pred", torch.zeros(0, n_genes), persistent=False)
        self.register_buffer("neighbors", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("grid", torch.zeros(0, 2), persistent=False)

    def prepare(self, ctx) -> None:
        """Frozen stage-1 embeddings and Δ predictions of every spot, the first-ring table and array positions."""
        super().prepare(ctx)
        n = ctx.target.shape[0]
        dev = self.stage1_pred.device
        out = ctx.encode(_Stage1Outputs(self.stage1), np.arange(n)).float().to(dev)
        self.embeddings, self.stage1_pred = out[:, : self.emb_dim], out[:, self.emb_dim:]
        self.neighbors = torch.as_tensor(np.asarray(ctx.neighbors), dtype=torch.long, device=dev)
        obs = ctx.adata.obs
        self.grid = torch.as_tensor(obs[["array_row", "array_col"]].to_numpy(np.float32), device=dev)

    def neighbourhood(self, index: torch.Tensor):
        """Nodes ``(B, K)`` (centre first, -1 = none), node mask and dense adjacency ``(B, K, K)``."""
        nb = self.neighbors[index]
        valid = nb >= 0
        ring = self.neighbors[nb.clamp_min(0)]  # (B, K, K) neighbours of every node
        adj = (ring.unsqueeze(2) == nb.unsqueeze(1).unsqueeze(-1)).any(-1)  # j in ring(i)
        adj = adj & valid.unsqueeze(1) & valid.unsqueeze(2)
        adj = adj | adj.transpose(1, 2)
        adj = adj & ~torch.eye(nb.shape[1], dtype=torch.bool, device=nb.device)
        return nb, valid, adj

    def node_features(self, index: torch.Tensor):
        """``(B, K, 2·768)`` node features (embedding ‖ position code), node mask and adjacency."""
        nb, valid, adj = self.neighbourhood(index)
        node = nb.clamp_min(0)
        rel = self.grid[node] - self.grid[index].unsqueeze(1)
        x = torch.cat([self.embeddings[node], sinusoidal_2d(rel, self.emb_dim)], -1)
        return x * valid.unsqueeze(-1), valid, adj

    def forward(self, batch: dict) -> torch.Tensor:
        if self.stage1_pred.shape[0] == 0:
            raise RuntimeError("sepal: call model.prepare(ctx) first (it computes the frozen ViT outputs)")
        index = batch["index"].to(self.neighbors.device)
        x, valid, adj = self.node_features(index)
        x = self.act(self.pre(x)) * valid.unsqueeze(-1)
        x = self.act(self.gcn1(x, adj, valid))
        x = self.act(self.gcn2(x, adj, valid))
        return self.stage1_pred[index] + F.elu(self.head(self.pool(x, adj, valid)))


def _stage1(stage1, n_genes: int, size: str, pretrained) -> nn.Module:
    from . import build_model

    if isinstance(stage1, nn.Module):
        return stage1
    if isinstance(stage1, (str, os.PathLike)):
        path = check_pretrained(stage1)
        if path == "imagenet":
            raise ValueError("sepal: stage1 is a trained ViT-B+Δ (a model or a checkpoint path), not 'imagenet'")
        return build_model("vit_b_delta", n_genes, pretrained=path, size=size, verbose=False)
    if stage1 is not None:
        raise TypeError(f"sepal: stage1 must be a ViT-B+Δ model or a checkpoint path, got {type(stage1).__name__}")
    weights = None if pretrained not in (None, "imagenet") else pretrained
    model = build_model("vit_b_delta", n_genes, pretrained=weights, size=size, verbose=False)
    on_meta = next(model.parameters()).device.type == "meta"
    if pretrained in (None, "imagenet") and not on_meta:
        warnings.warn("sepal: no trained stage-1 ViT-B+Δ given (stage1=<fit('vit_b_delta') checkpoint or model>): "
                      "stage 2 refines an untrained ViT", stacklevel=3)
    return model


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", stage1=None, **kw) -> SEPAL:
    """Build SEPAL stage 2 around a frozen ViT-B+Δ (see the module docstring for ``stage1`` and ``pretrained``).

    Introduced in ``notebooks/05_context_models.py``.
    """
    if size not in CONFIGS:
        raise ValueError(f"sepal: size must be one of {sorted(CONFIGS)}, got {size!r}")
    kw = {k: v for k, v in kw.items() if k != "verbose"}  # every builder takes it; the stage-1 ViT logs nothing here
    unknown = sorted(set(kw) - set(CONFIGS[size]))
    if unknown:
        raise TypeError(f"build('sepal'): unexpected keyword(s) {unknown}; allowed: {sorted(CONFIGS[size])} and stage1")
    weights = check_pretrained(pretrained)
    model = SEPAL(n_genes, _stage1(stage1, n_genes, size, weights), **{**CONFIGS[size], **kw})
    if weights not in (None, "imagenet"):
        try:
            load_checkpoint(model, weights)
        except ValueError as err:
            raise ValueError(f"{err}. For SEPAL, pretrained= is a checkpoint of SEPAL itself; pass a trained "
                             "ViT-B+Δ as stage1=<its checkpoint or model>") from err
    return model
