"""Interactive explorers of a slide's expression maps and spots, with static fallbacks.

Two explorers, each a set of ipywidgets controls over a matplotlib figure:

- :func:`explore_expression` — pick a slide, a gene and a source of values (the raw ``log1p``
  layer, the median-completed layer, SpaCKLE's completion, or a model's prediction) and see the
  map over the H&E image;
- :func:`explore_spot` — pick a spot and see where it is, its image patch and its expression
  profile in every source.

Each explorer draws its current state as a PNG image in a display of its own and redraws that
display when a control changes. The executed notebook therefore keeps a real figure of the initial
state, which is what the built book shows where no kernel runs (the controls there are inert).
The drawing functions (:func:`expression_map`, :func:`spot_view`) work without ipywidgets.

Introduced in ``notebooks/07_your_own_data.py``.
"""
from __future__ import annotations

import io
from typing import Callable, Mapping

import numpy as np

# One gene lookup for the library's figures; re-exported here because the explorers take genes too.
from .plotting._common import EXPRESSION_UNIT, _ax, _data_label, gene_index, gene_label, layer_unit

__all__ = ["DEFAULT_LAYERS", "Explorer", "crop", "default_genes", "explore_expression", "explore_spot",
           "expression_map", "expression_sources", "figure_png", "gene_index", "spot_patch", "spot_profile",
           "spot_view"]

#: Layers shown by default, in this order, when present: label → layer name.
DEFAULT_LAYERS = {
    "raw (log1p)": "log1p",
    "median (c_d_log1p)": "c_d_log1p",
    "SpaCKLE (c_t_log1p)": "c_t_log1p",
}


# --------------------------------------------------------------------------- value sources
def expression_sources(adata, predictions: Mapping[str, np.ndarray] | None = None,
                       layers: Mapping[str, str] | None = None) -> dict:
    """The sources of expression values an explorer offers: label → layer name or ``(n, G)`` array.

    Parameters
    ----------
    adata
        Preprocessed AnnData (see ``DESIGN.md``).
    predictions
        Model predictions, name → array of shape ``(adata.n_obs, adata.n_vars)`` on the scale of
        the layer the model was trained on (e.g. from ``spared_lib.training.predict``). NaN marks
        spots without a prediction. Shown as ``"prediction: <name>"``.
    layers
        label → layer name; default :data:`DEFAULT_LAYERS`, keeping the layers ``adata`` has.

    Returns
    -------
    dict
        Insertion-ordered; layers first, then predictions.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    wanted = dict(DEFAULT_LAYERS if layers is None else layers)
    if layers is not None:
        missing = [name for name in wanted.values() if name not in adata.layers]
        if missing:
            raise KeyError(f"layers {missing} not in adata.layers (it has {sorted(adata.layers)})")
    sources: dict = {label: name for label, name in wanted.items() if name in adata.layers}
    for name, values in (predictions or {}).items():
        values = np.asarray(values, dtype=float)
        if values.shape != (adata.n_obs, adata.n_vars):
            raise ValueError(f"predictions[{name!r}] has shape {values.shape}; expected "
                             f"(n_obs, n_vars) = {(adata.n_obs, adata.n_vars)}")
        sources[f"prediction: {name}"] = values
    if not sources:
        raise ValueError(f"nothing to show: adata has none of the layers {list(wanted.values())} "
                         "and no predictions were given (run spared_lib.preprocessing.preprocess first)")
    return sources


def _matrix(adata, source) -> np.ndarray:
    """The ``(n_obs, n_vars)`` values of a source (a layer name or an array)."""
    import scipy.sparse as sp

    values = adata.layers[source] if isinstance(source, str) else source
    return values.toarray() if sp.issparse(values) else np.asarray(values)


def _dataset_name(adata, data_label=None) -> str:
    try:
        return _data_label(data_label, adata)
    except ValueError:  # a section read on its own: the slide's name is all there is
        return "data"


def _slides(adata) -> list[str]:
    return [str(s) for s in adata.obs["slide_id"].astype("category").cat.categories]


def _slide_spots(adata, slide_id: str) -> np.ndarray:
    sel = np.flatnonzero(adata.obs["slide_id"].astype(str).to_numpy() == str(slide_id))
    if sel.size == 0:
        raise ValueError(f"slide {slide_id!r} not found; slides: {_slides(adata)}")
    return sel


def default_genes(adata, n: int = 20) -> np.ndarray:
    """Indices of up to ``n`` genes to show first: highest Moran's I when known, else file order.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    if "d_log1p_moran" in adata.var:
        order = np.argsort(-adata.var["d_log1p_moran"].to_numpy(float), kind="stable")
    else:
        order = np.arange(adata.n_vars)
    return order[:n]


