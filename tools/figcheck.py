"""Checks of a drawn matplotlib figure that a reader would otherwise make by eye.

:func:`overlapping_labels` finds texts (titles, axis and tick labels, legends, annotations, colour
bar labels) that are drawn over one another. ``tests/test_plotting.py`` runs it on every figure of
``spared_lib.plotting``; ``tools/book.py`` runs it on every figure a chapter shows while the book
is executed, and the browser check (``tests/test_browser.py``) fails on what it found.
"""
from __future__ import annotations


def drawn_texts(fig) -> list[tuple[str, object]]:
    """Every drawn, non-empty text of ``fig`` with its box in display pixels.

    Tick labels outside an axis's view keep stale positions and are not drawn: they are left out.
    """
    import matplotlib.text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            shown = ax.axison and axis.get_visible()  # set_axis_off() hides tick labels, not their Text
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update({id(tick.label1), id(tick.label2)})
            if not shown:
                continue
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * abs(hi - lo)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                ticks.update({id(tick.label1), id(tick.label2)})
                if lo - eps <= tick.get_loc() <= hi + eps:
                    drawn += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    drawn += [t for t in fig.findobj(matplotlib.text.Text) if id(t) not in ticks and t.get_visible()]
    out = []
    for t in drawn:
        if t.get_text().strip() and t.figure is fig:
            box = t.get_window_extent(renderer)
            if box.width > 0 and box.height > 0:
                out += _lines(t, box, renderer)
    return out


def _lines(t, box, renderer) -> list[tuple[str, object]]:
    """One box per line of a horizontal multi-line text (a two-line title is as wide as its
    longer line only there), else the text's box."""
    from matplotlib.transforms import Bbox

    lines = t.get_text().split("\n")
    if len(lines) == 1 or t.get_rotation() % 180:
        return [(t.get_text(), box)]
    align = getattr(t, "_multialignment", None) or t.get_horizontalalignment()
    height = box.height / len(lines)
    out = []
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        width = min(renderer.get_text_width_height_descent(line, t.get_fontproperties(), ismath="TeX" if t.get_usetex() else False)[0],
                    box.width)
        x0 = box.x0 if align == "left" else box.x1 - width if align == "right" else box.x0 + (box.width - width) / 2
        y1 = box.y1 - k * height
        out.append((line, Bbox.from_extents(x0, y1 - height, x0 + width, y1)))
    return out


def overlapping_labels(fig, tolerance: float = 0.15) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes share more than ``tolerance`` of the smaller box."""
    texts = drawn_texts(fig)
    bad = []
    for i, (a, ba) in enumerate(texts):
        for b, bb in texts[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > 0 and h > 0 and w * h > tolerance * min(ba.width * ba.height, bb.width * bb.height):
                bad.append((a, b))
    return bad
