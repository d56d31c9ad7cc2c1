"""Baselines for completion: the adaptive median filter and stLearn's SME imputation.

Introduced in ``notebooks/03_spackle.py``. Both take the expression ``x`` and a bool array
``visible`` (entries a method may read); every other entry is treated as missing and filled.
"""
from __future__ import annotations

import warnings

import numpy as np

from spared_lib.preprocessing import slide_codes, within_radius

#: stLearn's neighbourhood radius in units of the spot spacing: 3 array units on Visium
#: (one unit = one spot spacing) and 1.5 array units on legacy ST (one unit = the diagonal,
#: sqrt(2) spacings).
SME_RADIUS = {"hex": 3.0, "square": 1.5 * np.sqrt(2.0)}


def median_complete(adata, x: np.ndarray, visible: np.ndarray, n_hops: int = 4) -> np.ndarray:
    """Adaptive median completion (SPEC §2.6) of the non-visible entries.

    Non-visible entries are set to 0 and filled by the preprocessing chapter's adaptive median
    (:func:`spared_lib.preprocessing.adaptive_median_array`, per slide: the first non-zero
    median over the 1..``n_hops``-hop neighbourhoods, else the slide median of the non-zero
    values); visible entries are returned unchanged.

    Introduced in ``notebooks/03_spackle.py``.
    """
    from spared_lib.preprocessing import adaptive_median_array, khop_adjacencies, spatial_neighbors

    x = np.asarray(x, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    if x.shape != visible.shape or x.shape[0] != adata.n_obs:
        raise ValueError(f"x {x.shape} and visible {visible.shape} must both be (adata.n_obs, G)")
    # A visible value that is exactly 0 would be read as missing by the filter; after ComBat
    # such values do not occur, and in log1p data a 0 *is* a dropout.
    zeroed = np.where(visible, x, 0.0)
    codes, names = slide_codes(adata)
    hops = khop_adjacencies(spatial_neighbors(adata), n_hops)
    filled = adaptive_median_array(zeroed, hops, codes, len(names))
    return np.where(visible, x, filled).astype(np.float32)


def _pca(x: np.ndarray, n_comps: int) -> np.ndarray:
    xc = x - x.mean(axis=0)
    n_comps = max(1, min(n_comps, min(xc.shape) - 1))
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, :n_comps] * s[:n_comps]


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` (n, d) with the rows of ``b`` (n, K, d)."""
    na = np.linalg.norm(a, axis=-1, keepdims=True)
    nb = np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.einsum("nd,nkd->nk", a, b) / (na * nb)
    return np.nan_to_num(sim, nan=0.0)


def sme_weights(adata, embedding: np.ndarray, morphology: np.ndarray | None, max_neighbours: int = 64):
    """stLearn's SME weights on each spot's spatial neighbourhood, as index arrays.

    weight = spatial adjacency (distance < rate x spacing) x morphological similarity (cosine
    of the image features, negatives set to 0) x expression correlation (Pearson correlation of
    the PCA embeddings, negatives set to 0). Only pairs within one slide get a weight.

    Returns
    -------
    idx : (n, K) int64, -1 padded; weights : (n, K) float64 (0 on padding).
    """
    grid = adata.uns.get("dataset", {}).get("grid", "hex")
    idx = within_radius(adata, SME_RADIUS.get(grid, SME_RADIUS["hex"]), max_neighbors=max_neighbours - 1)
    pad = idx < 0
    safe = np.where(pad, 0, idx)
    emb = embedding - embedding.mean(axis=1, keepdims=True)  # correlation = cosine of centred rows
    gd = np.clip(_row_cosine(emb, emb[safe]), 0.0, None)
    if morphology is None:
        md = np.ones_like(gd)
    else:
        md = np.clip(_row_cosine(morphology, morphology[safe]), 0.0, None)
    w = np.where(pad, 0.0, gd * md)
    return idx, w


def sme_complete(
    adata,
    x: np.ndarray,
    visible: np.ndarray,
    morphology: np.ndarray | None = None,
    n_top: int = 3,
    n_pcs: int = 50,
    include_self: bool = True,
) -> np.ndarray:
    """stLearn's SME imputation (``SME_impute0``) of the non-visible entries, from its algorithm.

    For each spot, the spots within stLearn's radius (3 spacings on Visium) are weighted by
    spatial adjacency x morphological similarity x expression correlation; the ``n_top``
    highest weights are normalised to sum 1 and the weighted mean of those spots' (zero-filled)
    expression replaces the spot's missing entries. Visible entries are unchanged.

    Parameters
    ----------
    adata
        Gives ``obsm['spatial']``, ``obs['slide_id']`` and ``uns['dataset']['grid']``.
    x, visible
        ``(n, G)`` expression and bool mask of the entries SME may read.
    morphology
        ``(n, d)`` image features of the spots (:func:`image_features` or
        :func:`colour_features`); ``None`` drops the morphology term (weight 1).
    n_top
        Neighbours averaged (stLearn: 3).
    include_self
        stLearn's top weights include the spot itself (weight 1 x 1 x 1), whose missing value
        is 0; this pulls imputations towards 0 and is kept by default to reproduce stLearn.

    Introduced in ``notebooks/03_spackle.py``.
    """
    x = np.asarray(x, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    zeroed = np.where(visible, x, 0.0)
    emb = _pca(zeroed.astype(np.float64), n_pcs)
    if morphology is not None:
        morphology = np.asarray(morphology, dtype=np.float64)
        if morphology.shape[0] != adata.n_obs:
            raise ValueError(f"morphology has {morphology.shape[0]} rows but adata has {adata.n_obs} spots")
        morphology = _pca(morphology, n_pcs) if morphology.shape[1] > n_pcs else morphology
    idx, w = sme_weights(adata, emb, morphology)
    if not include_self:
        w = np.where(idx == np.arange(adata.n_obs)[:, None], 0.0, w)
    top = np.argsort(-w, axis=1, kind="stable")[:, :n_top]
    top_idx = np.take_along_axis(idx, top, axis=1)
    top_w = np.take_along_axis(w, top, axis=1)
    total = top_w.sum(axis=1, keepdims=True)
    top_w = np.divide(top_w, total, out=np.zeros_like(top_w), where=total > 0)
    fill = np.einsum("nk,nkg->ng", top_w, zeroed[np.where(top_idx < 0, 0, top_idx)])
    return np.where(visible, x, fill).astype(np.float32)


def image_features(
    patches,
    backbone: str = "shufflenet_v2_x0_5",
    weights: str | None = "auto",
    batch_size: int = 64,
    size: int = 112,
    device: str = "auto",
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """Morphology features of spot patches from a small frozen torchvision CNN.

    Parameters
    ----------
    patches
        ``(n, H, W, 3)`` uint8 array-like (:func:`spared_lib.preprocessing.extract_patches`).
    backbone
        A torchvision classification model name.
    weights
        ``'auto'`` tries the ImageNet weights (downloaded by torchvision on Colab) and falls back
        to a random initialisation (seeded) when they cannot be loaded offline; ``None`` always
        uses the random initialisation; any other value goes to ``torchvision.models.get_model``.
    size
        Patches are resized to ``size`` pixels before the CNN (speed on CPU).

    Returns
    -------
    features : (n, d) float32
    source : str
        Which weights were used, e.g. ``'shufflenet_v2_x0_5, ImageNet weights'``.
    """
    import torch
    import torchvision
    from torch.nn import functional as F

    from spared_lib.engine import resolve_device
    from spared_lib.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    dev = resolve_device(device)
    model, source = None, f"{backbone}, random init (seed {seed})"
    if weights is not None:
        try:
            w = "DEFAULT" if weights == "auto" else weights
            model = torchvision.models.get_model(backbone, weights=w)
            source = f"{backbone}, ImageNet weights"
        except Exception as err:  # offline: torchvision cannot download the weights
            if weights != "auto":
                raise
            warnings.warn(f"ImageNet weights for {backbone} unavailable ({type(err).__name__}); "
                          "using a random initialisation for the SME morphology features")
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torchvision.models.get_model(backbone, weights=None)
    # Drop the classifier: features are the globally pooled last feature map.
    if hasattr(model, "fc"):
        model.fc = torch.nn.Identity()
    elif hasattr(model, "classifier"):
        model.classifier = torch.nn.Identity()
    model = model.eval().to(dev)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    n = len(patches)
    out = []
    with torch.no_grad():
        for s in range(0, n, batch_size):
            b = torch.as_tensor(np.asarray(patches[s : s + batch_size]), device=dev)
            b = b.permute(0, 3, 1, 2).float().div(255.0)
            b = F.interpolate(b, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            out.append(model((b - mean) / std).float().cpu().numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return feats.reshape(n, -1), source


def colour_features(adata, res: str = "hires") -> np.ndarray | None:
    """Mean and standard deviation of RGB in each spot's window of the slide image.

    The fallback morphology when no full-resolution patches exist (e.g. a Visium slide with
    only the low-resolution PNG). Returns ``(n, 6)`` or ``None`` when no slide has an image.
    """
    spatial = adata.uns.get("spatial", {})
    codes = np.asarray(adata.obs["slide_id"].astype(str))
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    feats = np.full((adata.n_obs, 6), np.nan)
    for slide, info in spatial.items():
        images = info.get("images", {})
        key = res if res in images else next(iter(images), None)
        if key is None:
            continue
        img = np.asarray(images[key], dtype=np.float64)
        if img.max() > 1.5:
            img = img / 255.0
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        sf = info.get("scalefactors", {})
        scale = sf.get(f"tissue_{key}_scalef", 1.0)
        diam = sf.get("spot_diameter_fullres", 100.0) * scale
        sel = np.flatnonzero(codes == slide)
        if sel.size == 0:
            continue
        r = max(1, int(round(diam / 2)))
        offs = np.arange(-r, r + 1)
        cx = np.clip(np.round(coords[sel, 0] * scale).astype(int)[:, None] + offs, 0, img.shape[1] - 1)
        cy = np.clip(np.round(coords[sel, 1] * scale).astype(int)[:, None] + offs, 0, img.shape[0] - 1)
        win = img[cy[:, :, None], cx[:, None, :]]  # (n, w, w, 3)
        feats[sel, :3] = win.mean(axis=(1, 2))
        feats[sel, 3:] = win.std(axis=(1, 2))
    if np.isnan(feats).all():
        return None
    return np.nan_to_num(feats, nan=np.nanmean(feats))
