"""Completing missing entries with a trained SpaCKLE model (layers ``c_t_log1p``, ``c_t_deltas``).

Introduced in ``notebooks/03_spackle.py``.
"""
from __future__ import annotations

import numpy as np
import torch

from spared_lib.engine import resolve_device
from spared_lib.preprocessing import nearest_in_slide

from .model import SpaCKLE

#: How a model's input is built from the entries it may see (``visible``):
#: ``'zeroed'`` every non-visible entry of every token is 0 (the paper's inference);
#: ``'median'`` the centre token's non-visible entries are 0 and the neighbours' carry the
#: adaptive median fill computed from the visible entries (the input the original trained on).
INFERENCE_RULES = ("zeroed", "median")


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


def model_inputs(adata, x: np.ndarray, visible: np.ndarray, offset: np.ndarray, rule: str = "zeroed",
                 fill: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What each spot shows to the model as a neighbour (``context``) and as the centre (``own``).

    Both are ``(n, G)`` float32 in the model's input space (expression minus ``offset``, hidden
    entries 0). Under ``'zeroed'`` they are the same array; under ``'median'`` the context shows
    the adaptive median fill at non-visible entries: ``fill`` when given (e.g. the layer's own
    median fill), else :func:`spared_lib.completion.median_complete` of the visible entries.

    Introduced in ``notebooks/03_spackle.py``.
    """
    if rule not in INFERENCE_RULES:
        raise ValueError(f"inference rule must be one of {INFERENCE_RULES}, got {rule!r}")
    x = np.asarray(x, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    own = np.where(visible, x - offset, 0.0).astype(np.float32)
    if rule == "zeroed":
        return own, own
    if fill is None:
        from .baselines import median_complete

        fill = median_complete(adata, x, visible)
    context = (np.where(visible, x, fill) - offset).astype(np.float32)
    return context, own


def gather_inputs(context: torch.Tensor, own: torch.Tensor, nbr: torch.Tensor, centres: torch.Tensor):
    """The ``(B, T, G)`` model input of a batch of centre spots and its ``(B, T)`` padding mask.

    Token 0 is the centre's ``own`` row, tokens 1.. the neighbours' ``context`` rows (0 on padding).
    """
    idx = nbr[centres]
    pad = idx < 0
    e = context[idx.clamp(min=0)].masked_fill(pad[..., None], 0.0)
    e[:, 0] = own[centres]
    return e, pad


@torch.no_grad()
def predict_centres(
    model: SpaCKLE,
    x: np.ndarray,
    visible: np.ndarray,
    nbr: np.ndarray,
    centres: np.ndarray | None = None,
    batch_size: int = 1024,
    device: str | torch.device = "auto",
    *,
    context: np.ndarray | None = None,
) -> np.ndarray:
    """SpaCKLE's reconstruction of the centre spots from the entries they may see.

    Parameters
    ----------
    model
        A trained :class:`SpaCKLE`.
    x, visible
        ``(n, G)`` expression and bool mask of entries the model may see; the centre's other
        entries are 0 in its input.
    nbr
        ``(n, T)`` neighbour indices from :func:`spared_lib.preprocessing.nearest_in_slide` (-1 = padding).
    centres
        Spots to predict (all by default).
    context
        ``(n, G)`` values the neighbours show, in expression units (default: ``x`` where visible,
        else 0 after centring: the ``'zeroed'`` rule). Pass a median-filled matrix for the
        ``'median'`` rule.

    Returns
    -------
    numpy.ndarray
        ``(len(centres), G)`` float32 predictions for every gene of each centre spot.

    Introduced in ``notebooks/03_spackle.py``.
    """
    dev = resolve_device(device)
    centres = np.arange(x.shape[0]) if centres is None else np.asarray(centres)
    offset = model.offset.detach().cpu().numpy()
    own = np.where(visible, x - offset, 0.0).astype(np.float32)
    ctx = own if context is None else (np.asarray(context, np.float32) - offset)
    own_t = torch.as_tensor(own, device=dev)
    ctx_t = own_t if context is None else torch.as_tensor(ctx, device=dev)
    nt = torch.as_tensor(nbr, device=dev)
    was_training = model.training
    model.eval().to(dev)
    out = np.empty((centres.size, x.shape[1]), dtype=np.float32)
    for start in range(0, centres.size, batch_size):  # batches of spots, a handful per slide
        c = torch.as_tensor(centres[start: start + batch_size], device=dev)
        e, pad = gather_inputs(ctx_t, own_t, nt, c)
        out[start: start + c.numel()] = model.forward_centre(e, pad).float().cpu().numpy()
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
    inference: str | None = None,
):
    """Complete the missing entries of ``layer`` with SpaCKLE.

    The centre spot's missing entries (``mask`` False) are zeroed in its input and replaced by
    the model's output; observed values are kept. The neighbours' missing entries are zeroed too
    (``inference='zeroed'``, the paper's rule) or show the layer's own median fill
    (``'median'``). Writes ``layers['c_t_log1p']``,
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
    inference
        :data:`INFERENCE_RULES`; default: the rule the model was validated with (``model.meta``).

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
    rule = inference or meta.get("inference", "zeroed")
    if rule not in INFERENCE_RULES:
        raise ValueError(f"inference must be one of {INFERENCE_RULES}, got {rule!r}")
    nbr = nearest_in_slide(adata, meta.get("n_neighbors", 18), meta.get("radius", "auto"))
    # the layer is median-completed: its missing entries already hold the median fill
    pred = predict_centres(model, x, m, nbr, batch_size=batch_size, device=device,
                           context=x if rule == "median" else None)
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
