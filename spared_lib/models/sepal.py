"""SEPAL: refine a ViT-B+Δ with a graph over each spot's first ring (Mejia et al., ICCV-W 2023).

Stage 1 is ViT-B+Δ (:mod:`spared_lib.models.patch`), trained on Δ = expression − train mean.
Stage 2 freezes it. For each spot, a graph of the spot and its first ring of neighbours
(7 nodes on a hex grid) carries, per node, the frozen ViT's Δ prediction concatenated
with a 2-D sinusoidal code of the node's array position relative to the spot. An MLP,
two GCN layers, a pooling to one vector (the nodes weighted by a tanh gate from a
graph convolution, as SAGPooling does) and a linear layer give a correction that is
*added* to the ViT's own prediction of the centre spot. Activations ELU; loss MSE on Δ.

Paper size: MLP 2G → 512, GCN 512 → 256 → 128, head 128 → G (``h_global =
//0,512//512,256,128//128,G`` in the original configuration).

Usage, as in the original two stages::

    vit = fit('vit_b_delta', adata, ...)                      # stage 1
    sep = fit('sepal', adata, pretrained=vit.checkpoint_path)  # stage 2, ViT frozen

``pretrained`` is the stage-1 checkpoint (a :func:`spared_lib.training.fit` checkpoint
or a plain ``state_dict`` of the ViT-B+Δ); ``model_kwargs={'stage1': model}`` passes a
trained stage-1 model directly. Without either, stage 1 is an untrained ViT-B+Δ and a
warning says so.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from .base import SpotModel
from .graph import DenseGCNConv, sinusoidal_2d

CONFIGS = {
    "paper": dict(h_pre=512, h_graph=(256, 128)),
    "small": dict(h_pre=64, h_graph=(32, 16)),
}
VIT_B_DELTA_PARAMS = 85_798_656  # torchvision ViT-B/16 without its classification head


def original_n_params(n_genes: int) -> int:
    """Parameters of the original SEPAL: ViT-B+Δ (stage 1) + the stage-2 graph network."""
    g = n_genes
    vit = VIT_B_DELTA_PARAMS + 768 * g + g
    stage2 = (2 * g * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + (2 * 128 + 1) + (128 * g + g)
    return vit + stage2


def _pos_dim(n_genes: int) -> int:
    return 4 * -(-n_genes // 4)


class _ImageOnly(nn.Module):
    """Run a SpotModel on an image tensor (for :meth:`FitContext.encode`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model({"image": x})


class GatedPool(nn.Module):
    """Pool a small graph to one vector: nodes weighted by ``tanh`` of a graph-convolution score."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin_rel = nn.Linear(dim, 1)
        self.lin_root = nn.Linear(dim, 1, bias=False)

    def forward(self, x, adj, node_mask):
        m = node_mask.to(x.dtype)
        a = adj.to(x.dtype) * m.unsqueeze(1) * m.unsqueeze(2)
        gate = torch.tanh(self.lin_rel(a @ x) + self.lin_root(x)) * m.unsqueeze(-1)
        return (x * gate).sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)


def _load_stage1(stage1: nn.Module, path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    # a fit() checkpoint holds the SpotModel under 'model.'
    state = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k != "target_offset"}
    missing, unexpected = stage1.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "target_offset"]
    if missing or unexpected:
        raise ValueError(f"sepal: {path} is not a ViT-B+Δ checkpoint of this size "
                         f"({len(missing)} missing keys, e.g. {missing[:3]}; {len(unexpected)} unexpected)")


class SEPAL(SpotModel):
    """SEPAL stage 2 around a frozen stage-1 model (``batching='spot'``, ``uses_deltas=True``)."""

    uses_deltas = True
    optimizer = "adam"

    def __init__(self, n_genes: int, stage1: nn.Module, *, h_pre: int, h_graph: tuple[int, int]):
        super().__init__()
        self.stage1 = stage1
        for p in self.stage1.parameters():
            p.requires_grad_(False)
        self.pos_dim = _pos_dim(n_genes)
        self.act = nn.ELU()
        self.pre = nn.Linear(n_genes + self.pos_dim, h_pre)
        self.gcn1 = DenseGCNConv(h_pre, h_graph[0])
        self.gcn2 = DenseGCNConv(h_graph[0], h_graph[1])
        self.pool = GatedPool(h_graph[1])
        self.head = nn.Linear(h_graph[1], n_genes)
        self.register_buffer("stage1_pred", torch.zeros(0, n_genes), persistent=False)
        self.register_buffer("neighbors", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("grid", torch.zeros(0, 2), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.stage1.eval()  # frozen: no dropout, no batch-norm updates
        return self

    def prepare(self, ctx) -> None:
        """Frozen stage-1 Δ predictions of every spot, the first-ring table and array positions."""
        n = ctx.target.shape[0]
        dev = self.stage1_pred.device
        self.stage1_pred = ctx.encode(_ImageOnly(self.stage1), np.arange(n)).float().to(dev)
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

    def forward(self, batch: dict) -> torch.Tensor:
        if self.stage1_pred.shape[0] == 0:
            raise RuntimeError("sepal: call model.prepare(ctx) first (it computes the frozen ViT predictions)")
        index = batch["index"].to(self.neighbors.device)
        nb, valid, adj = self.neighbourhood(index)
        node = nb.clamp_min(0)
        rel = self.grid[node] - self.grid[index].unsqueeze(1)
        x = torch.cat([self.stage1_pred[node], sinusoidal_2d(rel, self.pos_dim)], -1)
        x = self.act(self.pre(x)) * valid.unsqueeze(-1)
        x = self.act(self.gcn1(x, adj, valid))
        x = self.act(self.gcn2(x, adj, valid))
        return self.stage1_pred[index] + self.head(self.pool(x, adj, valid))


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", stage1: nn.Module | None = None,
          **kw) -> SEPAL:
    """Build SEPAL stage 2 around a frozen ViT-B+Δ (see the module docstring for ``pretrained``/``stage1``).

    Introduced in ``notebooks/05_context_models.py``.
    """
    if size not in CONFIGS:
        raise ValueError(f"sepal: size must be one of {sorted(CONFIGS)}, got {size!r}")
    if stage1 is None:
        from . import build_model

        weights_are_stage1 = pretrained not in (None, "imagenet")
        stage1 = build_model("vit_b_delta", n_genes, pretrained=None if weights_are_stage1 else pretrained,
                             size=size, verbose=False)
        if weights_are_stage1:
            _load_stage1(stage1, pretrained)
        elif next(stage1.parameters()).device.type != "meta":
            warnings.warn("sepal: no trained stage-1 ViT-B+Δ given (pretrained=<checkpoint of fit('vit_b_delta')> "
                          "or stage1=<model>): stage 2 refines an untrained ViT", stacklevel=2)
    return SEPAL(n_genes, stage1, **{**CONFIGS[size], **kw})
