"""Execute every chapter listed in _toc.yml in fast mode through papermill (what CI runs)."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import book  # noqa: E402


@pytest.mark.notebook
@pytest.mark.parametrize("py", book.toc_notebooks(), ids=lambda p: p.stem)
def test_notebook_executes_in_fast_mode(py):
    book.execute([py], fast=True)
    out = book.EXECUTED / "notebooks" / f"{py.stem}.ipynb"
    nb = nbformat.read(out, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code if c.source.strip()
                        and "google.colab" not in c.source), "a cell was not executed"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "FAST = True" in injected[0].source, "papermill did not inject the fast parameters"
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert figures, f"{py.stem} shows no figure"
