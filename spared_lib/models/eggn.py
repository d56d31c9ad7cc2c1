"""EGGN: exemplar-guided graph neural network (Yang et al., 2023), the graph version of EGN.

Features come from a frozen ImageNet ResNet-18 (512-d), computed once for every spot.
One heterogeneous graph per slide (or crop) has two node types:

* **window** nodes, the spots, linked by a radius graph: the original (Yan98/EGN
  ``v2/generate_graph.py``, ``radius_graph(pos, sqrt(2), max_num_neighbors=5)`` with ``pos =
  [x // 256, y // 256]`` from ``v1/dataset.py``, 256 px being its patch size) bins the
  full-resolution pixel coordinates into 256-px cells and links spots whose cells are at most √2
  apart (the 8 surrounding cells), at most 5 neighbours per spot, one graph per slide. That is
  the default here (``cell_px=256``, ``radius=√2``); SpaRED's adaptation (danielaruizl1/EGGN_spared
  ``generate_graph_spared.py``) instead uses ``radius=1000`` on the unbinned pixels of a whole
  split (``cell_px=1, radius=1000``);
* **exemplar** nodes, the ``k = 6`` nearest *training* spots of each window in feature
  space, by L1 distance between the frozen ResNet-18 features (``cdist(p=1)`` in Yan98/EGN
  ``v2/build_exemplar.py``; EGN's v1 uses Euclidean), from other training slides (see
  :mod:`spared_lib.models.egn` for a single training slide), linked among themselves by a
  3-nearest-neighbour graph on feature ‖ expression and to their windows by exemplar → window edges.

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

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import SpotModel, build_configured, check_init_bias
from .egn import FEATURE_DIM, ExemplarBank, FrozenEncoder, mse_pcc_loss, resnet_trunk
from .graph import SAGEConv, knn_graph, radius_graph, scatter_mean, scatter_sum, segment_softmax

CONFIGS = {
    "paper": dict(hidden=512, layers=4, k=6, exemplar_knn=3, radius=math.sqrt(2), cell_px=256.0, max_neighbors=5,
                  score_dim=128, backbone="resnet18", feature_px=224),
    "small": dict(hidden=32, layers=2, k=6, exemplar_knn=3, radius=math.sqrt(2), cell_px=256.0, max_neighbors=5,
                  score_dim=16, backbone="resnet18", feature_px=32),
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

    def __init__(self, n_genes: int, *, hidden: int, layers: int, k: int, exemplar_knn: int, radius: float,
                 cell_px: float, max_neighbors: int, score_dim: int, backbone: str, feature_px: int,
                 pretrained=None, init_bias: str | None = "mean", max_spots: int | None = None,
                 verbose: bool = True):
        super().__init__()
        self.k, self.exemplar_knn, self.radius, self.max_neighbors = k, exemplar_knn, radius, max_neighbors
        self.cell_px, self.hidden, self.n_layers = cell_px, hidden, layers
        self.init_bias = check_init_bias(init_bias)
        self.max_spots = max_spots
        mdim = FEATURE_DIM[backbone]
        self.encoder = FrozenEncoder(resnet_trunk(backbone, pretrained, verbose), feature_px)
        self.bank = ExemplarBank(n_genes, mdim)
        self.pre_win = nn.Linear(mdim, hidden, bias=False)
        self.pre_ex = nn.Linear(mdim + n_genes, hidden, bias=False)
        self.post = nn.Sequential(nn.LeakyReLU(0.2), nn.Linear(hidden, hidden, bias=False), nn.LeakyReLU(0.2))
        self.pre_y = nn.Linear(n_genes, hidden, bias=False)
        self.layers = nn.ModuleList([HeteroLayer(hidden, score_dim) for _ in range(layers)])
        self.pool = ExemplarPool(hidden)
        self.lin = nn.Linear(hidden, n_genes)

    def output_layer(self) -> nn.Linear:
        return self.lin

    def prepare(self, ctx) -> None:
        """Output bias at the train mean; encode all spots with the frozen ResNet-18; exemplars from
        training spots only (L1, as Yan98/EGN ``v2/build_exemplar.py``)."""
        super().prepare(ctx)
        self.bank.build(ctx, self.encoder, self.k, p=1.0)

    def window_edges(self, xy: torch.Tensor, slide: torch.Tensor) -> torch.Tensor:
        """Spot–spot edges: pixel coordinates binned into ``cell_px`` cells, at most ``max_neighbors``
        nearest within ``radius`` cells, never across slides (the original's graph; module docstring)."""
        pos = torch.floor(xy.float() / self.cell_px) if self.cell_px != 1 else xy.float()
        return radius_graph(pos, self.radius + 1e-6, self.max_neighbors, group=slide)

    def graph(self, batch: dict):
        """Window features, exemplar nodes and the three edge lists of a slide (or crop)."""
        feat, _, _, ex = self.bank.lookup(batch["index"])
        n, k = ex.shape
        uniq, inverse = torch.unique(ex.reshape(-1), return_inverse=True)
        ex_feat = self.bank.features[self.bank.train_index[uniq]]
        ex_y = self.bank.bank_target[uniq]
        e_cross = torch.stack([inverse, torch.arange(n, device=ex.device).repeat_interleave(k)])
        e_win = self.window_edges(batch["xy"].to(feat.device), batch["slide"].to(feat.device))
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
        return mse_pcc_loss(batch, pred)


def build(name: str, n_genes: int, pretrained=None, size: str = "paper", **kw) -> EGGN:
    """Build EGGN. ``pretrained='imagenet'`` gives the frozen ResNet-18 its ImageNet weights (as the
    original's ``torchvision.models.resnet18(True)``); a path loads a checkpoint of this model.

    Introduced in ``notebooks/05_context_models.py``.
    """
    return build_configured(EGGN, name, n_genes, CONFIGS, size, pretrained, kw, extra=("init_bias", "max_spots"))
