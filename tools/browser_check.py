#!/usr/bin/env python3
"""Check the built HTML book in a real (headless) browser.

Serves the built site on 127.0.0.1, opens every page in headless Chromium
(through playwright's sync API, using Debian's ``/usr/bin/chromium``, or the browser that
the environment variable ``NLTUTORIAL_CHROMIUM`` names; no ``playwright install`` needed)
and collects problems:

* console messages of type ``error`` and uncaught page errors;
* local requests answered with HTTP status >= 400, or failing outright;
* broken local images (the browser cannot decode them);
* math on the page that MathJax did not load / typeset, and MathJax errors;
* internal links whose target file is missing, or whose ``#fragment`` names
  no element of the target page;
* cross-references that Sphinx could not resolve (an ``xref`` left without a link);
* layout at a 1280-px window: any code, output, table, figure or display-math block
  that scrolls sideways or sticks out of the page's text column, and a page that
  scrolls sideways as a whole (collapsed cells and dropdowns are opened first, so
  hidden content is measured too);
* images in the page's text without a real alt text (missing, empty, or just the
  file's name or path);
* interactive explorers (``.nlt-explorer``): two clicks at different points of each
  one must each change its view (the selected query and the drawn map).

Per page and in total it counts code/output blocks, figures, images with alt text,
cross-references and explorers, so that a summary of the whole book can be quoted.

Requests to any other host are aborted (the check works offline, and never
waits for a CDN); they are not problems by themselves, but are listed in the
summary so that the book can be made self-contained.  External links
(``<a href="https://...">``, ``mailto:``) are not fetched.

A full-page PNG screenshot of each page is written to the screenshot folder.

Usage::

    python tools/browser_check.py [--html _build/html] [--screenshots _build/screenshots]
                                  [--chromium /usr/bin/chromium] [--require]

``--chromium`` defaults to ``$NLTUTORIAL_CHROMIUM`` when that is set, else ``/usr/bin/chromium``.

Exit status: 0 when every page is clean (or when Chromium / playwright is
missing and ``--require`` was not given), 1 when problems were found (or the
browser is missing and ``--require`` was given), 2 when the HTML folder does
not exist.

From Python::

    from tools.browser_check import check_site
    result = check_site("_build/html", "_build/screenshots")
    assert not result.problems, result.problems
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import http.server
import os
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set

#: Debian's Chromium package, the browser used unless NLTUTORIAL_CHROMIUM names another.
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Environment variable with the path of another Chromium or Chrome executable (a non-Debian
#: system, Ubuntu whose ``chromium`` is a snap, Google Chrome, playwright's own download).
CHROMIUM_ENV = "NLTUTORIAL_CHROMIUM"

# Without these, Chromium tries to reach Google hosts (component updates,
# field trials, QUIC probes ...), which the closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]

# Top-level folders of a Sphinx build that hold no pages of their own.
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}

VIEWPORT = {"width": 1280, "height": 900}
NAV_TIMEOUT_MS = 30_000
IDLE_TIMEOUT_MS = 5_000
MATHJAX_TIMEOUT_MS = 20_000


class ChromiumUnavailable(RuntimeError):
    """Playwright or the Chromium binary is missing (or cannot start)."""


@dataclass
class Problem:
    page: str  # page path relative to the HTML folder, e.g. "book/01_nl_means.html"
    kind: str  # console, pageerror, http, request, image, link, fragment, mathjax,
    #          layout, alt, xref, explorer
    message: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.kind}] {self.message}"


@dataclass
class PageResult:
    page: str
    problems: List[Problem] = field(default_factory=list)
    screenshot: Optional[Path] = None
    external_requests: List[str] = field(default_factory=list)
    n_links: int = 0
    n_external_links: int = 0
    n_images: int = 0
    n_math: int = 0
    n_typeset: int = 0
    mathjax_version: Optional[str] = None
    seconds: float = 0.0
    redirected_to: Optional[str] = None
    n_blocks: int = 0          # code and output blocks measured
    n_overflowing: int = 0     # blocks (and tables, figures, math) that scroll sideways
    n_figures: int = 0         # <figure> elements in the text
    n_alt_ok: int = 0          # images in the text with a real alt text
    n_xrefs: int = 0           # resolved cross-references ({ref}, {numref}, {doc})
    n_explorers: int = 0       # .nlt-explorer widgets that answered two clicks

    def summary(self) -> str:
        status = "OK  " if not self.problems else "FAIL"
        parts = [f"-> {self.redirected_to}"] if self.redirected_to else []
        parts += [
            f"{self.seconds:.1f}s",
            f"{self.n_links} internal links",
            f"{self.n_external_links} external links",
            f"{self.n_images} images",
        ]
        if self.n_blocks:
            parts.append(f"{self.n_blocks} code/output blocks, {self.n_overflowing} scroll sideways")
        if self.n_figures:
            parts.append(f"{self.n_figures} figures")
        if self.n_xrefs:
            parts.append(f"{self.n_xrefs} cross-references")
        if self.n_explorers:
            parts.append(f"{self.n_explorers} explorers")
        if self.n_math or self.mathjax_version:
            parts.append(f"math {self.n_typeset}/{self.n_math} typeset"
                         f" (MathJax {self.mathjax_version or 'not loaded'})")
        if self.external_requests:
            parts.append(f"{len(self.external_requests)} external requests blocked")
        if self.problems:
            parts.append(f"{len(self.problems)} problems")
        return f"{status} {self.page}  ({', '.join(parts)})"


@dataclass
class CheckResult:
    html_dir: Path
    pages: List[PageResult] = field(default_factory=list)

    @property
    def problems(self) -> List[Problem]:
        return [p for page in self.pages for p in page.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def external_requests(self) -> Dict[str, List[str]]:
        """Blocked external URL -> pages that requested it."""
        out: Dict[str, List[str]] = {}
        for page in self.pages:
            for url in page.external_requests:
                out.setdefault(url, []).append(page.page)
        return out

    def summary(self) -> str:
        lines = []
        ext = self.external_requests
        if ext:
            lines.append(f"External requests blocked (not errors; the book is not self-contained "
                         f"for these) - {len(ext)} URLs:")
            for url, pages in sorted(ext.items()):
                shown = ", ".join(pages[:3]) + (f", ... ({len(pages)} pages)" if len(pages) > 3 else "")
                lines.append(f"  {url}  <- {shown}")
        if self.problems:
            lines.append("Problems:")
            lines.extend(f"  {p}" for p in self.problems)
        lines.append(self.totals_line())
        lines.append(f"{len(self.pages)} pages checked, {len(self.problems)} problems")
        return "\n".join(lines)

    def totals(self) -> Dict[str, int]:
        """Counts over all pages (blocks, overflowing blocks, figures, images, ...)."""
        keys = ("n_blocks", "n_overflowing", "n_figures", "n_images", "n_alt_ok", "n_xrefs",
                "n_explorers", "n_links")
        return {k[2:]: sum(getattr(page, k) for page in self.pages) for k in keys}

    def totals_line(self) -> str:
        t = self.totals()
        return (f"Totals: {t['blocks']} code/output blocks ({t['overflowing']} scroll sideways at "
                f"{VIEWPORT['width']} px), {t['figures']} figures, {t['alt_ok']}/{t['images']} images "
                f"with alt text, {t['xrefs']} cross-references, {t['explorers']} explorers answering "
                f"clicks, {t['links']} internal links")


# --------------------------------------------------------------------------- server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Browsers drop connections (e.g. when a page is closed mid-load);
        # do not print tracebacks for that.
        pass


class LocalServer:
    """Serve a folder on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        host, port = self.httpd.server_address[:2]
        self.origin = f"http://{host}:{port}"
        self.netloc = f"{host}:{port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="browser-check-http",
                                       daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- helpers


