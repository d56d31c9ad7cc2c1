"""What every figure of the book shares: its axes, a title that names the data, the unit of a
colour bar, and the lookup of a gene by Ensembl id or symbol.

Conventions (one for every function in :mod:`spared_lib.plotting` and :mod:`spared_lib.widgets`):

- ``ax=`` takes the axes to draw on — one ``Axes`` for a one-panel figure, a sequence (or array) of
  axes for a figure with several panels — and a new figure is made when it is None. The function
  returns the figure.
- ``data_label=`` names the data the figure shows ("her2st", "synthetic", "published SpaRED
  results"); it goes in the title. Figures of an AnnData default to ``uns['dataset']['key']``;
  figures of a table have no default and ask for it.
- A colour bar that shows expression carries its unit (:data:`EXPRESSION_UNIT` for the log layers).

Introduced in ``notebooks/00_quickstart.py``.
"""
from __future__ import annotations

import numpy as np

#: Unit of the ``log1p`` family of layers (SPEC §2: log2 of TPM + 1).
EXPRESSION_UNIT = "log2(TPM+1)"


def _ax(ax, figsize=(6, 4), shape=None, **subplot_kw):
    """Return ``(figure, axes)``: the axes given, or a new figure of ``figsize`` inches.

    ``shape`` None asks for one ``Axes``; ``shape=(rows, cols)`` for an array of axes of that shape
    (axes given by the caller are reshaped to it and must be as many). New figures use matplotlib's
    constrained layout, which keeps titles, tick labels, legends and colour bars from overlapping.
    """
    import matplotlib.pyplot as plt

    if shape is None:
        if ax is None:
            fig, ax = plt.subplots(figsize=figsize, dpi=100, layout="constrained", **subplot_kw)
        elif isinstance(ax, (list, tuple, np.ndarray)):
            raise TypeError(f"this figure has one panel: pass one matplotlib Axes as ax, not {len(ax)}")
        return ax.figure, ax
    rows, cols = shape
    if ax is None:
        fig, axes = plt.subplots(rows, cols, figsize=figsize, dpi=100, squeeze=False, layout="constrained",
                                 **subplot_kw)
        return fig, axes
    axes = np.asarray(ax, dtype=object)
    if axes.size != rows * cols:
        raise ValueError(f"this figure has {rows} x {cols} = {rows * cols} panels; ax holds {axes.size} axes")
    axes = axes.reshape(rows, cols)
    return axes.flat[0].figure, axes


def _data_label(data_label: str | None, adata=None, where: str = "this figure") -> str:
    """The name of the data a figure shows: ``data_label``, else the AnnData's dataset key."""
    if data_label:
        return str(data_label)
    if adata is not None:
        key = (adata.uns.get("dataset") or {}).get("key") if hasattr(adata, "uns") else None
        if key:
            return str(key)
    raise ValueError(f"{where}: name the data the figure shows, e.g. data_label='her2st' "
                     "(a figure always says what it was made from)")


def _title(main: str, data_label: str = "", note: str = "") -> str:
    """A title of up to three lines: what is plotted, which data, and a note."""
    return "\n".join([main] + ([data_label] if data_label else []) + ([note] if note else []))


def layer_unit(layer: str | None) -> str:
    """The unit of a layer's values, for a colour bar or an axis label.

    ``None`` is ``X`` (raw counts, ``DESIGN.md``). Δ layers are expression minus the train-split
    mean of the gene, so they share the log unit with a Δ in front.

    Introduced in ``notebooks/02_preprocessing.py``.
    """
    if layer is None or layer == "counts":
        return "counts"
    name = str(layer)
    if "deltas" in name:
        return f"Δ {EXPRESSION_UNIT}"
    if "log1p" in name:
        return EXPRESSION_UNIT
    if name == "tpm":
        return "TPM"
    return name


def gene_index(adata, gene) -> int:
    """Position of ``gene`` in ``adata.var``: an Ensembl id in ``var_names`` or a ``var['gene_symbol']``
    (the first gene of that symbol).

    Raises
    ------
    KeyError
        When the gene is neither.

    Introduced in ``notebooks/00_quickstart.py``.
    """
    gene = str(gene)
    if gene in adata.var_names:
        return int(adata.var_names.get_loc(gene))
    if "gene_symbol" in adata.var:
        hits = np.flatnonzero(adata.var["gene_symbol"].astype(str).to_numpy() == gene)
        if hits.size:
            return int(hits[0])
    raise KeyError(f"gene {gene!r} is neither in var_names nor in var['gene_symbol'] "
                   f"({adata.n_vars} genes, e.g. {list(adata.var_names[:3])})")


