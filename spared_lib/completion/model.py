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
    d_model, n_layers, n_heads, dim_feedforward, dropout
        Transformer size; the defaults are the original's (128, 2, 1, 2048, 0.1).

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
