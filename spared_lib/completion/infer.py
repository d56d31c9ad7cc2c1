"""Completing missing entries with a trained SpaCKLE model (layers ``c_t_log1p``, ``c_t_deltas``).

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import numpy as np
import torch

from spared_lib.preprocessing import nearest_in_slide

from .model import SpaCKLE


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` picks CUDA when present (Colab), else the CPU; anything else goes to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def layer_arrays(adata, layer: str, mask_layer: str = "mask") -> tuple[np.ndarray, np.ndarray]:
    """The expression layer as float32 and the observation mask as bool, with clear errors."""
    for name in (layer, mask_layer):
        if name not in adata.layers:
            raise KeyError(
                f"adata has no layer {name!r} (layers: {sorted(adata.layers)}); "
                "run spared_lib.preprocessing.preprocess first"
            )
    x = np.asarray(adata.layers[layer], dtype=np.float32)
    m = np.asarray(adata.layers[mask_layer]).astype(bool)
    if x.shape != m.shape:
        raise ValueError(f"layer {layer!r} {x.shape} and {mask_layer!r} {m.shape} differ in shape")
    return x, m


def gather_neighbourhoods(x: torch.Tensor, observed: torch.Tensor, nbr: torch.Tensor, centres: torch.Tensor):
    """Build ``E`` for a batch of centre spots.

    Returns ``(E, obs, pad)``: ``E`` ``(B, T, G)`` expression (0 on padding), ``obs`` ``(B, T, G)``
    bool observed-and-not-padding, ``pad`` ``(B, T)`` bool padding tokens.
    """
    idx = nbr[centres]
    pad = idx < 0
    safe = idx.clamp(min=0)
    e = x[safe].masked_fill(pad[..., None], 0.0)
    obs = observed[safe] & ~pad[..., None]
    return e, obs, pad


@torch.no_grad()
def predict_centres(
    model: SpaCKLE,
    x: np.ndarray,
    visible: np.ndarray,
    nbr: np.ndarray,
    centres: np.ndarray | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """SpaCKLE's reconstruction of the centre spot, with every non-visible entry zeroed.

    Parameters
    ----------
    model
        A trained :class:`SpaCKLE`.
    x, visible
        ``(n, G)`` expression and bool mask of entries the model may see.
    nbr
        ``(n, T)`` neighbour indices from :func:`spared_lib.preprocessing.nearest_in_slide` (-1 = padding).
    centres
        Spots to predict (all by default).

    Returns
    -------
    numpy.ndarray
        ``(len(centres), G)`` float32 predictions for every gene of each centre spot.
    """
    dev = resolve_device(device)
    centres = np.arange(x.shape[0]) if centres is None else np.asarray(centres)
    offset = model.offset.detach().cpu().numpy()
    xt = torch.as_tensor(np.where(visible, x - offset, 0.0).astype(np.float32), device=dev)
    vt = torch.as_tensor(visible, device=dev)
    nt = torch.as_tensor(nbr, device=dev)
    was_training = model.training
    model.eval().to(dev)
    out = np.empty((centres.size, x.shape[1]), dtype=np.float32)
    for start in range(0, centres.size, batch_size):
        c = torch.as_tensor(centres[start : start + batch_size], device=dev)
        e, _, pad = gather_neighbourhoods(xt, vt, nt, c)
        out[start : start + c.numel()] = model(e, pad)[:, 0].float().cpu().numpy()
    model.train(was_training)
    return out


def complete(
    adata,
    model: SpaCKLE,
    layer: str | None = None,
    mask_layer: str = "mask",
    batch_size: int = 1024,
    device: str | torch.device = "auto",
    copy: bool = False,
):
    """Complete the missing entries of ``layer`` with SpaCKLE.

    Missing entries (``mask`` False) are zeroed in the input, and only the centre spot's missing
    entries are replaced; observed values are kept. Writes ``layers['c_t_log1p']``,
    ``layers['c_t_deltas']`` (minus the train-split gene means) and
    ``var['c_t_log1p_avg_exp']``.

    Parameters
    ----------
    adata
        Preprocessed AnnData (``obs['slide_id']``, ``obsm['spatial']``, the layers).
    model
        From :func:`spared_lib.completion.train_spackle`; its ``meta`` gives the layer and the
        neighbourhood it was trained with.
    layer
        Input layer; defaults to the one the model was trained on (``c_d_log1p``).
    copy
        Return a completed copy instead of writing into ``adata``.

    Returns
    -------
    anndata.AnnData
        The AnnData holding the new layers.

    Introduced in ``notebooks/03_spackle.py``.
    """
    meta = getattr(model, "meta", {}) or {}
    layer = layer or meta.get("layer", "c_d_log1p")
    x, m = layer_arrays(adata, layer, mask_layer)
    if x.shape[1] != model.config["n_genes"]:
        raise ValueError(
            f"the model was trained on {model.config['n_genes']} genes but layer {layer!r} has {x.shape[1]}"
        )
    genes = meta.get("var_names")
    if genes is not None and list(genes) != list(map(str, adata.var_names)):
        raise ValueError("adata.var_names differ from the genes the SpaCKLE model was trained on")
    nbr = nearest_in_slide(adata, meta.get("n_neighbors", 18), meta.get("radius", "auto"))
    pred = predict_centres(model, x, m, nbr, batch_size=batch_size, device=device)
    completed = np.where(m, x, pred).astype(np.float32)
    out = adata.copy() if copy else adata
    out.layers["c_t_log1p"] = completed
    train = np.asarray(out.obs["split"] == "train") if "split" in out.obs else np.ones(out.n_obs, bool)
    if not train.any():
        train[:] = True
    avg = completed[train].mean(axis=0)
    out.var["c_t_log1p_avg_exp"] = avg
    out.layers["c_t_deltas"] = (completed - avg).astype(np.float32)
    return out