def gene_label(adata, j: int, with_id: bool = True) -> str:
    """``"SYMBOL (ENSG…)"`` for gene position ``j`` (just the id when there is no symbol).

    Introduced in ``notebooks/00_quickstart.py``.
    """
    gene = str(adata.var_names[j])
    symbol = str(adata.var["gene_symbol"].iloc[j]) if "gene_symbol" in adata.var else ""
    if not symbol or symbol == gene:
        return gene
    return f"{symbol} ({gene})" if with_id else symbol


def _colorbar(mappable, ax, label: str, **kw):
    """A colour bar beside ``ax`` (an Axes or several) with its unit as the label."""
    fig = np.asarray(ax, dtype=object).flat[0].figure
    bar = fig.colorbar(mappable, ax=ax, **kw)
    bar.set_label(label)
    return bar


# Where a point's label may go, in points from the point: right, above, left, below, diagonals.
_LABEL_OFFSETS = [(5, 3, "left", "bottom"), (5, -3, "left", "top"), (-5, 3, "right", "bottom"),
                  (-5, -3, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
                  (12, 10, "left", "bottom"), (-12, -10, "right", "top"), (12, -10, "left", "top"),
                  (-12, 10, "right", "bottom"), (0, 16, "center", "bottom"), (0, -16, "center", "top"),
                  (20, 18, "left", "bottom"), (-20, -18, "right", "top"), (20, -18, "left", "top"),
                  (-20, 18, "right", "bottom"), (30, 0, "left", "center"), (-30, 0, "right", "center")]


def _label_points(ax, x, y, labels, colors=None, fontsize=8, marker_px=5.0):
    """Write ``labels`` beside the points ``(x, y)`` without writing one over another.

    Each label takes the first of a few positions around its point whose box stays inside the
    axes and overlaps no label placed before it and no other point (measured on the drawn figure);
    a label with no free position keeps the first.
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()  # positions in pixels need the final layout and scales
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    centres = ax.transData.transform(np.column_stack([x, y]))
    points = [Bbox.from_extents(cx - marker_px, cy - marker_px, cx + marker_px, cy + marker_px) for cx, cy in centres]
    placed, texts = [], []
    for i, (xi, yi, label) in enumerate(zip(x, y, labels)):  # one label per model (a handful)
        colour = colors[i] if colors is not None else "k"
        obstacles = placed + [b for j, b in enumerate(points) if j != i]
        chosen = None
        for dx, dy, ha, va in _LABEL_OFFSETS:
            # a label set further off gets a thin line to its point
            arrow = dict(arrowstyle="-", color=colour, lw=0.5, shrinkA=0, shrinkB=3) if abs(dx) + abs(dy) > 20 else None
            t = ax.annotate(str(label), (xi, yi), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color=colour, arrowprops=arrow)
            box = t.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in obstacles):
                chosen = (t, box)
                break
            t.remove()
        if chosen is None:  # crowded: keep the default position
            dx, dy, ha, va = _LABEL_OFFSETS[0]
            t = ax.annotate(str(label), (xi, yi), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                            fontsize=fontsize, color=colour)
            chosen = (t, t.get_window_extent(renderer))
        texts.append(chosen[0])
        placed.append(chosen[1])
    return texts


def glue(name: str, value, display: bool = True):
    """Store ``value`` under ``name`` for the book's prose (myst-nb's ``glue``), or just show it.

    In the book build myst-nb is installed and ``{glue:text}`name``` in a chapter's prose shows the
    value a cell computed, so the text always agrees with the outputs. Where myst-nb is absent (a Colab
    run installs only the library) the value is printed when ``display`` is true, which is what a
    reader running the notebook wants to see.

    Introduced in ``notebooks/01_spared_database.py``.
    """
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        if display:
            print(f"{name}: {value}")
        return
    myst_glue(name, value, display=display)