def find_pages(html_dir: Path) -> List[str]:
    """All ``.html`` pages under html_dir (relative POSIX paths), minus Sphinx asset folders."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        rel = path.relative_to(html_dir)
        if rel.parts[0] in SKIP_DIRS or any(part.startswith(".") for part in rel.parts):
            continue
        pages.append(rel.as_posix())
    return pages


def screenshot_name(page: str) -> str:
    """``book/01_nl_means.html`` -> ``book_01_nl_means.png``."""
    stem = page[:-5] if page.endswith(".html") else page
    return stem.replace("/", "_") + ".png"


class _IdCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: Set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)

    handle_startendtag = handle_starttag


@functools.lru_cache(maxsize=None)
def _ids_in_file(path: str, mtime: float) -> frozenset:
    parser = _IdCollector()
    parser.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
    parser.close()
    return frozenset(parser.ids)


def ids_in_file(path: Path) -> frozenset:
    return _ids_in_file(str(path), path.stat().st_mtime)


def _resolve_local_file(html_dir: Path, url_path: str) -> Optional[Path]:
    """The file a local URL path maps to (like the HTTP server would), or None."""
    rel = urllib.parse.unquote(url_path).lstrip("/")
    target = (html_dir / rel) if rel else html_dir
    try:
        target.resolve().relative_to(html_dir.resolve())
    except ValueError:
        return None  # escapes the site
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


# JavaScript run in the page after load.  Waits for MathJax (v3: startup.promise,
# v2: Hub queue) when it is there, then reports math, images, links and ids.
_INSPECT_JS = r"""
async (mathjaxTimeout) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const withTimeout = (p, ms) => Promise.race([p.then(() => 'done', () => 'rejected'),
                                                sleep(ms).then(() => 'timeout')]);
  const MJ = window.MathJax;
  let mathjaxWait = 'absent';
  if (MJ && MJ.startup && MJ.startup.promise) {
    mathjaxWait = await withTimeout(MJ.startup.promise, mathjaxTimeout);
  } else if (MJ && MJ.Hub && MJ.Hub.Queue) {
    mathjaxWait = await withTimeout(new Promise((r) => MJ.Hub.Queue(r)), mathjaxTimeout);
  }
  const mjVersion = (window.MathJax && window.MathJax.version) ? String(window.MathJax.version) : null;

  // Images: make lazy ones load, then ask the browser to decode each local one.
  const imgs = Array.from(document.images).filter((img) => img.getAttribute('src'));
  for (const img of imgs) { if (img.loading === 'lazy') img.loading = 'eager'; }
  const images = await Promise.all(imgs.map(async (img) => {
    let ok = true, why = '';
    const s = await withTimeout(img.decode(), 10000);
    if (s === 'rejected') { ok = false; why = 'the browser could not load or decode it'; }
    else if (s === 'timeout') { ok = false; why = 'still not loaded after 10 s'; }
    if (ok && img.complete && img.naturalWidth === 0 && !/\.svg(\?|#|$)/i.test(img.currentSrc || img.src)) {
      ok = false; why = 'naturalWidth is 0';
    }
    return {src: img.getAttribute('src'), url: img.currentSrc || img.src, ok: ok, why: why,
            naturalWidth: img.naturalWidth};
  }));

  const links = Array.from(document.querySelectorAll('a[href], area[href]')).map((a) => ({
    href: a.getAttribute('href'), url: a.href}));

  const ids = Array.from(document.querySelectorAll('[id]')).map((e) => e.id)
    .concat(Array.from(document.querySelectorAll('a[name]')).map((e) => e.getAttribute('name')));

  // Math: Sphinx marks math with class "math"; MathJax v3 renders into <mjx-container>,
  // v2 into .MathJax / .MathJax_Display / .MathJax_SVG ... elements.
  const rendered = 'mjx-container, .MathJax, .MathJax_Display, .MathJax_SVG, .MathJax_CHTML, .MathJax_Preview';
  const mathEls = Array.from(document.querySelectorAll('.math')).filter((e) => !e.closest('pre, code'));
  const untypeset = mathEls.filter((e) => !e.querySelector(rendered) && !e.matches(rendered));
  const containers = document.querySelectorAll('mjx-container, .MathJax, .MathJax_Display, .MathJax_SVG').length;

  // Raw TeX delimiters left in visible (non-code) text.
  const raw = [];
  const skip = 'pre, code, script, style, textarea, noscript, mjx-container, .MathJax, .MathJax_Preview, .math';
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode()) && raw.length < 5) {
    const t = node.nodeValue;
    if (!t || !(t.includes('\\(') || t.includes('\\[') || t.includes('$$'))) continue;
    const parent = node.parentElement;
    if (parent && parent.closest(skip)) continue;
    raw.push(t.trim().slice(0, 80));
  }

  const errors = Array.from(document.querySelectorAll('mjx-merror, [data-mjx-error], .MathJax_Error'))
    .map((e) => (e.getAttribute('data-mjx-error') || e.getAttribute('title') || e.textContent || '').trim().slice(0, 120));

  return {mathjaxWait, mjVersion, images, links, ids,
          math: {elements: mathEls.length, untypeset: untypeset.length,
                 untypesetSample: untypeset.slice(0, 3).map((e) => e.textContent.trim().slice(0, 60)),
                 containers, raw, errors}};
}
"""


# JavaScript for the layout checks, run after the screenshot: opens every collapsed cell and
# dropdown (<details>), then measures.  "Text" is the page's main article (Sphinx themes:
# <article> / main / [role=main]); without one, the body.
_LAYOUT_JS = r"""
() => {
  document.querySelectorAll('details').forEach((d) => { d.open = true; });
  const text = document.querySelector('article.bd-article, article, main, [role="main"]') || document.body;
  const textBox = text.getBoundingClientRect();
  const snippet = (e) => (e.innerText || e.getAttribute('alt') || e.tagName).trim().replace(/\s+/g, ' ').slice(0, 70);
  const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  // Code and output blocks: every <pre> (code cells, text outputs, literal blocks) and
  // every rich (HTML) output.
  const blockSel = 'pre, div.output.text_html';
  const blocks = Array.from(text.querySelectorAll(blockSel)).filter(visible);
  // Display math only (div.math / display containers): inline math flows with the text.
  const wideSel = 'table, figure, img, div.math, mjx-container[display="true"], .nlt-explorer';
  const wide = Array.from(text.querySelectorAll(wideSel)).filter(visible);
  const overflowing = [];
  const seen = new Set();
  const note = (e, why) => { if (seen.has(e)) return; seen.add(e);
    overflowing.push({tag: e.tagName.toLowerCase(), cls: String(e.className || '').slice(0, 40), why: why,
                      text: snippet(e)}); };
  for (const e of blocks.concat(wide)) {
    // The element itself scrolls (or would scroll) sideways ...
    if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0) {
      note(e, `content ${e.scrollWidth} px wide in a ${e.clientWidth} px box`);
      continue;
    }
    // ... or sticks out of the text column.
    const r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > textBox.right + 2) {
      note(e, `right edge at ${Math.round(r.right)} px, text column ends at ${Math.round(textBox.right)} px`);
    }
  }
  // Containers that scroll because of what they hold (a wrapper around a wide table/image).
  for (const e of Array.from(text.querySelectorAll('div.cell_output, div.output, div.pst-scrollable-table-container, div.table-wrapper')).filter(visible)) {
    if (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 && !Array.from(seen).some((o) => e.contains(o))) {
      note(e, `content ${e.scrollWidth} px wide in a ${e.clientWidth} px box`);
    }
  }
  const doc = document.scrollingElement || document.documentElement;
  const pageOverflow = doc.scrollWidth > window.innerWidth + 1 ? doc.scrollWidth : 0;

  // Alt text of images in the text (explorer fallbacks included).
  const badAlt = [];
  let altOk = 0;
  const imgs = Array.from(text.querySelectorAll('img'));
  for (const img of imgs) {
    const alt = (img.getAttribute('alt') || '').trim();
    const src = img.getAttribute('src') || '';
    const base = src.split('/').pop().split('?')[0];
    const fileLike = /^[\w./-]+\.(png|svg|jpe?g|gif|webp)$/i.test(alt) || alt === base || alt === src;
    if (!alt || fileLike || alt.length < 8) badAlt.push({src: src, alt: alt}); else altOk += 1;
  }
  // Cross-references: resolved ones are links holding a std-ref/std-numref/std-doc span;
  // an unresolved one is an xref span without a link around it.
  const xrefs = text.querySelectorAll('a.reference.internal > span.std-ref, a.reference.internal > span.std-numref, a.reference.internal > span.std-doc, a.reference.internal > span.doc').length;
  const unresolved = Array.from(text.querySelectorAll('span.xref, code.xref')).filter((e) => !e.closest('a'))
    .map((e) => e.textContent.trim().slice(0, 60));
  const figures = text.querySelectorAll('figure').length;
  const explorers = Array.from(document.querySelectorAll('.nlt-explorer')).map((e) => e.id || '');
  return {nBlocks: blocks.length, overflowing, pageOverflow, viewport: window.innerWidth,
          badAlt, altOk, xrefs, unresolved, figures, explorers};
}
"""

# Explorer state: the selected query and a fingerprint of the drawn map.
_EXPLORER_STATE_JS = r"""
(root) => {
  const map = root.querySelector('canvas.nlt-explorer-map');
  let pixels = '';
  try { pixels = map ? map.toDataURL() : ''; } catch (e) { pixels = 'unreadable: ' + e; }
  return {query: root.getAttribute('data-query'), map: pixels};
}
"""


def _judge_layout(info, pr: PageResult, problem) -> None:
    pr.n_blocks = info["nBlocks"]
    pr.n_overflowing = len(info["overflowing"])
    pr.n_figures = info["figures"]
    pr.n_alt_ok = info["altOk"]
    pr.n_xrefs = info["xrefs"]
    for o in info["overflowing"]:
        problem("layout", f"<{o['tag']} class={o['cls']!r}> scrolls sideways at a "
                          f"{info['viewport']}-px window ({o['why']}): {o['text']!r}")
    if info["pageOverflow"]:
        problem("layout", f"the page scrolls sideways: {info['pageOverflow']} px wide at a "
                          f"{info['viewport']}-px window")
    for img in info["badAlt"]:
        what = "no alt text" if not img["alt"] else f"alt text {img['alt']!r} is not a description"
        problem("alt", f"image {img['src']!r}: {what}")
    for ref in info["unresolved"]:
        problem("xref", f"unresolved cross-reference {ref!r} (no link)")


def _check_explorers(page, pr: PageResult, problem) -> None:
    """Click two points of every explorer's image; each click must change the view."""
    roots = page.query_selector_all(".nlt-explorer")
    for k, root in enumerate(roots):
        name = root.get_attribute("id") or f"explorer {k + 1}"
        canvas = root.query_selector("canvas.nlt-explorer-image")
        if canvas is None or not canvas.is_visible():
            problem("explorer", f"{name}: no visible canvas.nlt-explorer-image (its script did not run)")
            continue
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        if not box or box["width"] < 4 or box["height"] < 4:
            problem("explorer", f"{name}: its image has no size on the page ({box})")
            continue
        states = [page.evaluate(_EXPLORER_STATE_JS, root)]
        answered = True
        for fx, fy in ((0.8, 0.8), (0.2, 0.2)):
            canvas.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
            page.wait_for_timeout(50)
            states.append(page.evaluate(_EXPLORER_STATE_JS, root))
            before, after = states[-2], states[-1]
            if after["query"] == before["query"] or after["map"] == before["map"]:
                problem("explorer", f"{name}: a click at ({fx:.0%}, {fy:.0%}) of its image did not "
                                    f"change the view (query {before['query']} -> {after['query']}, "
                                    f"map {'changed' if after['map'] != before['map'] else 'unchanged'})")
                answered = False
        pr.n_explorers += answered


