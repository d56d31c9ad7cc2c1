"""Toy data shared by the model and trainer tests: a preprocessed-looking AnnData with patches."""
from __future__ import annotations

import numpy as np
import pandas as pd


def make_patch_data(n_side=8, n_genes=6, seed=0, size=32, splits=("train", "val", "test"), counts=False):
    """Hex slides (one per entry of ``splits``) + uint8 patches with a learnable image → expression link.

    Expression is a linear function of three smooth spatial factors, and each patch's colour
    encodes the same factors (plus pixel noise), so a CNN can learn image -> expression; the link
    is invariant to flips and rotations. ``counts=True`` adds Poisson raw counts in
    ``layers['counts']`` (for Hist2ST's ZINB head).
    """
    import anndata

    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    rc = np.stack([rows.ravel(), 2 * cols.ravel() + rows.ravel() % 2], 1)  # hex array coordinates
    xy = np.stack([rc[:, 1] * 50.0, rc[:, 0] * 86.6], 1)
    n_slides = len(splits)
    n = n_slides * len(rc)
    slide = np.repeat(np.arange(n_slides), len(rc))
    z = np.concatenate([np.stack([np.sin(xy[:, 0] / 150 + p), np.cos(xy[:, 1] / 170 + 2 * p),
                                  np.sin((xy[:, 0] + xy[:, 1]) / 210 + 3 * p)], 1) for p in range(n_slides)])
    w = rng.normal(0, 1, (3, n_genes))
    y = (2.0 + z @ w + rng.normal(0, 0.1, (n, n_genes))).astype(np.float32)
    colour = 128 + 90 * np.tanh(z)
    patches = np.clip(colour[:, None, None, :] + rng.normal(0, 15, (n, size, size, 3)), 0, 255).astype(np.uint8)
    mask = rng.random((n, n_genes)) > 0.2
    split = np.asarray(splits)[slide]
    obs = pd.DataFrame({"slide_id": pd.Categorical([f"S{s}" for s in slide]), "split": split,
                        "array_row": np.tile(rc[:, 0], n_slides), "array_col": np.tile(rc[:, 1], n_slides)},
                       index=[f"spot{i}" for i in range(n)])
    ad = anndata.AnnData(X=np.zeros((n, n_genes), np.float32), obs=obs)
    ad.obsm["spatial"] = np.tile(xy, (n_slides, 1))
    ad.uns["dataset"] = {"grid": "hex"}
    train = split == "train"
    if counts:
        ad.layers["counts"] = rng.poisson(np.exp(np.clip(y, 0, 5))).astype(np.float32)
    ad.layers["c_d_log1p"] = y
    ad.layers["mask"] = mask
    mean = (y * mask)[train].sum(0) / mask[train].sum(0)
    ad.var["c_d_log1p_avg_exp"] = mean
    ad.layers["c_d_deltas"] = y - mean
    return ad, patches
