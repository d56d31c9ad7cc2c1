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


#: The subpackages and modules a reader imports, and the heavy libraries each may load on import.
#: Only ``training`` may: it is the Lightning trainer, whose module and dataset classes subclass
#: ``lightning.LightningModule`` and ``torch.utils.data.Dataset`` and so need both to be defined;
#: whoever imports it is about to train. Every other one defers torch, Lightning, squidpy, scanpy and
#: Ray to the function that needs them, so that reading data, drawing figures or looking up the
#: registry starts in a second or two.
HEAVY = ("torch", "torchvision", "lightning", "squidpy", "scanpy", "ray")
MAY_IMPORT = {
    "spared_lib": (), "spared_lib.data": (), "spared_lib.preprocessing": (), "spared_lib.completion": (),
    "spared_lib.models": (), "spared_lib.benchmark": (), "spared_lib.plotting": (), "spared_lib.metrics": (),
    "spared_lib.widgets": (), "spared_lib.training": ("torch", "torchvision", "lightning"),
}


@pytest.mark.parametrize("module", sorted(MAY_IMPORT))
def test_import_is_light(module):
    """Importing what a reader imports must not drag in torch, squidpy or scanpy (they load on first use)."""
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m for m in out.stdout.strip().split(",") if m}
    extra = sorted(loaded - set(MAY_IMPORT[module]))
    assert not extra, f"import {module} imported {extra}: import them inside the functions that need them"


# --------------------------------------------------------------------------- the public API
SUBPACKAGES = {p.parent.name for p in (REPO / "spared_lib").glob("*/__init__.py")}
MODULES = {p.stem for p in (REPO / "spared_lib").glob("*.py") if p.stem != "__init__"}


def _notebook_code(py: Path) -> list[tuple[str, str]]:
    """(where, code) of a notebook's code cells and of the ```python blocks of its markdown
    (the exercises' solutions teach the API too)."""
    nb = jupytext.read(py)
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            out.append((f"cell {i}", cell.source))
        else:
            for block in re.findall(r"```python\n(.*?)```", cell.source, re.S):
                out.append((f"cell {i} (markdown)", block))
    return out


def private_imports(code) -> list[str]:
    """What ``code`` (a string, or a notebook's cells as ``[(where, code)]``) reaches that is not the
    public API (PLAN decision 5): a module inside a subpackage (``spared_lib.training.data``), a
    ``_private`` name, or a submodule reached as an attribute (``benchmark.prepare.crop_slides``
    after ``from spared_lib import benchmark``). Names bound in one cell count in the later ones."""
    import ast
    import importlib
    import importlib.util
    import inspect

    def is_module(package: str, name: str) -> bool:
        """``package.name`` is a module (imported or not), not a name the package exports."""
        value = getattr(importlib.import_module(package), name, None)
        if value is not None:
            return inspect.ismodule(value)
        return importlib.util.find_spec(f"{package}.{name}") is not None

    chunks = [("", code)] if isinstance(code, str) else code
    bad, bound = [], {}
    for where, chunk in chunks:
        prefix = f"{where}: " if where else ""
        chunk = "\n".join(line for line in chunk.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(chunk)
        except SyntaxError:
            continue  # prose in a code block, not code a reader runs
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] != "spared_lib":
                        continue
                    if len(parts) > 2 and parts[1] in SUBPACKAGES or any(p.startswith("_") for p in parts):
                        bad.append(f"{prefix}import {alias.name}")
                    elif alias.asname or len(parts) == 1:
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spared_lib":
                parts = node.module.split(".")
                if len(parts) > 2 and parts[1] in SUBPACKAGES or any(p.startswith("_") for p in parts):
                    bad.append(f"{prefix}from {node.module} import {', '.join(a.name for a in node.names)}")
                    continue
                for alias in node.names:
                    if alias.name.startswith("_"):
                        bad.append(f"{prefix}from {node.module} import {alias.name}")
                    elif len(parts) == 1:
                        bound[alias.asname or alias.name] = f"spared_lib.{alias.name}"
                    elif parts[1] in SUBPACKAGES and is_module(node.module, alias.name):
                        bad.append(f"{prefix}from {node.module} import {alias.name} (a module inside a subpackage)")
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound):
                continue
            target = bound[node.value.id]
            if node.attr.startswith("_"):
                bad.append(f"{prefix}{node.value.id}.{node.attr}")
            elif target.count(".") == 1 and target.split(".")[1] in SUBPACKAGES and is_module(target, node.attr):
                bad.append(f"{prefix}{node.value.id}.{node.attr} (the module {target}.{node.attr})")
    return sorted(set(bad))


def test_the_public_api_check_finds_internal_imports():
    code = ("from spared_lib import benchmark, data\n"
            "from spared_lib.training.data import first_ring\n"
            "from spared_lib.benchmark import _FIXTURES\n"
            "import spared_lib.benchmark.published as pub\n"
            "from spared_lib.plotting import _common\n"
            "from spared_lib.training import data as tdata\n"
            "x = benchmark.prepare.crop_slides(data.crop_slides)\n")
    found = private_imports(code)
    assert found == sorted([
        "from spared_lib.training.data import first_ring", "from spared_lib.benchmark import _FIXTURES",
        "import spared_lib.benchmark.published", "from spared_lib.plotting import _common",
        "from spared_lib.training import data (a module inside a subpackage)",
        "benchmark.prepare (the module spared_lib.benchmark.prepare)"]), found
    assert private_imports("from spared_lib import data, plotting\nfrom spared_lib.metrics import METRICS\n"
                           "from spared_lib.models import MODELS\nplotting.spatial_scatter(data.load_dataset)") == []


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_notebooks_import_only_the_public_api(py):
    """PLAN decision 5 / issue 12 §7: a notebook teaches what a reader may rely on — names exported
    from ``spared_lib``'s subpackages and top-level modules, never their inner modules or _private names."""
    found = private_imports(_notebook_code(py))
    assert not found, f"{py.name} reaches past the public API:\n  " + "\n  ".join(found)
