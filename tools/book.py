#!/usr/bin/env python
"""Turn the notebook sources into the book: jupytext → papermill → Jupyter Book.

Usage (the Makefile calls these; `python tools/book.py --help` lists them)::

    python tools/book.py sync                 # notebooks/*.py -> notebooks/*.ipynb (no outputs)
    python tools/book.py execute [NB ...]     # papermill, fast parameters unless FAST=0
    python tools/book.py build                # stage executed notebooks + book/ and run jupyter-book
    python tools/book.py all                  # the three in turn (what `make book` runs)

Executed notebooks go to ``_build/executed/notebooks/`` so the committed ``.ipynb`` files stay
output-free and ``git status`` stays clean. The book is built from a staging copy,
``_build/src``, that holds ``_config.yml``, ``_toc.yml``, ``book/`` and the executed notebooks,
and is written to ``_build/html``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "_build"
EXECUTED = BUILD / "executed"
STAGE = BUILD / "src"
FAST_PARAMS = NOTEBOOKS / "fast_params.yml"


def toc_entries(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every file listed in ``_toc.yml`` (root first), without extension."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]
    for part in toc.get("parts") or []:
        for chapter in part.get("chapters") or []:
            files.append(chapter["file"])
            files.extend(s["file"] for s in chapter.get("sections") or [])
    return files


def toc_notebooks() -> list[Path]:
    """The ``notebooks/*.py`` sources of the chapters listed in ``_toc.yml``."""
    return [ROOT / f"{f}.py" for f in toc_entries() if f.startswith("notebooks/")]


def fast_parameters(stem: str) -> dict:
    """Parameters papermill injects for a fast (CI) run of notebook ``stem``."""
    params = yaml.safe_load(FAST_PARAMS.read_text()) or {}
    return dict(params.get(stem) or {"FAST": True})


def sync(paths: list[Path] | None = None) -> list[Path]:
    """Regenerate each ``.ipynb`` from its ``.py`` (jupytext CLI; ``--update`` keeps cell ids stable)."""
    paths = list(paths or sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py")))
    if not paths:
        return []
    before = {p: p.with_suffix(".ipynb").read_bytes() if p.with_suffix(".ipynb").exists() else None
              for p in paths}
    jupytext = Path(sys.executable).with_name("jupytext")
    subprocess.run([str(jupytext), "--quiet", "--update", "--to", "ipynb", *map(str, paths)], check=True, cwd=ROOT)
    return [p.with_suffix(".ipynb") for p in paths if p.with_suffix(".ipynb").read_bytes() != before[p]]


#: Tag of the cell :func:`execute` runs first in every chapter's kernel and removes afterwards.
SETUP_TAG = "book-setup"

#: What that cell does: the book's pages show what a reader should see, not the machinery's chatter.
#: Lightning's banners ("GPU available", model summaries) and the library's INFO logs go below
#: WARNING (warnings and errors still show, and tests/test_browser.py fails on them); each
#: figure's titles are recorded in its output's metadata (``book_titles``) so that the browser
#: check can tell whether a figure names its data, and so are the labels drawn over one another
#: (``book_overlaps``, :func:`figcheck.overlapping_labels`).
SETUP_SOURCE = """\
import logging as _logging

for _name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
              "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
              "spared_lib", "squidpy", "spatialdata"):
    _logging.getLogger(_name).setLevel(_logging.WARNING)


def _book_record_titles():
    import sys

    import matplotlib_inline.backend_inline as inline

    sys.path.insert(0, {tools!r})
    from figcheck import overlapping_labels

    fetch = inline._fetch_figure_metadata

    def with_titles(fig):
        meta = dict(fetch(fig) or {})
        titles = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        titles += [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
        meta["book_titles"] = [t for t in titles if t.strip()]
        meta["book_overlaps"] = [list(pair) for pair in overlapping_labels(fig)]
        return meta

    inline._fetch_figure_metadata = with_titles


_book_record_titles()
""".replace("{tools!r}", repr(str(Path(__file__).resolve().parent)))


def _with_setup_cell(nb):
    """The notebook with :data:`SETUP_SOURCE` as its first cell."""
    import nbformat

    cell = nbformat.v4.new_code_cell(SETUP_SOURCE, metadata={"tags": [SETUP_TAG, "remove-cell"]})
    nb.cells.insert(0, cell)
    return nb


def tidy_executed(path: Path) -> None:
    """After papermill: drop the setup cell and hide the injected-parameters cell on the page.

    The page keeps the chapter's own parameters cell (the defaults a reader runs); the fast values
    papermill injected under it are an artefact of the build, so the cell is tagged ``remove-cell``
    and stays in the executed notebook for the tests that read it.
    """
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if SETUP_TAG not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, path)


def execute(paths: list[Path], fast: bool = True) -> None:
    """Run each notebook with papermill into ``_build/executed/notebooks``; raise on a failed cell."""
    import jupytext
    import papermill

    out_dir = EXECUTED / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    env_backup = dict(os.environ)
    # Figures must land in the notebook even where the caller exported MPLBACKEND=agg (CI does
    # for its own plots), and output must be unbuffered so papermill shows progress as it happens.
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ["PYTHONUNBUFFERED"] = "1"
    try:
        for path in paths:
            path = Path(path).resolve()
            source = path.with_suffix(".py")
            ipynb = path.with_suffix(".ipynb")
            # Always execute what the .py says, even if the .ipynb is stale.
            # One input file per process: two runs of the same chapter (two people, or pytest and
            # make) must not delete each other's.
            tmp_in = out_dir / f".{path.stem}.{os.getpid()}.input.ipynb"
            jupytext.write(_with_setup_cell(jupytext.read(source if source.exists() else ipynb)), tmp_in)
            params = fast_parameters(path.stem) if fast else {}
            out = out_dir / f"{path.stem}.ipynb"
            print(f"[book] executing {path.name} ({'fast' if fast else 'full'}: {params})", flush=True)
            t0 = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(tmp_in), str(out), parameters=params, cwd=str(NOTEBOOKS),
                    kernel_name="python3", progress_bar=False, log_output=False,
                    request_save_on_cell_execute=False,
                )
            finally:
                tmp_in.unlink(missing_ok=True)
                if out.exists():
                    tidy_executed(out)
            print(f"[book] {path.name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        os.environ.clear()
        os.environ.update(env_backup)


def stage() -> Path:
    """Lay out ``_build/src``: config, toc, ``book/`` and the executed notebooks."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    shutil.copy2(ROOT / "_config.yml", STAGE / "_config.yml")
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    # A part whose chapters are all still commented out is invalid for Jupyter Book: leave it out.
    toc["parts"] = [p for p in toc.get("parts") or [] if p.get("chapters")]
    (STAGE / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False, allow_unicode=True))
    shutil.copytree(ROOT / "book", STAGE / "book")
    # Style sheets (wide tables scroll); Jupyter Book adds every .css under _static to the pages.
    shutil.copytree(ROOT / "_static", STAGE / "_static")
    (STAGE / "notebooks").mkdir()
    missing = []
    for py in toc_notebooks():
        executed = EXECUTED / "notebooks" / f"{py.stem}.ipynb"
        if not executed.exists():
            missing.append(py.stem)
            continue
        shutil.copy2(executed, STAGE / "notebooks" / executed.name)
    if missing:
        raise SystemExit(f"[book] not executed yet: {', '.join(missing)} (run `python tools/book.py execute`)")
    return STAGE


def build() -> Path:
    """Build the HTML book into ``_build/html``; fail on any warning or failed page."""
    stage()
    # A fresh Sphinx environment every time: a pickled one from a build with another table of
    # contents can crash the incremental build (KeyError in sphinx-external-toc).
    for stale in (BUILD / ".doctrees", BUILD / "html", BUILD / "jupyter_execute"):
        shutil.rmtree(stale, ignore_errors=True)
    log = BUILD / "jupyter-book.log"
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(STAGE),
           "--path-output", str(ROOT), "--builder", "html", "-W", "-n", "--keep-going"]
    print("[book]", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
    # jupyter-book can exit 0 after a page failed: read the log as well as the exit code.
    bad = [line for line in (proc.stdout + proc.stderr).splitlines()
           if re.search(r"WARNING|ERROR|Traceback|Execution Failed", line)]
    if proc.returncode != 0 or bad:
        raise SystemExit(f"[book] build failed (exit {proc.returncode}); see {log}:\n" + "\n".join(bad[:40]))
    index = BUILD / "html" / "index.html"
    if not index.exists():
        raise SystemExit(f"[book] {index} was not written")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["sync", "execute", "build", "all"])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter in _toc.yml")
    args = parser.parse_args(argv)
    fast = os.environ.get("FAST", "1") not in {"0", "false", "False", "no"}
    if args.command in {"sync", "all"}:
        for p in sync():
            print(f"[book] wrote {p.relative_to(ROOT)}")
    if args.command in {"execute", "all"}:
        execute(args.notebooks or toc_notebooks(), fast=fast)
    if args.command in {"build", "all"}:
        print(f"[book] built {build()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
