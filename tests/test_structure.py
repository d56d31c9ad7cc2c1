"""The repository's shape: notebooks paired and in sync, one parameters cell, a Colab-only install
cell that reads the one repository URL, every chapter in the table of contents, light imports."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import book  # noqa: E402

SOURCES = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.py"))
CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_notebooks():
    assert SOURCES, "notebooks/ has no NN_topic.py sources"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_ipynb_is_generated_from_py(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `make notebooks`"
    nb = nbformat.read(ipynb, as_version=4)
    assert _cells(nb) == _cells(jupytext.read(py)), f"{ipynb.name} is out of date with {py.name}: run `make notebooks`"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{ipynb.name} carries outputs"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_notebook_skeleton(py):
    nb = jupytext.read(py)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{py.name}: {len(params)} cells tagged 'parameters' (want exactly one)"
    assert "FAST = False" in params[0].source, f"{py.name}: parameters cell must default to FAST = False"
    # Plain values only: assignments of literals, no calls or imports.
    for line in params[0].source.splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*\s*=\s*.+", line) and "(" not in line, \
                f"{py.name}: parameters cell line is not a plain value: {line!r}"

    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{py.name}: starts without a title"
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "What you need" in text, f"{py.name}: no 'What you need' (compute needs) box"
    assert len(re.findall(r"\{admonition\} Exercise", text)) >= 2, f"{py.name}: fewer than two exercises"
    assert len(re.findall(r"\{dropdown\} Solution", text)) >= 2, f"{py.name}: exercises need dropdown solutions"
    assert re.search(r"^## Summary", text, re.M), f"{py.name}: no Summary section"

    install = [c for c in nb.cells if c.cell_type == "code" and "google.colab" in c.source]
    assert len(install) == 1, f"{py.name}: needs exactly one Colab-only install cell"
    cell = install[0]
    assert nb.cells.index(cell) < nb.cells.index(params[0]), f"{py.name}: install cell must precede parameters"
    assert "remove-cell" in cell.metadata.get("tags", []), f"{py.name}: hide the install cell (tag remove-cell)"
    assert re.search(r'if "google\.colab" in sys\.modules:', cell.source)
    repo = re.search(r'REPOSITORY = "([^"]+)"', cell.source)
    assert repo and repo.group(1) == CONFIG["repository"]["url"], \
        f"{py.name}: the install cell must use repository.url from _config.yml"
    assert not re.search(r"\btorch(vision)?\b", cell.source.split("REPOSITORY")[1]), \
        f"{py.name}: the Colab install cell must not (re)install torch"


def test_every_notebook_is_in_the_toc_and_every_toc_file_exists():
    entries = book.toc_entries()
    for f in entries:
        assert any((REPO / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {f}"
    listed = {f for f in entries if f.startswith("notebooks/")}
    for py in SOURCES:
        assert f"notebooks/{py.stem}" in listed, f"{py.name} is not listed in _toc.yml"


def test_fast_parameters_exist_in_the_parameters_cell():
    fast = yaml.safe_load((REPO / "notebooks" / "fast_params.yml").read_text())
    stems = {p.stem for p in SOURCES}
    for stem, params in fast.items():
        if stem not in stems:
            continue
        cell = next(c for c in jupytext.read(REPO / "notebooks" / f"{stem}.py").cells
                    if "parameters" in c.metadata.get("tags", []))
        assert params.get("FAST") is True, f"fast_params.yml: {stem} must set FAST: true"
        for name in params:
            assert re.search(rf"^{name}\s*=", cell.source, re.M), f"{stem}: fast parameter {name} not in its parameters cell"


def test_jupytext_config_keeps_the_parameters_tag():
    cfg = tomllib.loads((REPO / "jupytext.toml").read_text())
    assert "py:percent" in cfg["formats"]
    assert "cell_metadata_filter" not in cfg, "a cell metadata filter can drop the 'parameters' tag (jupytext #714)"


def test_book_config():
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert all(CONFIG["html"][k] for k in ("use_repository_button", "use_issues_button", "use_edit_page_button"))
    assert "intersphinx" not in (REPO / "_config.yml").read_text()
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    for part in toc["parts"]:
        assert part.get("caption"), part
        # Parts I-IV and beyond are numbered; the quickstart (chapter 00) and reading pages are not,
        # so that chapter N is notebooks/0N_*.
        if any(c["file"].startswith("notebooks/") and not c["file"].startswith("notebooks/00_")
               for c in part.get("chapters") or []):
            assert part.get("numbered") is True, f"part {part['caption']!r} must be numbered"


def test_environment_yml_installs_exactly_the_project():
    """conda users get the same dependencies as pip users: environment.yml defers to pyproject."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "python=3.11" in conda and "pip" in conda
    # Only python and pip come from conda; any other conda package would be a second, drifting list.
    assert sorted(conda) == ["pip", "python=3.11"]
    assert len(pip) == 1 and re.fullmatch(r"-e \.\[([a-z,]+)\]", pip[0]), pip
    extras = re.fullmatch(r"-e \.\[([a-z,]+)\]", pip[0]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), extras


def test_dependencies_are_ranges_not_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"exact pins belong in a lock file, not the package metadata: {pinned}"
    torch = next(r for r in project["dependencies"] if r.startswith("torch>"))
    assert "2.14.1" not in torch  # a range that admits Colab's torch as well as the local 2.14.1


def test_import_is_light():
    """`import spared_lib` must not drag in torch, squidpy or scanpy (they load on first use)."""
    code = "import sys, spared_lib; print(','.join(m for m in ('torch', 'squidpy', 'scanpy', 'lightning') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import spared_lib imported {out.stdout.strip()}"
