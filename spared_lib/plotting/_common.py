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