# --------------------------------------------------------------------------- static figures
def expression_map(adata, gene: str, source: str, *, sources: Mapping | None = None,
                   slide_id: str | None = None, ax=None, shared_scale: bool = True,
                   cmap: str = "viridis", data_label: str | None = None, colorbar_label: str | None = None):
    """Map one gene of one source over the H&E image of one slide.

    Parameters
    ----------
    gene
        Ensembl id or gene symbol.
    source
        A label of ``sources`` (e.g. ``"SpaCKLE (c_t_log1p)"``).
    sources
        From :func:`expression_sources` (built from ``adata`` when None).
    shared_scale
        Use one colour scale for every source (the 1st–99th percentile of the gene over all of
        them on this slide), so that switching sources compares like with like.
    data_label
        The data's name in the title (default ``uns['dataset']['key']``).
    colorbar_label
        Unit of the colour bar; default: the layer's (:func:`spared_lib.plotting.layer_unit`),
        log2(TPM+1) for a prediction.

    Returns
    -------
    matplotlib.figure.Figure

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    from .plotting.spatial import spatial_scatter

    sources = expression_sources(adata) if sources is None else sources
    if source not in sources:
        raise KeyError(f"source {source!r} not offered; choose one of {list(sources)}")
    slide_id = str(slide_id if slide_id is not None else _slides(adata)[0])
    sel = _slide_spots(adata, slide_id)
    j = gene_index(adata, gene)
    values = _matrix(adata, sources[source])[sel, j]
    vmin = vmax = None
    if shared_scale:
        every = np.concatenate([_matrix(adata, s)[sel, j] for s in sources.values()])
        every = every[np.isfinite(every)]
        if every.size:
            vmin, vmax = np.percentile(every, [1, 99])
    # Three short lines rather than two long ones: panels of several sources sit side by side.
    title = f"{_dataset_name(adata, data_label)} — {slide_id}\n{gene_label(adata, j)}\n{source}"
    if colorbar_label is None:
        colorbar_label = layer_unit(sources[source]) if isinstance(sources[source], str) else EXPRESSION_UNIT
    return spatial_scatter(adata, values, slide_id=slide_id, ax=ax, cmap=cmap, title=title,
                           vmin=vmin, vmax=vmax, colorbar_label=colorbar_label)


def crop(image: np.ndarray, centre_xy, half: int) -> np.ndarray:
    """The ``(2*half, 2*half)`` window of ``image`` centred on ``centre_xy`` (x = column, y = row),
    padded with white where it runs off the image.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    image = np.asarray(image)
    if half < 1:
        raise ValueError(f"half must be at least 1 pixel, got {half}")
    x, y = (int(round(float(c))) for c in centre_xy)
    fill = 255 if image.dtype == np.uint8 else (1.0 if image.dtype.kind == "f" else 0)
    out = np.full((2 * half, 2 * half) + image.shape[2:], fill, dtype=image.dtype)
    r0, c0 = y - half, x - half
    rs, re = max(r0, 0), min(y + half, image.shape[0])
    cs, ce = max(c0, 0), min(x + half, image.shape[1])
    if rs < re and cs < ce:
        out[rs - r0:re - r0, cs - c0:ce - c0] = image[rs:re, cs:ce]
    return out


