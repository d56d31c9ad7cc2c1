"""Small graph operations in plain PyTorch, shared by the context models.

Graphs are edge lists ``edge_index`` of shape ``(2, E)`` (row 0 = source,
row 1 = target, messages flow source → target) or dense per-neighbourhood
adjacency tensors ``(B, K, K)``. Nothing here needs torch_geometric: message
passing is a gather followed by ``index_add_`` / ``scatter_reduce``.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum the rows of ``src`` into ``n`` buckets given by ``index`` (``(E,)`` int64)."""
    out = src.new_zeros((n,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the rows of ``src`` per bucket; empty buckets give 0."""
    total = scatter_sum(src, index, n)
    count = torch.zeros(n, device=src.device, dtype=src.dtype).index_add_(
        0, index, torch.ones_like(index, dtype=src.dtype))
    return total / count.clamp_min(1.0).view((n,) + (1,) * (src.dim() - 1))


def segment_softmax(scores: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of ``scores`` (``(E, ...)``) over the edges that share a target ``index``."""
    shape = (n,) + tuple(scores.shape[1:])
    idx = index.view((-1,) + (1,) * (scores.dim() - 1)).expand_as(scores)
    # the per-segment max keeps exp() from overflowing
    seg_max = scores.new_full(shape, -math.inf).scatter_reduce(0, idx, scores, "amax", include_self=True)
    ex = (scores - seg_max.gather(0, idx)).exp()
    denom = scores.new_zeros(shape).scatter_add_(0, idx, ex)
    return ex / denom.gather(0, idx).clamp_min(1e-16)


def knn_graph(x: torch.Tensor, k: int, *, loop: bool = False) -> torch.Tensor:
    """Edges from each row's ``k`` nearest rows (Euclidean) to the row itself.

    Returns ``edge_index`` ``(2, n*k')`` with ``k' = min(k, n - 1)`` (or ``n`` with ``loop``).
    """
    n = x.shape[0]
    k = min(k, n if loop else n - 1)
    if k <= 0:
        return torch.zeros(2, 0, dtype=torch.long, device=x.device)
    d = torch.cdist(x, x)
    if not loop:
        d.fill_diagonal_(math.inf)
    nbr = d.topk(k, dim=1, largest=False).indices  # (n, k)
    dst = torch.arange(n, device=x.device).repeat_interleave(k)
    return torch.stack([nbr.reshape(-1), dst])


def radius_graph(pos: torch.Tensor, radius: float, max_neighbors: int = 5, *,
                 group: torch.Tensor | None = None) -> torch.Tensor:
    """Edges to each point from at most ``max_neighbors`` nearest points within ``radius``.

    ``group`` (``(n,)`` int) keeps edges inside a group (e.g. a slide): points of
    different groups are never connected. No self loops.
    """
    n = pos.shape[0]
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    d = torch.cdist(pos.float(), pos.float())
    d.fill_diagonal_(math.inf)
    if group is not None:
        d = d.masked_fill(group.view(-1, 1) != group.view(1, -1), math.inf)
    k = min(max_neighbors, n - 1)
    val, nbr = d.topk(k, dim=1, largest=False)
    keep = val <= radius
    dst = torch.arange(n, device=pos.device).view(-1, 1).expand(-1, k)
    return torch.stack([nbr[keep], dst[keep]])


def gcn_norm(edge_index: torch.Tensor, n: int, *, self_loops: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric GCN normalisation ``D^-1/2 (A + I) D^-1/2`` of an edge list."""
    src, dst = edge_index
    if self_loops:
        loop = torch.arange(n, device=edge_index.device)
        src, dst = torch.cat([src, loop]), torch.cat([dst, loop])
    deg = torch.zeros(n, device=edge_index.device).index_add_(0, dst, torch.ones_like(dst, dtype=torch.float))
    dinv = deg.clamp_min(1.0).rsqrt()
    return torch.stack([src, dst]), dinv[src] * dinv[dst]


class GCNConv(nn.Module):
    """Graph convolution of Kipf & Welling on an edge list (same parameters as PyG's ``GCNConv``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        ei, w = gcn_norm(edge_index, x.shape[0])
        return scatter_sum(h[ei[0]] * w.unsqueeze(1).to(h.dtype), ei[1], x.shape[0]) + self.bias


class DenseGCNConv(nn.Module):
    """GCN layer on a batch of small dense graphs ``x (B, K, F)``, ``adj (B, K, K)`` (bool or 0/1).

    ``node_mask (B, K)`` marks real nodes; padded nodes neither send nor receive.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor, adj: torch.Tensor, node_mask: torch.Tensor) -> torch.Tensor:
        k = adj.shape[-1]
        m = node_mask.to(x.dtype)
        a = adj.to(x.dtype) * m.unsqueeze(1) * m.unsqueeze(2)
        a = a + torch.diag_embed(m)  # self loops on real nodes only
        dinv = a.sum(-1).clamp_min(1.0).rsqrt()
        a = dinv.unsqueeze(-1) * a * dinv.unsqueeze(-2)
        out = a @ self.lin(x) + self.bias
        return out * m.unsqueeze(-1)


class SAGEConv(nn.Module):
    """GraphSAGE with mean aggregation: ``W_l · mean(neighbours) + W_r · x`` (PyG's parameter layout)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.lin_l = nn.Linear(in_dim, out_dim)
        self.lin_r = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        agg = scatter_mean(x[edge_index[0]], edge_index[1], x.shape[0])
        return self.lin_l(agg) + self.lin_r(x)


def sinusoidal_2d(pos: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """2-D sine/cosine position code: half of ``dim`` encodes ``pos[..., 0]``, half ``pos[..., 1]``.

    ``pos`` is ``(..., 2)`` float; returns ``(..., dim)`` (``dim`` divisible by 4).
    """
    if dim % 4:
        raise ValueError(f"sinusoidal_2d: dim={dim} must be divisible by 4")
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=pos.device, dtype=torch.float32) / quarter)
    ang = pos.float().unsqueeze(-1) * scale * freq  # (..., 2, quarter)
    code = torch.cat([ang.sin(), ang.cos()], dim=-1)  # (..., 2, dim/2)
    return code.flatten(-2)
