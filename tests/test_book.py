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
