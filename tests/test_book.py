"""Build the HTML book from the executed notebooks with warnings as errors."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import book  # noqa: E402


@pytest.fixture(scope="module")
def built_book():
    stale = [py for py in book.toc_notebooks()
             if not (book.EXECUTED / "notebooks" / f"{py.stem}.ipynb").exists()
             or (book.EXECUTED / "notebooks" / f"{py.stem}.ipynb").stat().st_mtime < py.stat().st_mtime]
    if stale:  # e.g. when this file is run alone
        book.execute(stale, fast=True)
    return book.build()


@pytest.mark.book
def test_book_builds_with_every_page(built_book):
    html = built_book.parent
    for entry in book.toc_entries():
        page = html / f"{entry}.html"
        assert page.exists(), f"{page} missing"
    assert (html / "index.html").exists()


@pytest.mark.book
def test_notebook_pages_show_figures_and_a_colab_button(built_book):
    html = built_book.parent
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    repo = cfg["repository"]["url"].removeprefix("https://github.com/")
    for py in book.toc_notebooks():
        text = (html / "notebooks" / f"{py.stem}.html").read_text()
        assert re.search(r'<img[^>]+src="[^"]*_images/[^"]+\.png"', text), f"{py.stem}: no figure on the page"
        colab = f"https://colab.research.google.com/github/{repo}/blob/{cfg['repository']['branch']}/notebooks/{py.stem}.ipynb"
        assert colab in text, f"{py.stem}: no Colab button pointing at {colab}"
        assert "Traceback" not in text, f"{py.stem}: an error output made it into the book"


def test_setup_cell_records_figure_titles_and_quiets_lightning():
    """What tools/book.py runs first in every chapter's kernel: the titles of each figure go into
    its output's metadata (the browser check reads them) and Lightning's INFO banners are muted."""
    import logging

    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import matplotlib_inline.backend_inline as inline

    original = inline._fetch_figure_metadata
    levels = {n: logging.getLogger(n).level for n in ("lightning.pytorch", "spared_lib")}
    try:
        exec(book.SETUP_SOURCE, {})
        fig, (a, b) = plt.subplots(1, 2)
        fig.suptitle("her2st_hne: two panels")
        a.set_title("left panel")
        meta = inline._fetch_figure_metadata(fig)
        assert meta["book_titles"] == ["her2st_hne: two panels", "left panel"]
        assert meta["book_overlaps"] == []
        a.set_xticks(range(40), [f"tick {i}" for i in range(40)])  # crowded: drawn over one another
        assert inline._fetch_figure_metadata(fig)["book_overlaps"]
        assert logging.getLogger("lightning.pytorch").level == logging.WARNING
        assert logging.getLogger("spared_lib").level == logging.WARNING
    finally:
        inline._fetch_figure_metadata = original
        for n, lv in levels.items():
            logging.getLogger(n).setLevel(lv)
        plt.close("all")


def test_tidy_executed_drops_the_setup_cell_and_hides_the_injected_parameters(tmp_path):
    import nbformat

    nb = book._with_setup_cell(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("FAST = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("# Parameters\nFAST = True\n", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(FAST)")]))
    assert book.SETUP_TAG in nb.cells[0].metadata["tags"]
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    book.tidy_executed(path)
    cells = nbformat.read(path, as_version=4).cells
    assert [c.source for c in cells] == ["FAST = False", "# Parameters\nFAST = True\n", "print(FAST)"]
    assert cells[0].metadata["tags"] == ["parameters"]  # the defaults a reader runs stay on the page
    assert cells[1].metadata["tags"] == ["injected-parameters", "remove-cell"]
    book.tidy_executed(path)  # idempotent
    assert nbformat.read(path, as_version=4).cells[1].metadata["tags"] == ["injected-parameters", "remove-cell"]


def test_the_intro_lists_every_chapter_with_its_fast_mode_time():
    """The run-time table of the introduction has one row per chapter of the table of contents."""
    import jupytext

    text = (REPO / "book" / "intro.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| chapter")]
    assert len(table) == len(book.toc_notebooks()), table
    for row, py in zip(table, book.toc_notebooks()):
        title = jupytext.read(py).cells[0].source.splitlines()[0].removeprefix("# ")
        name = row.split("|")[1].strip()
        assert re.sub(r"^\d+\.\s*", "", name).lower() in title.lower(), (name, title)
        assert re.search(r"\d+(–\d+)?\s*min", row.split("|")[2]), f"{name}: no fast-mode time"
