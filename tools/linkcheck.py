#!/usr/bin/env python
"""Check the links of the built book (``_build/html``).

Usage::

    python tools/linkcheck.py                 # every internal link and anchor; exit 1 on a broken one
    python tools/linkcheck.py --external      # also request every external link (a connected machine)
    python tools/linkcheck.py --list-external # only list the external links and the pages using them

Internal links (relative ``href``/``src`` and their ``#anchors``) must resolve to a file of the
build and to an ``id`` in it; ``tests/test_browser.py`` runs this check after the book build.
External links cannot be checked offline (CI has no internet): run ``--external`` on a connected
machine before a release.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
LINK_ATTRS = {"a": "href", "link": "href", "img": "src", "script": "src", "iframe": "src", "source": "src"}
# Links that are not navigation: nothing to resolve.
IGNORED_SCHEMES = {"mailto", "javascript", "data", "tel"}
# Folders of copied theme assets and sources: their .html files are templates, not pages.
THEME_FOLDERS = {"_static", "_sources"}


class _Page(HTMLParser):
    """Collects the ids (anchors) of one page and the links it makes, with line numbers."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, int]] = []  # (tag, url, line)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(key):
                self.ids.add(attrs[key])
        attr = LINK_ATTRS.get(tag)
        if attr and attrs.get(attr):
            # <link rel="preconnect"/"dns-prefetch"> name hosts, not documents.
            if tag == "link" and set((attrs.get("rel") or "").split()) & {"preconnect", "dns-prefetch"}:
                return
            self.links.append((tag, attrs[attr].strip(), self.getpos()[0]))


def parse_site(html_dir: Path = HTML) -> dict[Path, _Page]:
    """Every ``.html`` page under ``html_dir``, parsed."""
    html_dir = Path(html_dir)
    if not (html_dir / "index.html").exists():
        raise FileNotFoundError(f"{html_dir}/index.html not found: build the book first "
                                "(python tools/book.py build)")
    pages = {}
    for path in sorted(html_dir.rglob("*.html")):
        if path.relative_to(html_dir).parts[0] in THEME_FOLDERS:
            continue
        parser = _Page()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        pages[path] = parser
    return pages


def is_external(url: str) -> bool:
    return bool(urlsplit(url).scheme) or url.startswith("//")


def internal_problems(html_dir: Path = HTML) -> list[str]:
    """Broken internal links of the build: ``'page:line: url (why)'`` for each."""
    html_dir = Path(html_dir).resolve()
    pages = parse_site(html_dir)
    problems = []
    for page, parsed in pages.items():
        for tag, url, line in parsed.links:
            if is_external(url) or urlsplit(url).scheme in IGNORED_SCHEMES:
                continue
            path_part, fragment = urldefrag(url)
            path_part = unquote(urlsplit(path_part).path)
            where = f"{page.relative_to(html_dir)}:{line}: {url}"
            if path_part.startswith("/"):
                problems.append(f"{where} (absolute path: breaks when the book is not served at /)")
                continue
            target = (page.parent / path_part).resolve() if path_part else page
            if target.is_dir():
                target = target / "index.html"
            if html_dir not in (target, *target.parents):
                problems.append(f"{where} (points outside the build)")
            elif not target.exists():
                problems.append(f"{where} (no file {target.relative_to(html_dir)})")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(fragment) not in ids:
                    problems.append(f"{where} (no anchor #{fragment} in {target.relative_to(html_dir)})")
    return problems


def external_links(html_dir: Path = HTML) -> dict[str, list[str]]:
    """External URL (fragment dropped) → the pages that link to it."""
    html_dir = Path(html_dir).resolve()
    found: dict[str, set[str]] = defaultdict(set)
    for page, parsed in parse_site(html_dir).items():
        for _, url, _ in parsed.links:
            if is_external(url) and urlsplit(url).scheme in ("http", "https", ""):
                found[urldefrag(url)[0]].add(str(page.relative_to(html_dir)))
    return {url: sorted(p) for url, p in sorted(found.items())}


def check_url(url: str, timeout: float = 20.0) -> tuple[str, str]:
    """``(url, status)``: the HTTP status of a HEAD (or GET where HEAD is refused) request."""
    import urllib.error
    import urllib.request

    url = "https:" + url if url.startswith("//") else url
    headers = {"User-Agent": "spared-book-linkcheck/1.0"}
    for method in ("HEAD", "GET"):
        try:
            req = urllib.request.Request(url, method=method, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return url, str(resp.status)
        except urllib.error.HTTPError as err:
            if method == "HEAD" and err.code in (403, 405, 501):
                continue
            return url, f"HTTP {err.code}"
        except Exception as err:  # noqa: BLE001 — any network failure is a finding to report
            return url, f"error: {err}"
    return url, "error: no answer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--html", type=Path, default=HTML, help="the built book (default _build/html)")
    parser.add_argument("--external", action="store_true", help="also request every external link")
    parser.add_argument("--list-external", action="store_true", help="list external links, request nothing")
    args = parser.parse_args(argv)

    problems = internal_problems(args.html)
    for p in problems:
        print(f"BROKEN {p}")
    print(f"[linkcheck] internal: {len(problems)} broken link(s) in {len(parse_site(args.html))} pages")
    status = 1 if problems else 0

    if args.external or args.list_external:
        links = external_links(args.html)
        if args.list_external:
            for url, pages in links.items():
                print(f"{url}\t{', '.join(pages)}")
        else:
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(check_url, links))
            bad = [(u, s) for u, s in results if not s.startswith(("2", "3"))]
            for url, s in results:
                print(f"{s:>12}  {url}")
            for url, s in bad:
                print(f"BROKEN {url} ({s}) on {', '.join(links[url] if url in links else [])}")
            print(f"[linkcheck] external: {len(bad)} of {len(links)} failed")
            status = status or (1 if bad else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
