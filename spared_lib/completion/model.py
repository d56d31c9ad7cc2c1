"""The SpaCKLE torch module (Spatial transcriptomics Completion with Knowledge from the Local Environment).

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import torch
from torch import nn


class SpaCKLE(nn.Module):
    """Transformer encoder that completes a spot's expression from its neighbourhood.

    The input is ``E`` of shape ``(batch, tokens, n_genes)``: one token per spot, the centre spot
    first, then its neighbours of the same slide (19 tokens in the paper). ``L_in`` maps each
    token to ``d_model``, a transformer encoder attends **across the tokens of one
    neighbourhood** (``batch_first=True``; the original fed the same tensor to a
    ``batch_first=False`` encoder and so attended across the batch), ``L_out`` maps back.

    Parameters
    ----------
    n_genes
        Number of genes G (32 or 128 in SpaRED).
    d_model
        Token width inside the encoder: 128, the paper's "fixed transformer dimension d_k = 128".
        The original code uses the number of genes instead (BCV-Uniandes/SpaRED
        ``spared/spared/spackle/model.py``: ``GeneImputationModel`` sets
        ``self.transformer_dim = data_input_size``, i.e. 32 for most SpaRED datasets, and its
        ``L_in``/``L_out`` then map G to G); we keep the paper's.
    n_layers, n_heads, dim_feedforward, dropout
        The original's 2 layers, 1 head, feed-forward 2048 and dropout 0.1 (PyTorch's
        ``TransformerEncoderLayer`` defaults, which the original does not change).

    Notes
    -----
    Like the original there is no positional encoding: the encoder is equivariant to the
    order of the neighbour tokens, which is what a set of neighbours calls for.
    """

    def __init__(
        self,
        n_genes: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 1,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be positive, got {n_genes}")
        self.config = dict(
            n_genes=int(n_genes), d_model=int(d_model), n_layers=int(n_layers),
            n_heads=int(n_heads), dim_feedforward=int(dim_feedforward), dropout=float(dropout),
        )
        self.l_in = nn.Linear(n_genes, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, batch_first=True
        )
        # The nested-tensor fast path reorders padded sequences; keep plain tensors so padded
        # and unpadded batches follow the same arithmetic.
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.l_out = nn.Linear(d_model, n_genes)
        # Per-gene offset added to the output; the input is expected minus this offset, with
        # hidden entries 0. ``train_spackle(centre=True)`` sets it to the train-split means, so
        # log2-TPM values around 10 need not be learnt by the first step and a hidden entry reads
        # as "the gene's average".
        self.register_buffer("offset", torch.zeros(n_genes))
        #: Filled by :func:`spared_lib.completion.train_spackle`: layer, genes, neighbourhood.
        self.meta: dict = {}

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct the neighbourhood matrix.

        Parameters
        ----------
        x
            ``(batch, tokens, n_genes)`` float: expression minus ``offset``, hidden entries 0.
        padding_mask
            ``(batch, tokens)`` bool, True where a token is padding (a border spot with fewer
            neighbours); padded tokens are excluded from attention.

        Returns
        -------
        torch.Tensor
            ``(batch, tokens, n_genes)``; row 0 is the centre spot's completion.
        """
        if x.ndim != 3 or x.shape[-1] != self.config["n_genes"]:
            raise ValueError(
                f"SpaCKLE expects (batch, tokens, {self.config['n_genes']}) input, got {tuple(x.shape)}"
            )
        h = self.encoder(self.l_in(x), src_key_padding_mask=padding_mask)
        return self.l_out(h) + self.offset

    def forward_centre(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Only row 0 of :meth:`forward` (the centre spot), for inference.

        Completion and validation read nothing but the centre token, and in the last encoder
        layer nothing else depends on the other tokens' outputs: their keys and values are still
        needed, but their queries, attention outputs and feed-forward pass (four fifths of the
        layer's arithmetic) are not. This computes the last layer for the centre token alone,
        which halves the cost of completing a spot; the result equals ``forward(x)[:, 0]`` (a
        test checks it). Eval mode only: dropout is not applied.

        Returns
        -------
        torch.Tensor
            ``(batch, n_genes)``.
        """
        if self.training:
            raise RuntimeError("forward_centre is for inference: call model.eval() first (dropout is skipped)")
        if x.ndim != 3 or x.shape[-1] != self.config["n_genes"]:
            raise ValueError(
                f"SpaCKLE expects (batch, tokens, {self.config['n_genes']}) input, got {tuple(x.shape)}"
            )
        h = self.l_in(x)
        layers = self.encoder.layers
        for layer in layers[:-1]:
            h = layer(h, src_key_padding_mask=padding_mask)
        last = layers[-1]
        if last.norm_first:  # the default (and the original's) is post-norm; keep both exact
            q = h[:, :1]
            hn = last.norm1(h)
            c = q + last.self_attn(hn[:, :1], hn, hn, key_padding_mask=padding_mask, need_weights=False)[0]
            c = c + last.linear2(last.activation(last.linear1(last.norm2(c))))
        else:
            c = h[:, :1] + last.self_attn(h[:, :1], h, h, key_padding_mask=padding_mask, need_weights=False)[0]
            c = last.norm1(c)
            c = last.norm2(c + last.linear2(last.activation(last.linear1(c))))
        if self.encoder.norm is not None:
            c = self.encoder.norm(c)
        return self.l_out(c[:, 0]) + self.offset