def _is_network_console_noise(text: str) -> bool:
    # "Failed to load resource: ..." console errors duplicate network events,
    # which are reported more precisely (local) or summarised (blocked external).
    return text.startswith("Failed to load resource")


# --------------------------------------------------------------------------- main check


def chromium_path() -> str:
    """The browser to use by default: ``$NLTUTORIAL_CHROMIUM`` when set and non-empty, else Debian's."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def _from_env(chromium: str) -> bool:
    return bool(os.environ.get(CHROMIUM_ENV)) and chromium == os.environ[CHROMIUM_ENV]


def require_chromium(chromium: Optional[str] = None) -> None:
    """Raise :class:`ChromiumUnavailable` unless ``chromium`` (default :func:`chromium_path`) is an executable file.

    When the path came from ``NLTUTORIAL_CHROMIUM`` the message names the variable.
    """
    chromium = chromium or chromium_path()
    if os.path.isfile(chromium) and os.access(chromium, os.X_OK):
        return
    if _from_env(chromium):
        what = "is a folder" if os.path.isdir(chromium) else (
            "is not executable" if os.path.isfile(chromium) else "does not exist")
        raise ChromiumUnavailable(
            f"{CHROMIUM_ENV}={chromium!r} {what}: set {CHROMIUM_ENV} to the path of a Chromium or "
            f"Chrome executable (e.g. /usr/bin/google-chrome), or unset it to use Debian's {DEFAULT_CHROMIUM}")
    raise ChromiumUnavailable(
        f"Chromium not found at {chromium}: install Debian's chromium package "
        f"(apt-get install chromium), or set {CHROMIUM_ENV} to another Chromium or Chrome "
        f"executable, to run the browser check")


def launch_browser(playwright, chromium: Optional[str] = None):
    """Launch headless Chromium from ``chromium`` (default :func:`chromium_path`) with the offline-friendly args."""
    chromium = chromium or chromium_path()
    require_chromium(chromium)
    try:
        return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
    except Exception as exc:  # playwright.Error and friends
        source = f" ({CHROMIUM_ENV})" if _from_env(chromium) else ""
        raise ChromiumUnavailable(f"Chromium at {chromium}{source} did not start: {exc}") from exc


def import_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise ChromiumUnavailable(
            "the Python package playwright is not installed (pip install playwright; "
            "the browser itself comes from Debian's chromium package, no `playwright install`)"
        ) from exc
    return sync_playwright


def check_site(
    html_dir,
    screenshot_dir=None,
    chromium: Optional[str] = None,
    *,
    pages: Optional[Iterable[str]] = None,
    browser=None,
    log: Optional[Callable[[str], None]] = None,
) -> CheckResult:
    """Check every page of the built site in ``html_dir``; returns a :class:`CheckResult`.

    ``result.problems`` is the list of :class:`Problem` (empty when all is well).
    ``screenshot_dir``: where to write one full-page PNG per page (None: no screenshots).
    ``pages``: relative page paths to visit (default: all, see :func:`find_pages`).
    ``browser``: an already launched playwright Browser to reuse (else one is launched
    from ``chromium``, default :func:`chromium_path`, and closed again).  ``log``: called with each page's summary line.

    Raises :class:`ChromiumUnavailable` when playwright or Chromium is missing,
    FileNotFoundError when ``html_dir`` does not exist.
    """
    html_dir = Path(html_dir)
    if not html_dir.is_dir():
        raise FileNotFoundError(f"HTML folder not found: {html_dir}")
    shots = Path(screenshot_dir) if screenshot_dir is not None else None
    page_list = list(pages) if pages is not None else find_pages(html_dir)
    result = CheckResult(html_dir=html_dir)

    if browser is not None:
        _check_pages(browser, html_dir, shots, page_list, result, log)
        return result

    require_chromium(chromium)
    sync_playwright = import_playwright()
    with sync_playwright() as pw:
        own = launch_browser(pw, chromium)
        try:
            _check_pages(own, html_dir, shots, page_list, result, log)
        finally:
            own.close()
    return result


def _check_pages(browser, html_dir, shots, page_list, result, log):
    if shots is not None:
        shots.mkdir(parents=True, exist_ok=True)
    with LocalServer(html_dir) as server:
        def is_external(url: str) -> bool:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                return False
            return not (parts.scheme in ("http", "https") and parts.netloc == server.netloc)

        blocked: List[str] = []

        def abort(route):
            blocked.append(route.request.url)
            route.abort("blockedbyclient")

        for rel in page_list:
            t0 = time.monotonic()
            blocked = []
            # A fresh context (empty cookies / localStorage) per page: every page is
            # checked as a first visit, independent of the order of the pages.
            context = browser.new_context(viewport=VIEWPORT, service_workers="block")
            context.set_default_timeout(NAV_TIMEOUT_MS)
            context.route(is_external, abort)
            try:
                pr = _check_one(context, server, html_dir, shots, rel, is_external)
            finally:
                context.close()
            pr.external_requests = list(dict.fromkeys(blocked))
            pr.seconds = time.monotonic() - t0
            result.pages.append(pr)
            if log:
                log(pr.summary())
                for p in pr.problems:
                    log(f"       {p.kind}: {p.message}")


def _check_one(context, server, html_dir: Path, shots: Optional[Path], rel: str, is_external) -> PageResult:
    pr = PageResult(page=rel)

    def problem(kind: str, message: str):
        pr.problems.append(Problem(rel, kind, message))

    page = context.new_page()

    def on_console(msg):
        if msg.type != "error":
            return
        text = msg.text
        if _is_network_console_noise(text):
            return
        loc = msg.location or {}
        where = ""
        if loc.get("url"):
            where = f" (at {loc['url'].replace(server.origin + '/', '')}:{loc.get('lineNumber', '?')})"
        problem("console", f"console error: {text}{where}")

    def on_pageerror(err):
        problem("pageerror", f"uncaught error: {getattr(err, 'message', None) or err}")

    http_failed: Set[str] = set()

    def on_response(resp):
        if resp.status >= 400 and not is_external(resp.url):
            http_failed.add(resp.url)
            problem("http", f"HTTP {resp.status} for {resp.url.replace(server.origin + '/', '')}")

    def on_requestfailed(req):
        if is_external(req.url):
            return  # blocked on purpose; listed in the summary
        if req.url in http_failed:
            return  # already reported with its HTTP status (Chromium then aborts e.g. a 404 stylesheet)
        problem("request", f"request failed: {req.url.replace(server.origin + '/', '')} ({req.failure})")

    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    page.on("response", on_response)
    page.on("requestfailed", on_requestfailed)

    url = f"{server.origin}/{urllib.parse.quote(rel)}"
    try:
        try:
            page.goto(url, wait_until="load", timeout=NAV_TIMEOUT_MS)
        except Exception as exc:
            problem("load", f"page did not load: {exc}")
            return pr
        try:
            page.wait_for_load_state("networkidle", timeout=IDLE_TIMEOUT_MS)
        except Exception:
            pass  # long-polling or slow assets; the load event is enough
        info = None
        for attempt in range(3):
            try:
                info = page.evaluate(_INSPECT_JS, MATHJAX_TIMEOUT_MS)
                break
            except Exception as exc:
                # A redirecting page (e.g. Sphinx' index.html with <meta http-equiv="Refresh">)
                # may navigate away while being inspected: wait for the new page and retry.
                if attempt < 2 and ("context was destroyed" in str(exc) or "navigat" in str(exc)):
                    try:
                        page.wait_for_load_state("load", timeout=NAV_TIMEOUT_MS)
                    except Exception:
                        pass
                    continue
                problem("inspect", f"could not inspect the page: {exc}")
                break
        final_url = urllib.parse.urlsplit(page.url)
        final_rel = urllib.parse.unquote(final_url.path).lstrip("/") or "index.html"
        if final_rel != rel:
            pr.redirected_to = final_rel
        if info is not None:
            _judge_math(info, pr, problem)
            _judge_images(info, pr, problem, is_external)
            _judge_links(info, pr, problem, html_dir, server, final_rel, is_external)
        if shots is not None:
            target = shots / screenshot_name(rel)
            try:
                page.screenshot(path=str(target), full_page=True)
                pr.screenshot = target
            except Exception as exc:
                problem("screenshot", f"screenshot failed: {exc}")
        if info is not None:
            try:
                _judge_layout(page.evaluate(_LAYOUT_JS), pr, problem)
                _check_explorers(page, pr, problem)
            except Exception as exc:
                problem("inspect", f"could not check the layout or the explorers: {exc}")
        # Let late console messages / errors arrive before detaching.
        page.wait_for_timeout(50)
    finally:
        page.close()
    return pr


def _judge_math(info, pr: PageResult, problem) -> None:
    m = info["math"]
    pr.mathjax_version = info["mjVersion"]
    pr.n_math = m["elements"]
    pr.n_typeset = m["elements"] - m["untypeset"]
    has_math = m["elements"] > 0 or m["containers"] > 0 or bool(m["raw"])
    if not has_math:
        return
    if not info["mjVersion"]:
        problem("mathjax", f"page contains math ({m['elements']} math elements"
                           f"{', raw TeX in text' if m['raw'] else ''}) but MathJax did not load "
                           f"(window.MathJax.version undefined; is MathJax served from a CDN?)")
        return
    if info["mathjaxWait"] == "timeout":
        problem("mathjax", "MathJax did not finish typesetting in time")
    elif info["mathjaxWait"] == "rejected":
        problem("mathjax", "MathJax startup promise was rejected")
    if m["untypeset"]:
        problem("mathjax", f"{m['untypeset']} of {m['elements']} math elements not typeset by MathJax, "
                           f"e.g. {m['untypesetSample']}")
    if m["raw"]:
        problem("mathjax", f"raw TeX delimiters left in the text (not typeset): {m['raw']}")
    for err in m["errors"][:5]:
        problem("mathjax", f"MathJax error: {err}")
    if len(m["errors"]) > 5:
        problem("mathjax", f"... and {len(m['errors']) - 5} more MathJax errors")


def _judge_images(info, pr: PageResult, problem, is_external) -> None:
    for img in info["images"]:
        if is_external(img["url"]):
            continue  # blocked on purpose; listed in the summary
        pr.n_images += 1
        if not img["ok"]:
            problem("image", f"broken image {img['src']!r} ({img['why']})")


def _judge_links(info, pr: PageResult, problem, html_dir: Path, server, rel: str, is_external) -> None:
    dom_ids = set(info["ids"])
    seen: Set[str] = set()
    for link in info["links"]:
        href, url = link["href"], link["url"]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https", "file"):
            continue  # mailto:, javascript:, tel:, data: ...
        if is_external(url):
            pr.n_external_links += 1
            continue
        pr.n_links += 1
        if url in seen:
            continue
        seen.add(url)
        target = _resolve_local_file(html_dir, parts.path)
        if target is None:
            problem("link", f"broken link {href!r}: {urllib.parse.unquote(parts.path).lstrip('/') or '/'} "
                            f"does not exist")
            continue
        frag = urllib.parse.unquote(parts.fragment)
        if not frag or frag == "top":
            continue  # "#" and "#top" always scroll somewhere
        target_rel = target.relative_to(html_dir).as_posix()
        if target.suffix.lower() not in (".html", ".htm"):
            continue
        ids = ids_in_file(target)
        if target_rel == rel:
            ids = ids | dom_ids  # ids created by scripts on this very page
        if frag not in ids:
            problem("fragment", f"link {href!r}: no element with id {frag!r} in {target_rel}")


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--html", default="_build/html", help="built HTML folder (default: _build/html)")
    ap.add_argument("--screenshots", default="_build/screenshots",
                    help="folder for full-page PNG screenshots (default: _build/screenshots)")
    ap.add_argument("--no-screenshots", action="store_true", help="do not write screenshots")
    ap.add_argument("--chromium", default=None,
                    help=f"Chromium executable (default: ${CHROMIUM_ENV} when set, else {DEFAULT_CHROMIUM})")
    ap.add_argument("--require", action="store_true",
                    help="fail (exit 1) instead of skipping when Chromium or playwright is missing")
    ap.add_argument("pages", nargs="*", help="only these pages (paths relative to --html)")
    args = ap.parse_args(argv)

    html_dir = Path(args.html)
    if not (html_dir / "index.html").is_file() and not args.pages:
        print(f"browser_check: {html_dir}/index.html not found: build the book first "
              f"(jupyter-book build .)", file=sys.stderr)
        return 2
    try:
        result = check_site(html_dir, None if args.no_screenshots else args.screenshots,
                            chromium=args.chromium, pages=args.pages or None,
                            log=lambda line: print(line, flush=True))
    except ChromiumUnavailable as exc:
        if args.require:
            print(f"browser_check: {exc}; --require given: failing", file=sys.stderr)
            return 1
        print(f"browser_check: {exc}; skipping", file=sys.stderr)
        return 0
    except FileNotFoundError as exc:
        print(f"browser_check: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    if not args.no_screenshots:
        print(f"screenshots in {args.screenshots}")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
