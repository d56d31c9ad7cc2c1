"""The built book in a real headless browser (Debian chromium), and its internal links.

Chromium is started by the test with a fresh profile and driven over the Chrome DevTools protocol
(a websocket, through tornado, which the Jupyter kernel already needs); the book is served from
``_build/html`` on 127.0.0.1. For every page of ``_toc.yml``: it loads, shows its title, every
local image decodes (``naturalWidth > 0``), no error output is shown, notebook pages show a figure
and a Colab button for their own ``.ipynb``, and the "next" links lead from the first page to the
last in table-of-contents order. The pages are also read as a student reads them (issue 18 §4):
no output shows a warning, a log banner or a traceback; no output shows a path of the machine
that built the book; no table is mostly NaN; a wide table scrolls inside the page column instead
of running past it; every figure names its data in its title or in the text beside it; and no
figure has labels drawn over one another (``tools/figcheck.py``, run on each figure as the book
is executed). External resources (the MathJax and widget CDNs) are unreachable
here and are not counted as failures. Screenshots go to ``_build/browser/``.
"""
from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from localhttp import serve
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import book  # noqa: E402
import linkcheck  # noqa: E402

ARTEFACTS = book.BUILD / "browser"
SCREENSHOTS = ("notebooks/00_quickstart", "notebooks/07_your_own_data", "notebooks/06_benchmark")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,1000",
                  "--remote-allow-origins=*", "--remote-debugging-port=0"]

# Everything the test needs to know about a page, read in the page itself after its load event.
PAGE_PROBE = r"""
(() => {
  const local = (u) => { try { return new URL(u, location.href).origin === location.origin; } catch (e) { return false; } };
  const h1 = document.querySelector("main h1, article h1, h1");
  const heading = h1 ? Array.from(h1.childNodes).filter(n => !(n.classList && n.classList.contains("headerlink")))
                        .map(n => n.textContent).join("").trim() : "";
  const images = Array.from(document.images).map(img => ({
      src: img.currentSrc || img.src, local: local(img.currentSrc || img.src),
      complete: img.complete, width: img.naturalWidth}));
  const errors = document.querySelectorAll(".cell_output .traceback, .cell_output .output.error, .output_error");
  const next = document.querySelector("a.right-next");
  return JSON.stringify({
    title: document.title, heading: heading, images: images,
    errorOutputs: errors.length,
    tracebackText: document.body.innerText.includes("Traceback (most recent call last)"),
    colab: Array.from(document.querySelectorAll('a[href*="colab.research.google.com"]')).map(a => a.href),
    next: next ? next.href : null,
    cellOutputs: document.querySelectorAll(".cell_output").length,
    outputs: Array.from(document.querySelectorAll(".cell_output")).map(o => o.innerText.slice(0, 20000)),
    tables: Array.from(document.querySelectorAll(".cell_output table")).map(t => {
      // textContent, not innerText: a table in a folded output (hide-output) has no rendered text
      const cells = Array.from(t.querySelectorAll("tbody td")).map(td => td.textContent.trim());
      const main = (document.querySelector("main") || document.body).getBoundingClientRect();
      let box = null;
      for (let el = t; el && el !== document.body; el = el.parentElement) {
        const ox = getComputedStyle(el).overflowX;
        if (ox === "auto" || ox === "scroll") { box = el; break; }
      }
      const right = (box || t).getBoundingClientRect().right;
      return {cells: cells, head: t.textContent.trim().slice(0, 200), width: t.scrollWidth,
              scrolls: box !== null, overflows: right > main.right + 1};
    }),
  });
})()
"""

#: Output text a reader should not see: warnings, log banners (Lightning's "GPU available",
#: model summaries, logging's WARNING/ERROR lines) and tracebacks.
NOISE = re.compile(r"\b[A-Z][A-Za-z]*Warning\b|Traceback \(most recent call last\)|^\s*(WARNING|ERROR|CRITICAL)\b"
                   r"|^\s*(GPU|TPU|HPU) available:|^\s*LOCAL_RANK:|^\s*\|\s*Name\s*\|\s*Type\s*\|"
                   r"|^\s*INFO:|random initiali[sz]ation", re.M)