def spot_patch(adata, spot: int, patches=None, context: float = 3.0) -> tuple[np.ndarray | None, str]:
    """The image of one spot and a caption: ``patches[spot]`` when given, else a crop of the slide's
    stored image ``context`` spot diameters wide (coarse where only a low-res image exists).

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    from .plotting.spatial import slide_image

    if patches is not None:
        return np.asarray(patches[spot]), f"patch {patches[spot].shape[0]} px"
    slide_id = str(adata.obs["slide_id"].iloc[spot])
    image, scale = slide_image(adata, slide_id)
    if image is None:
        return None, "no image stored for this slide"
    diameter = adata.uns["spatial"][slide_id].get("scalefactors", {}).get("spot_diameter_fullres", 0)
    half = max(int(np.ceil(context * diameter * scale / 2)), 4)
    xy = np.asarray(adata.obsm["spatial"][spot], dtype=float) * scale
    return crop(image, xy, half), f"stored image, {2 * half} px ≈ {context:g} spot diameters"


def spot_profile(adata, spot: int, *, sources: Mapping | None = None, genes=None, ax=None):
    """Dot plot of one spot's expression, one row per gene and one marker colour per source.

    Hollow markers are entries Visium did not observe (``layers['mask']`` False): the raw value
    there is a zero and the completed values are estimates.

    Returns
    -------
    matplotlib.figure.Figure

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    import matplotlib.pyplot as plt

    sources = expression_sources(adata) if sources is None else sources
    genes = default_genes(adata) if genes is None else np.asarray(
        [gene_index(adata, g) if isinstance(g, str) else int(g) for g in genes])
    _, ax = _ax(ax, (4, 0.25 * len(genes) + 1))
    observed = (np.asarray(_matrix(adata, "mask")[spot, genes], dtype=bool)
                if "mask" in adata.layers else np.ones(len(genes), bool))
    rows = np.arange(len(genes))
    colours = plt.get_cmap("tab10")
    for k, (label, source) in enumerate(sources.items()):
        values = _matrix(adata, source)[spot, genes]
        ax.scatter(values[observed], rows[observed], color=colours(k % 10), label=label, s=24, zorder=3)
        ax.scatter(values[~observed], rows[~observed], facecolors="none", edgecolors=colours(k % 10),
                   s=24, zorder=3)
    ax.set_yticks(rows, [gene_label(adata, j, with_id=False) for j in genes], fontsize="small")
    ax.invert_yaxis()
    ax.grid(axis="y", lw=0.3)
    ax.set_xlabel(f"expression ({EXPRESSION_UNIT})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize="small")
    return ax.figure


def spot_view(adata, spot: int, *, sources: Mapping | None = None, patches=None, genes=None, ax=None,
              data_label: str | None = None):
    """Three panels for one spot: where it is on the slide, its image, and its expression profile.

    Parameters
    ----------
    spot
        Row of ``adata`` (an integer position).
    patches
        Optional array-like ``(n_obs, H, W, 3)`` aligned with ``adata.obs`` (e.g. from
        ``spared_lib.preprocessing.extract_patches``).
    ax
        Three axes: map, image, profile (a new figure when None).

    Returns
    -------
    matplotlib.figure.Figure

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    from .plotting.spatial import slide_image, spatial_scatter

    spot = int(spot)
    if not 0 <= spot < adata.n_obs:
        raise IndexError(f"spot {spot} out of range: adata has {adata.n_obs} spots")
    sources = expression_sources(adata) if sources is None else sources
    slide_id = str(adata.obs["slide_id"].iloc[spot])
    fig, axes = _ax(ax, (12, 4.2), shape=(1, 3),
                    gridspec_kw={"width_ratios": [1.1, 0.8, 1.2]} if ax is None else None)
    ax_map, ax_patch, ax_prof = axes.flat
    sel = _slide_spots(adata, slide_id)
    spatial_scatter(adata, None, slide_id=slide_id, ax=ax_map, alpha=0.25,
                    title=f"{_dataset_name(adata, data_label)} — {slide_id}")
    _, scale = slide_image(adata, slide_id)
    x, y = np.asarray(adata.obsm["spatial"][spot], dtype=float) * scale
    ax_map.scatter([x], [y], s=120, facecolors="none", edgecolors="red", linewidths=2)
    patch, caption = spot_patch(adata, spot, patches)
    if patch is not None:
        ax_patch.imshow(patch)
    ax_patch.set_axis_off()
    ax_patch.set_title(f"spot {adata.obs_names[spot]}\n{caption}", fontsize="small")
    spot_profile(adata, spot, sources=sources, genes=genes, ax=ax_prof)
    ax_prof.set_title(f"expression of spot {spot} (of {sel.size} on the slide)", fontsize="small")
    return fig


# --------------------------------------------------------------------------- explorers
def figure_png(fig, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes (independent of the active backend)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    if close:
        plt.close(fig)
    return buffer.getvalue()


class Explorer:
    """ipywidgets controls over a figure drawn by ``draw(**state)``.

    Displaying an ``Explorer`` in a notebook shows the controls and, below them, a PNG of the
    current state in a display of its own; every change of a control redraws that display. Without
    a kernel (the built book) the PNG of the initial state remains.

    Parameters
    ----------
    draw
        ``draw(**state) -> matplotlib.figure.Figure``.
    options
        state name → list of choices (``(label, value)`` pairs or values) for a dropdown, or a
        ``(min, max)`` tuple of ints for a slider.
    state
        The initial value of each control.

    Introduced in ``notebooks/07_your_own_data.py``.
    """

    def __init__(self, draw: Callable, options: Mapping, state: Mapping,
                 on_change: Callable | None = None):
        self.draw = draw
        self.options = dict(options)
        self.state = dict(state)
        self.on_change = on_change
        self._controls = None
        self._handle = None

    def figure(self):
        """A new figure of the current state."""
        return self.draw(**self.state)

    def png(self) -> bytes:
        """The current state as PNG bytes."""
        return self._render()[0]

    def _render(self) -> tuple[bytes, dict]:
        """PNG bytes of the current state and the display metadata: the figure's titles under
        ``book_titles``, the key the book's own figures carry (tools/book.py), so that the check
        of the built book can see which data the explorer shows."""
        fig = self.figure()
        titles = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        titles += [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
        return figure_png(fig), {"book_titles": [t for t in titles if t.strip()]}

    def _repr_png_(self):
        return self.png()

    @property
    def controls(self):
        """The ipywidgets box of controls (built on first use)."""
        if self._controls is None:
            import ipywidgets as w

            widgets = {}
            for name, choices in self.options.items():
                if isinstance(choices, tuple):
                    widgets[name] = w.IntSlider(value=self.state[name], min=choices[0], max=choices[1],
                                                description=name, continuous_update=False)
                else:
                    widgets[name] = w.Dropdown(options=choices, value=self.state[name], description=name)
                widgets[name].observe(self._changed, names="value")
            self.widgets = widgets
            self._controls = w.HBox(list(widgets.values()))
        return self._controls

    def set(self, **changes) -> None:
        """Change the state (as the controls do) and redraw the display."""
        unknown = set(changes) - set(self.options)
        if unknown:
            raise KeyError(f"unknown controls {sorted(unknown)}; this explorer has {list(self.options)}")
        self.state.update(changes)
        if self.on_change is not None:
            self.on_change(self, changes)
        if self._controls is not None:
            for name in changes:
                if self.widgets[name].value != self.state[name]:
                    self.widgets[name].value = self.state[name]
        if self._handle is not None:
            from IPython.display import Image

            png, metadata = self._render()
            self._handle.update(Image(data=png), metadata=metadata)

    def _changed(self, change) -> None:
        name = next(k for k, v in self.widgets.items() if v is change["owner"])
        if self.state.get(name) != change["new"]:
            self.set(**{name: change["new"]})

    def _ipython_display_(self):
        from IPython.display import Image, display

        display(self.controls)
        png, metadata = self._render()
        self._handle = display(Image(data=png), display_id=True, metadata=metadata)


def explore_expression(adata, *, predictions: Mapping[str, np.ndarray] | None = None,
                       layers: Mapping[str, str] | None = None, slide_id: str | None = None,
                       gene: str | None = None, source: str | None = None) -> Explorer:
    """Explorer of expression maps: choose a slide, a gene and a source (raw, median, SpaCKLE or a
    model's prediction) and see the map over the H&E image.

    Parameters
    ----------
    adata
        Preprocessed AnnData.
    predictions, layers
        Passed to :func:`expression_sources`.
    slide_id, gene, source
        Initial state (defaults: the first slide, the gene with the highest Moran's I, the last
        source — SpaCKLE or a prediction when present).

    Returns
    -------
    Explorer
        Display it (make it a cell's last expression) to get the controls and the map.

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    sources = expression_sources(adata, predictions, layers)
    slides = _slides(adata)
    genes = [(gene_label(adata, j), str(adata.var_names[j])) for j in
             np.r_[default_genes(adata, adata.n_vars)]]
    state = {"slide": str(slide_id) if slide_id is not None else slides[0],
             "gene": str(adata.var_names[gene_index(adata, gene)]) if gene is not None else genes[0][1],
             "source": source if source is not None else list(sources)[-1]}
    if state["source"] not in sources:
        raise KeyError(f"source {state['source']!r} not offered; choose one of {list(sources)}")
    _slide_spots(adata, state["slide"])

    def draw(slide, gene, source):
        _, ax = _ax(None, (6, 5))
        return expression_map(adata, gene, source, sources=sources, slide_id=slide, ax=ax)

    return Explorer(draw, {"slide": slides, "gene": genes, "source": list(sources)}, state)


def explore_spot(adata, *, predictions: Mapping[str, np.ndarray] | None = None,
                 layers: Mapping[str, str] | None = None, patches=None, slide_id: str | None = None,
                 spot: int = 0, genes=None) -> Explorer:
    """Explorer of single spots: choose a slide and a spot and see its place on the slide, its
    image and its expression profile in every source.

    Parameters
    ----------
    patches
        Optional array-like ``(n_obs, H, W, 3)`` aligned with ``adata.obs``; without it a crop of
        the stored slide image is shown.
    spot
        Initial spot, counted within the slide.
    genes
        Genes of the profile (default: the 20 with the highest Moran's I).

    Returns
    -------
    Explorer

    Introduced in ``notebooks/07_your_own_data.py``.
    """
    sources = expression_sources(adata, predictions, layers)
    slides = _slides(adata)
    slide_id = str(slide_id) if slide_id is not None else slides[0]
    spots = {s: _slide_spots(adata, s) for s in slides}
    if not 0 <= spot < spots[slide_id].size:
        raise IndexError(f"spot {spot} out of range: slide {slide_id!r} has {spots[slide_id].size} spots")

    def draw(slide, spot):
        return spot_view(adata, int(spots[slide][spot]), sources=sources, patches=patches, genes=genes)

    def on_change(explorer, changes):
        # A new slide has a different number of spots: keep the slider in range.
        if "slide" in changes:
            n = spots[explorer.state["slide"]].size
            explorer.state["spot"] = min(explorer.state["spot"], n - 1)
            if explorer._controls is not None:
                explorer.widgets["spot"].max = n - 1

    return Explorer(draw, {"slide": slides, "spot": (0, spots[slide_id].size - 1)}, {"slide": slide_id, "spot": int(spot)},
                    on_change=on_change)
