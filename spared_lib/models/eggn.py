"""EGGN: exemplar-guided graph neural network (Yang et al., 2023), the graph version of EGN.

Features come from a frozen ImageNet ResNet-18 (512-d), computed once for every spot.
One heterogeneous graph per slide (or crop) has two node types:

* **window** nodes, the spots, linked by a radius graph on the pixel coordinates (at most
  5 neighbours within ``radius`` full-resolution pixels, 1000 in the original);
* **exemplar** nodes, the ``k = 6`` nearest *training* spots of each window in feature
  space (feature ‖ expression), linked among themselves by a 3-nearest-neighbour graph
  and to their windows by exemplar → window edges.

Four layers each run GraphSAGE on window–window and exemplar–exemplar edges and an
exemplar-bridging message on exemplar ↔ window edges (sigmoid-gated by the difference
of the two ends' attention scores), averaged per node type, then LeakyReLU. A residual
attention pooling over each window's exemplars and a linear layer give the genes.
Loss: MSE + 0.5 (1 − PCC), AdamW (lr 5e-4, weight decay 1e-4 in the original).

The original slices the *hidden* exemplar features where it means their expression
before projecting it (``x['example'][:, -G:]`` after the transform); here the exemplar
expression itself is projected. The parameter count is the same.

Introduced in ``notebooks/05_context_models.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpotModel, loss_mask, masked_mse
from .egn import FEATURE_DIM, ExemplarBank, FrozenEncoder, pcc_loss, resnet_trunk
from .graph import SAGEConv, knn_graph, radius_graph, scatter_mean, scatter_sum, segment_softmax

CONFIGS = {
    "paper": dict(hidden=512, layers=4, k=6, exemplar_knn=3, radius=1000.0, max_neighbors=5, score_dim=128,
                  backbone="resnet18", feature_px=224),
    "small": dict(hidden=32, layers=2, k=6, exemplar_knn=3, radius=1000.0, max_neighbors=5, score_dim=16,
                  backbone="resnet18", feature_px=32),
}


def original_n_params(n_genes: int) -> int:
    """Trainable parameters of the original EGGN (hidden 512, 4 layers, ResNet-18 features), layer by layer."""
    h, g, s = 512, n_genes, 128
    pre = h * h + (h + g) * h + h * h + g * h
    sage = 2 * h * h + h
    egb = 3 * h * h + h * s + (s * 2 * s + 2 * s) + 2 * h + 2 * (h * h + h)
    return pre + 4 * (2 * sage + egb) + (h * h + h + 1) + (h * g + g)


class ExemplarBridgeConv(nn.Module):
    """Gated messages along exemplar → window edges and back (EGGN's EGB block).

    Each edge gets two sigmoid gates from the difference of the ends' attention scores;
    a message is the gated concatenation [exemplar ‖ exemplar expression ‖ window],
    folded into ``mid`` channels by averaging its three parts; messages are averaged per node.
    """

    def __init__(self, dim: int, mid: int, score_dim: int):
        super().__init__()
        if (3 * mid) % score_dim:
            raise ValueError("eggn: 3 * hidden must be a multiple of score_dim")
        self.mid, self.score_dim = mid, score_dim
        self.lin_src = nn.Linear(dim, mid, bias=False)
        self.lin_dst = nn.Linear(dim, mid, bias=False)
        self.lin_y = nn.Linear(dim, mid, bias=False)
        self.att = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(mid, score_dim, bias=False))
        self.score = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(score_dim, 2 * score_dim))
        self.bias_src = nn.Parameter(torch.zeros(mid))
        self.bias_dst = nn.Parameter(torch.zeros(mid))
        self.out_src = nn.Linear(mid, dim)
        self.out_dst = nn.Linear(mid, dim)

    def _gated(self, a: torch.Tensor, b: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        x = torch.cat([a, b], -1)  # (E, 3 * mid)
        x = gate.repeat_interleave(3 * self.mid // self.score_dim, -1) * x
        return x.view(-1, 3, self.mid).mean(1)

    def forward(self, x_ex, x_win, y_ex, edge_index):
        src, dst = edge_index  # exemplar -> window
        xs, xd, ys = self.lin_src(x_ex), self.lin_dst(x_win), self.lin_y(y_ex)
        gates = torch.sigmoid(self.score(self.att(xs)[src] - self.att(xd)[dst]))
        g_dst, g_src = gates.split(self.score_dim, -1)
        ex_msg = torch.cat([xs, ys], -1)
        to_win = scatter_mean(self._gated(ex_msg[src], xd[dst], g_dst), dst, x_win.shape[0])
        to_ex = scatter_mean(self._gated(xd[dst], ex_msg[src], g_src), src, x_ex.shape[0])
        return self.out_src(to_ex + self.bias_src), self.out_dst(to_win + self.bias_dst)


class HeteroLayer(nn.Module):
    """One EGGN layer: SAGE on each homogeneous relation + the bridge, averaged per node type."""

    def __init__(self, dim: int, score_dim: int):
        super().__init__()
        self.win = SAGEConv(dim, dim)
        self.ex = SAGEConv(dim, dim)
        self.bridge = ExemplarBridgeConv(dim, dim, score_dim)

    def forward(self, x_win, x_ex, y_ex, e_win, e_ex, e_cross):
        b_ex, b_win = self.bridge(x_ex, x_win, y_ex, e_cross)
        x_win = 0.5 * (self.win(x_win, e_win) + b_win)
        x_ex = 0.5 * (self.ex(x_ex, e_ex) + b_ex)
        return F.leaky_relu(x_win, 0.2), F.leaky_relu(x_ex, 0.2)


class ExemplarPool(nn.Module):
    """Residual attention of each window over its exemplars (channel-wise softmax over edges)."""

    def __init__(self, dim: int, T: float = 0.1):
        super().__init__()
        self.head = nn.Linear(dim, dim)
        self.lam = nn.Parameter(torch.full((1,), 0.1))
        self.T = T

    def forward(self, x_win, x_ex, edge_index):
        src, dst = edge_index
        dist = self.head(x_win)
        alpha = segment_softmax((x_ex[src] - dist[dst]) * self.T, dst, x_win.shape[0])
        return dist + self.lam * scatter_sum(alpha * x_ex[src], dst, x_win.shape[0])


class EGGN(SpotModel):
    """EGGN as a :class:`~spared_lib.models.base.SpotModel` (``batching='slide'``, AdamW).

    The image features are frozen and computed once in :meth:`prepare`, so a batch only
    needs ``index`` (to look them up) and ``xy`` (for the radius graph).
    """

    batching = "slide"
    optimizer = "adamw"
    max_spots = 8192

    def __init__(self, n_genes: int, *, hidden: int, layers: int, k: int, exemplar_knn: int, radius: float,
                 max_neighbors: int, score_dim: int, backbone: str, feature_px: int, pretrained=None):
        super().__init__()
        self.k, self.exemplar_knn, self.radius, self.max_neighbors = k, exemplar_knn, radius, max_neighbors
        mdim = FEATURE_DIM[backbone]
        self.encoder = FrozenEncoder(resnet_trunk(backbone, pretrained), feature_px)
        self.bank = ExemplarBank(n_genes, mdim)
        self.pre_win = nn.Linear(mdim, hidden, bias=False)
        self.pre_ex = nn.Linear(mdim + n_genes, hidden, bias=False)
        self.post = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, hidden, bias=False), nn.LeakyReLU(0.2))
        self.pre_y = nn.Linear(n_genes, hidden, bias=False)
        self.layers = nn.ModuleList([HeteroLayer(hidden, score_dim) for _ in range(layers)])
        self.pool = ExemplarPool(hidden)
        self.lin = nn.Linear(hidden, n_genes)

    def prepare(self, ctx) -> None:
        """Encode all spots with the frozen ResNet-18; exemplars from training spots only."""
        self.bank.build(ctx, self.encoder, self.k)

    def graph(self, batch: dict):
        """Window features, exemplar nodes and the three edge lists of a slide (or crop)."""
        feat, _, _, ex = self.bank.lookup(batch["index"])
        n, k = ex.shape
        uniq, inverse = torch.unique(ex.reshape(-1), return_inverse=True)
        ex_feat = self.bank.features[self.bank.train_index[uniq]]
        ex_y = self.bank.bank_target[uniq]
        e_cross = torch.stack([inverse, torch.arange(n, device=ex.device).repeat_interleave(k)])
        e_win = radius_graph(batch["xy"].to(feat.device), self.radius, self.max_neighbors,
                             group=batch["slide"].to(feat.device))
        e_ex = knn_graph(torch.cat([ex_feat, ex_y], 1), self.exemplar_knn)
        return feat, ex_feat, ex_y, e_win, e_ex, e_cross

    def forward(self, batch: dict) -> torch.Tensor:
        feat, ex_feat, ex_y, e_win, e_ex, e_cross = self.graph(batch)
        x_win = self.post(self.pre_win(feat))
        x_ex = self.post(self.pre_ex(torch.cat([ex_feat, ex_y], 1)))
        y_ex = self.pre_y(ex_y)
        for layer in self.layers:
            x_win, x_ex = layer(x_win, x_ex, y_ex, e_win, e_ex, e_cross)
        return self.lin(self.pool(x_win, x_ex, e_cross))

    def loss(self, batch: dict, pred: torch.Tensor) -> torch.Tensor:
        m = loss_mask(batch)
        return masked_mse(pred, batch["target"], m) + 0.5 * pcc_loss(pred, batch["target"], m)


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> EGGN:
    """Build EGGN. ``pretrained`` gives the frozen ResNet-18's weights (``'imagenet'`` or a path).

    Introduced in ``notebooks/05_context_models.py``.
    """
    if size not in CONFIGS:
        raise ValueError(f"eggn: size must be one of {sorted(CONFIGS)}, got {size!r}")
    return EGGN(n_genes, **{**CONFIGS[size], **kw}, pretrained=pretrained)
