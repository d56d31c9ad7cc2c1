"""Spatial maps: spots coloured by a value, drawn over the slide's H&E image.

Introduced in ``notebooks/00_quickstart.py``.
"""
from __future__ import annotations

import numpy as np

from ._common import _ax, _colorbar, _data_label, _title, gene_index, layer_unit


def slide_image(adata, slide_id: str, res: str = "hires"):
    """Return ``(image, scale)`` for one slide: the stored image and its full-res → image scale.

    Falls back from ``hires`` to ``lowres`` (and the other way) when one is missing.
    Returns ``(None, 1.0)`` when the slide carries no image.

    Introduced in ``notebooks/00_quickstart.py``.
    """
    info = adata.uns.get("spatial", {}).get(slide_id)
    if info is None:
        raise KeyError(f"adata.uns['spatial'] has no entry for slide {slide_id!r}; "
                       f"slides: {list(adata.uns.get('spatial', {}))}")
    images = info.get("images", {})
    scalefactors = info.get("scalefactors", {})
    for key in (res, "lowres" if res == "hires" else "hires"):
        if key in images and images[key] is not None:
            return np.asarray(images[key]), float(scalefactors.get(f"tissue_{key}_scalef", 1.0))
    return None, 1.0


def spatial_scatter(adata, color=None, *, slide_id=None, layer=None, res="hires", ax=None,
                    cmap="viridis", title=None, data_label=None, size=None, vmin=None, vmax=None,
                    colorbar=True, colorbar_label=None, alpha=1.0, crop=True):
    """Draw the spots of one slide over its H&E image, coloured by a gene, an ``obs`` column or values.

    Parameters
    ----------
    adata
        AnnData with ``obsm['spatial']`` (full-resolution pixels), ``obs['slide_id']`` and
        ``uns['spatial'][slide_id]`` (see ``DESIGN.md``).
    color
        A gene (``var_names`` or ``var['gene_symbol']``), an ``obs`` column, an array with one value
        per spot of the slide, or None for plain spots.
    slide_id
        Which slide (default: the first).
    layer
        Layer to read a gene from (default ``X``).
    res
        ``'hires'`` or ``'lowres'`` background image.
    ax
        Matplotlib axes (created when None).
    title
        The title; default: the data, the slide and ``color`` when it is a name.
    data_label
        The data's name for the default title (default ``uns['dataset']['key']`` when present).
    size
        Marker size in points²; default: the spot diameter at the image's scale.
    colorbar_label
        Label of the colour bar; default: the unit of ``layer`` for a gene
        (:func:`spared_lib.plotting.layer_unit`, e.g. log2(TPM+1)), the column's name for an
        ``obs`` column. Values given as an array have no default: name their unit here.
    crop
        Show only the part of the image around the spots drawn (plus one spot diameter); False
        shows the whole image (a Visium capture area is larger than most tissue, and a crop of a
        few hundred spots is a small part of it).

    Returns
    -------
    matplotlib.figure.Figure

    Introduced in ``notebooks/00_quickstart.py``.
    """
    import matplotlib.pyplot as plt
    import pandas as pd

    if "slide_id" in adata.obs:
        slides = adata.obs["slide_id"].astype(str)
    else:  # a single section read on its own (e.g. read_visium / read_st): its one library
        libraries = list(adata.uns.get("spatial", {})) or ["slide"]
        if len(libraries) != 1:
            raise ValueError(f"obs has no 'slide_id' column and uns['spatial'] holds {len(libraries)} slides")
        slides = pd.Series(libraries[0], index=adata.obs_names)
    slide_id = str(slide_id if slide_id is not None else slides.iloc[0])
    sel = np.flatnonzero(slides.to_numpy() == slide_id)
    if sel.size == 0:
        raise ValueError(f"slide {slide_id!r} not found; slides: {sorted(slides.unique())}")
    _, ax = _ax(ax, (5, 5))
    image, scale = slide_image(adata, slide_id, res)
    xy = np.asarray(adata.obsm["spatial"])[sel] * scale
    if image is not None:
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    values, categorical = _values(adata, color, sel, layer)
    diameter = adata.uns["spatial"][slide_id].get("scalefactors", {}).get("spot_diameter_fullres")
    shown_width = image.shape[1] if image is not None else None
    if image is not None and crop and xy.size:
        pad = (diameter or 0) * scale * 1.5 + 2
        x0, x1 = max(xy[:, 0].min() - pad, -0.5), min(xy[:, 0].max() + pad, image.shape[1] - 0.5)
        y0, y1 = max(xy[:, 1].min() - pad, -0.5), min(xy[:, 1].max() + pad, image.shape[0] - 0.5)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y1, y0)  # image rows grow downwards
        shown_width = max(x1 - x0, y1 - y0)
    if size is None:
        # Spot diameter in display points, so spots look like spots whatever the figure size.
        fig = ax.figure
        if diameter and image is not None:
            px_per_unit = ax.get_window_extent().width / max(shown_width, 1)  # display px per image px
            size = max((diameter * scale * px_per_unit * 72 / fig.dpi) ** 2, 1.0)
        else:
            size = 8.0
    if values is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=size, c="tab:blue", alpha=alpha, linewidths=0)
    elif categorical:
        cats = pd.Categorical(values)
        palette = plt.get_cmap("tab20" if len(cats.categories) > 10 else "tab10")
        for i, cat in enumerate(cats.categories):
            m = cats.codes == i
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=palette(i % palette.N), label=str(cat),
                       alpha=alpha, linewidths=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small",
                  markerscale=max(1.0, 6.0 / np.sqrt(size)))
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, c=values, cmap=cmap, vmin=vmin, vmax=vmax,
                        alpha=alpha, linewidths=0)
        if colorbar:
            if colorbar_label is None:
                colorbar_label = (color if isinstance(color, str) and color in adata.obs.columns
                                  else layer_unit(layer) if isinstance(color, str) else "")
            _colorbar(sc, ax, colorbar_label, fraction=0.046, pad=0.04)
    if image is None:
        ax.invert_yaxis()
        ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is None:
        what = f"{slide_id}" + (f" — {color}" if isinstance(color, str) else "")
        try:
            title = _title(what, _data_label(data_label, adata))
        except ValueError:  # a section read on its own (read_visium) has no dataset key: its slide names it
            title = what
    ax.set_title(title)
    return ax.figure


def _values(adata, color, sel, layer):
    """Resolve ``color`` to one value per selected spot, and whether it is categorical."""
    import pandas as pd
    import scipy.sparse as sp

    if color is None:
        return None, False
    if isinstance(color, str):
        if color in adata.obs.columns:
            col = adata.obs[color].iloc[sel]
            categorical = not pd.api.types.is_numeric_dtype(col) or isinstance(col.dtype, pd.CategoricalDtype)
            return col.to_numpy(), categorical
        try:
            j = gene_index(adata, color)
        except KeyError:
            raise KeyError(f"{color!r} is neither an obs column nor a gene (var_names or var['gene_symbol'])") from None
        matrix = adata.layers[layer] if layer is not None else adata.X
        column = matrix[sel][:, j]
        column = column.toarray() if sp.issparse(column) else np.asarray(column)
        return column.ravel().astype(float), False
    values = np.asarray(color)
    if values.shape[0] == adata.n_obs:
        values = values[sel]
    if values.shape[0] != sel.size:
        raise ValueError(f"color has {values.shape[0]} values; the slide has {sel.size} spots")
    return values, values.dtype.kind in "OUSb"