#: Paths of the machine that built the book (none belongs on a published page).
MACHINE_PATH = re.compile(r"(?<![\w.])(/tmp/|/root/|/work/|/home/[^/\s]+/|/Users/[^/\s]+/|/var/folders/|"
                          r"[A-Za-z]:\\Users\\)|site-packages|dist-packages")

#: How a table shows a missing value.
MISSING = {"nan", "NaN", "<NA>", "None", "NaT", ""}


def noise_lines(text: str) -> list[str]:
    """The lines of an output's text that are warnings, log banners or tracebacks."""
    return [line.strip() for line in text.splitlines() if NOISE.search(line)]


def machine_paths(text: str) -> list[str]:
    """The lines of an output's text that show a path of the building machine."""
    return [line.strip() for line in text.splitlines() if MACHINE_PATH.search(line)]


def mostly_missing(cells: list[str], threshold: float = 0.5) -> bool:
    """Whether more than ``threshold`` of a table's body cells are missing values (tables of at least 4 cells)."""
    return len(cells) >= 4 and sum(c in MISSING for c in cells) > threshold * len(cells)


def data_names(nb) -> set[str]:
    """Words that name data: the registry's datasets, the fixtures, "synthetic", the published
    results, and the string values of the notebook's parameters (a reader's own dataset name)."""
    from spared_lib import data

    names = set(data.DATASETS) | set(getattr(data, "FIXTURES", ())) | {
        "her2st", "cytassist", "synthetic", "published", "SpaRED"}
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code" and ("parameters" in tags or "injected-parameters" in tags):
            names |= {v for v in re.findall(r"^[A-Z_]+\s*=\s*[\"']([^\"']+)[\"']", cell.source, re.M)
                      if re.search(r"[A-Za-z]{3}", v) and "/" not in v}
    return {n for n in names if len(n) >= 3}


def figures_without_data(nb) -> list[str]:
    """Figures (``image/png`` outputs) whose titles (recorded by ``tools/book.py`` in the output's
    ``book_titles`` metadata) and neighbouring markdown cells (the caption) name no data."""
    names = [n.lower() for n in data_names(nb)]
    cells = [c for c in nb.cells if "remove-cell" not in c.metadata.get("tags", [])]
    bad = []
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        caption = " ".join(c.source for c in (cells[i - 1] if i else None, cells[i + 1] if i + 1 < len(cells) else None)
                           if c is not None and c.cell_type == "markdown")
        for k, out in enumerate(cell.get("outputs", [])):
            if "image/png" not in out.get("data", {}):
                continue
            titles = out.get("metadata", {}).get("book_titles", [])
            text = (" ".join(titles) + " " + caption).lower()
            if not any(n in text for n in names):
                first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
                bad.append(f"figure {k + 1} of cell {first!r} (titles {titles})")
    return bad


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class DevTools:
    """A minimal Chrome DevTools protocol client on one page target (commands and events)."""

    def __init__(self, ws_url: str):
        from tornado.ioloop import IOLoop
        from tornado.websocket import websocket_connect

        self.loop = IOLoop(make_current=False)
        self.conn = self.loop.run_sync(lambda: websocket_connect(ws_url, max_message_size=256 * 2**20),
                                       timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, timeout: float) -> dict:
        message = self.loop.run_sync(self.conn.read_message, timeout=timeout)
        if message is None:
            raise ConnectionError("chromium closed the DevTools connection")
        return json.loads(message)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self.next_id += 1
        msg_id = self.next_id
        self.loop.run_sync(lambda: self.conn.write_message(json.dumps(
            {"id": msg_id, "method": method, "params": params})), timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(max(deadline - time.monotonic(), 0.1))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(max(deadline - time.monotonic(), 0.1))
            if event.get("method") == method:
                return event
            self.events.append(event)

    def close(self):
        self.conn.close()
        self.loop.close()


@pytest.fixture(scope="module")
def built_book() -> Path:
    """``_build/html``, rebuilt only when a source is newer than it (tests/test_book.py builds it first)."""
    index = book.BUILD / "html" / "index.html"
    sources = [REPO / "_config.yml", REPO / "_toc.yml", *(REPO / "book").iterdir()]
    stale = [py for py in book.toc_notebooks()
             if not (book.EXECUTED / "notebooks" / f"{py.stem}.ipynb").exists()
             or (book.EXECUTED / "notebooks" / f"{py.stem}.ipynb").stat().st_mtime < py.stat().st_mtime]
    if stale:
        book.execute(stale, fast=True)
    sources += [book.EXECUTED / "notebooks" / f"{py.stem}.ipynb" for py in book.toc_notebooks()]
    if not index.exists() or any(s.stat().st_mtime > index.stat().st_mtime for s in sources):
        book.build()
    return index.parent


@pytest.fixture(scope="module")
def server(built_book):
    with serve(functools.partial(_QuietHandler, directory=str(built_book))) as url:
        yield url


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(server):
    binary = _chromium()
    if binary is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); "
                    "the browser check of the built book needs it")
    profile = Path(tempfile.mkdtemp(prefix="spared-chromium-"))
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port within 60 s")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Runtime.enable")
        yield devtools
        devtools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _expected_title(entry: str) -> str:
    """The first heading of a page's source, as the browser shows it (no markdown marks)."""
    md = REPO / f"{entry}.md"
    if md.exists():
        text = md.read_text()
    else:
        import jupytext

        nb = jupytext.read(REPO / f"{entry}.py")
        text = next(c.source for c in nb.cells if c.cell_type == "markdown")
    heading = next(line for line in text.splitlines() if line.startswith("# "))[2:]
    heading = re.sub(r"[*`]", "", heading).strip()
    # Sphinx's smartquotes typeset straight quotes as curly ones.
    return heading.replace("'", "\u2019")


def _visit(browser: DevTools, url: str) -> dict:
    browser.events.clear()
    browser.call("Page.navigate", url=url)
    browser.wait_event("Page.loadEventFired", timeout=90)
    result = browser.call("Runtime.evaluate", expression=PAGE_PROBE, returnByValue=True)
    if "exceptionDetails" in result:
        raise AssertionError(f"{url}: the page probe failed: {result['result'].get('description')}")
    return json.loads(result["result"]["value"])


@pytest.fixture(scope="module")
def visited(browser, server):
    """Every page of the table of contents, visited once: entry → what the probe saw."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    pages = {}
    for entry in book.toc_entries():
        pages[entry] = _visit(browser, f"{server}/{entry}.html")
        pages[entry]["url"] = f"{server}/{entry}.html"
        if entry in SCREENSHOTS or entry == toc_root():
            shot = browser.call("Page.captureScreenshot", format="png")
            (ARTEFACTS / f"{entry.replace('/', '_')}.png").write_bytes(base64.b64decode(shot["data"]))
    (ARTEFACTS / "pages.json").write_text(json.dumps(pages, indent=1))
    return pages


def toc_root() -> str:
    return yaml.safe_load((REPO / "_toc.yml").read_text())["root"]


@pytest.mark.book
def test_every_page_loads_with_its_title(visited):
    for entry, page in visited.items():
        expected = _expected_title(entry)
        assert expected in page["heading"], f"{entry}: heading {page['heading']!r}, expected {expected!r}"
        def unnumbered(text):  # numbered parts prefix "3. " or "3.1. " to titles
            return re.sub(r"^\d+(\.\d+)*\.?\s+", "", text)

        assert unnumbered(page["title"]).startswith(unnumbered(page["heading"])), \
            f"{entry}: <title> {page['title']!r} does not start with the heading {page['heading']!r}"


@pytest.mark.book
def test_every_local_image_is_shown(visited):
    for entry, page in visited.items():
        broken = [img["src"] for img in page["images"] if img["local"] and not (img["complete"] and img["width"] > 0)]
        assert not broken, f"{entry}: images that did not load: {broken}"
        if entry.startswith("notebooks/"):
            figures = [img for img in page["images"] if img["local"] and "/_images/" in img["src"] and img["width"] > 0]
            assert figures, f"{entry}: a chapter without a figure"


@pytest.mark.book
def test_no_error_outputs(visited):
    for entry, page in visited.items():
        assert page["errorOutputs"] == 0 and not page["tracebackText"], f"{entry}: an error output is shown"


def _by_page(visited, check) -> dict:
    found = {}
    for entry, page in visited.items():
        hits = [hit for out in page.get("outputs", []) for hit in check(out)]
        if hits:
            found[entry] = hits
    return found


def _report(found: dict, what: str) -> str:
    return f"{what}:\n" + "\n".join(f"  {entry}: {len(h)}, e.g. {h[:3]}" for entry, h in found.items())


@pytest.mark.book
def test_no_warnings_banners_or_tracebacks_in_outputs(visited):
    found = _by_page(visited, noise_lines)
    assert not found, _report(found, "outputs with warnings, log banners or tracebacks")


@pytest.mark.book
def test_no_machine_paths_in_outputs(visited):
    found = _by_page(visited, machine_paths)
    assert not found, _report(found, "outputs that show the building machine's paths")


@pytest.mark.book
def test_no_table_is_mostly_missing(visited):
    found = {entry: [t["head"][:80] for t in page.get("tables", []) if mostly_missing(t["cells"])]
             for entry, page in visited.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, _report(found, "tables that are mostly NaN")


@pytest.mark.book
def test_wide_tables_scroll_inside_the_page(visited):
    found = {entry: [f"{t['head'][:60]!r} ({t['width']} px)" for t in page.get("tables", []) if t["overflows"]]
             for entry, page in visited.items()}
    found = {k: v for k, v in found.items() if v}
    assert not found, _report(found, "tables that run past the page column instead of scrolling")


@pytest.mark.book
def test_every_figure_names_its_data(built_book):
    import nbformat

    found = {}
    for py in book.toc_notebooks():
        nb = nbformat.read(book.EXECUTED / "notebooks" / f"{py.stem}.ipynb", as_version=4)
        bad = figures_without_data(nb)
        if bad:
            found[f"notebooks/{py.stem}"] = bad
    assert not found, _report(found, "figures whose title and caption name no data (dataset, 'synthetic', ...)")


def figures_with_overlaps(nb) -> list[str]:
    """Figures whose labels ``tools/book.py`` found drawn over one another (``book_overlaps``)."""
    bad = []
    for cell in nb.cells:
        for k, out in enumerate(cell.get("outputs", [])):
            pairs = out.get("metadata", {}).get("book_overlaps") or []
            if pairs:
                first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                bad.append(f"figure {k + 1} of cell {first!r}: {len(pairs)} pair(s), e.g. {pairs[:2]}")
    return bad


@pytest.mark.book
def test_no_figure_has_overlapping_labels(built_book):
    import nbformat

    found = {}
    for py in book.toc_notebooks():
        bad = figures_with_overlaps(nbformat.read(book.EXECUTED / "notebooks" / f"{py.stem}.ipynb", as_version=4))
        if bad:
            found[f"notebooks/{py.stem}"] = bad
    assert not found, _report(found, "figures with labels drawn over one another")


def test_the_page_checks_find_what_they_look_for():
    """The checks above, on text and notebooks made by hand (they must be able to fail)."""
    import nbformat

    out = ("loading\n/root/.venv/lib/python3.11/site-packages/anndata/_core.py:12: UserWarning: "
           "obs_names not unique\nGPU available: False, used: False\nWARNING: something\n"
           "Traceback (most recent call last):\nall fine\nsaved to /tmp/abc/model.ckpt\n"
           "cache: /work/main/_cache\nrandom initialisation for bleep")
    assert noise_lines(out) == [out.splitlines()[1], "GPU available: False, used: False", "WARNING: something",
                                "Traceback (most recent call last):", "random initialisation for bleep"]
    assert machine_paths(out) == [out.splitlines()[1], "saved to /tmp/abc/model.ckpt", "cache: /work/main/_cache"]
    assert noise_lines("MSE 1.05 after 300 steps") == [] and machine_paths("data/her2st/C2 and a/b/c") == []
    assert mostly_missing(["nan", "NaN", "1.0", "<NA>", ""]) and not mostly_missing(["nan", "1", "2", "3"])
    assert not mostly_missing(["nan", "nan"])  # too small to judge

    def nb_with(titles, caption, params='DATASET = "my_tissue"\n'):
        cells = [nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                 nbformat.v4.new_markdown_cell(caption),
                 nbformat.v4.new_code_cell("fig = plot()")]
        cells[2].outputs = [nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"},
                                                   metadata={"book_titles": titles})]
        return nbformat.v4.new_notebook(cells=cells)

    assert figures_without_data(nb_with(["MSE vs masking"], "Completion error.")) == \
        ["figure 1 of cell 'fig = plot()' (titles ['MSE vs masking'])"]
    assert figures_without_data(nb_with(["MSE vs masking\nher2st"], "Completion error.")) == []
    assert figures_without_data(nb_with(["MSE vs masking"], "On synthetic data: the error.")) == []
    assert figures_without_data(nb_with(["Spots of my_tissue"], "")) == []  # a reader's dataset name
    crowded = nb_with(["her2st"], "")
    crowded.cells[2].outputs[0].metadata["book_overlaps"] = [["tick 1", "tick 2"]]
    assert figures_with_overlaps(crowded) == ["figure 1 of cell 'fig = plot()': 1 pair(s), e.g. [['tick 1', 'tick 2']]"]
    assert figures_with_overlaps(nb_with(["her2st"], "")) == []


@pytest.mark.book
def test_colab_buttons_point_at_the_pages_own_notebook(visited):
    cfg = yaml.safe_load((REPO / "_config.yml").read_text())
    repo = cfg["repository"]["url"].removeprefix("https://github.com/")
    branch = cfg["repository"]["branch"]
    for entry, page in visited.items():
        if not entry.startswith("notebooks/"):
            continue
        assert page["colab"], f"{entry}: no Colab launch button"
        want = f"https://colab.research.google.com/github/{repo}/blob/{branch}/{entry}.ipynb"
        assert set(page["colab"]) == {want}, f"{entry}: Colab button points at {page['colab']}, not {want}"
        assert (REPO / f"{entry}.ipynb").exists(), f"{entry}.ipynb, the Colab target, is not in the repository"


@pytest.mark.book
def test_next_links_walk_the_table_of_contents_in_order(visited, server):
    """A reader can go from the introduction to the last chapter by pressing "next"."""
    entries = book.toc_entries()
    for here, there in zip(entries, entries[1:]):
        assert visited[here]["next"] == f"{server}/{there}.html", \
            f"'next' on {here} leads to {visited[here]['next']}, expected {there}.html"
    assert visited[entries[-1]]["next"] is None, "the last page has a 'next' link"


@pytest.mark.book
def test_screenshots_were_taken(visited):
    shots = sorted(ARTEFACTS.glob("*.png"))
    assert len(shots) >= 2, shots
    for shot in shots:
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, f"{shot.name}: not a real screenshot"


@pytest.mark.book
def test_internal_links_resolve(built_book):
    problems = linkcheck.internal_problems(built_book)
    assert not problems, "broken internal links:\n" + "\n".join(problems[:30])


def test_linkcheck_finds_broken_links_and_anchors(tmp_path):
    """The checker itself, on a hand-made site: one good link, a missing file, a missing anchor."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text(
        '<a href="sub/page.html#here">ok</a>\n<a href="missing.html">x</a>\n'
        '<a href="sub/page.html#nowhere">y</a>\n<a href="https://example.org/a#b">ext</a>\n'
        '<img src="sub/">\n<a href="mailto:a@b.c">m</a>')
    (tmp_path / "sub" / "page.html").write_text('<h1 id="here">t</h1><a href="../index.html#">up</a>')
    (tmp_path / "sub" / "index.html").write_text("<p>folder index</p>")
    problems = linkcheck.internal_problems(tmp_path)
    assert len(problems) == 2, problems
    assert "index.html:2: missing.html (no file missing.html)" in problems[0]
    assert "no anchor #nowhere in sub/page.html" in problems[1]
    assert linkcheck.external_links(tmp_path) == {"https://example.org/a": ["index.html"]}
