"""Browser checks (tools/browser_check.py): unit tests on small synthetic sites,
and a check of the built book in _build/html when it exists.

Needs the Python package playwright and Debian's chromium (/usr/bin/chromium), or
another Chromium or Chrome executable named by NLTUTORIAL_CHROMIUM; the tests skip
when either is missing, unless NLTUTORIAL_REQUIRE_BUILD=1, in which case they fail
(as does the book test when the book is not built).
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = os.environ.get("NLTUTORIAL_REQUIRE_BUILD") == "1"
# NLTUTORIAL_BOOK_HTML: check another built site instead (e.g. a throwaway demo book).
BOOK_HTML = Path(os.environ.get("NLTUTORIAL_BOOK_HTML", ROOT / "_build" / "html"))
BOOK_SHOTS = BOOK_HTML.parent / "screenshots"  # _build/screenshots by default


def _load_checker():
    spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tools" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


bc = _load_checker()
CHROMIUM = bc.chromium_path()  # $NLTUTORIAL_CHROMIUM, else /usr/bin/chromium


def _unavailable(reason: str):
    if REQUIRE:
        pytest.fail(f"{reason} (NLTUTORIAL_REQUIRE_BUILD=1, so not skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the whole module."""
    try:
        sync_playwright = bc.import_playwright()
    except bc.ChromiumUnavailable as exc:
        _unavailable(str(exc))
    try:
        bc.require_chromium(CHROMIUM)
    except bc.ChromiumUnavailable as exc:
        _unavailable(str(exc))
    pw = sync_playwright().start()
    try:
        try:
            b = bc.launch_browser(pw, CHROMIUM)
        except bc.ChromiumUnavailable as exc:
            _unavailable(str(exc))
        yield b
        b.close()
    finally:
        pw.stop()


# --------------------------------------------------------------------------- synthetic sites


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid RGB PNG (red), written by hand."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def page(title: str, body: str, head: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"{head}</head>\n<body>{body}</body></html>\n")


def write_site(root: Path, files: dict) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def good_site(root: Path) -> Path:
    return write_site(root, {
        "index.html": page("Home", """
            <h1 id="top-title">Home</h1>
            <p><a href="book/chapter.html#sec-two">chapter, section two</a>
               <a href="#top-title">this page</a> <a href="book/">book folder</a>
               <a href="https://example.org/paper">an external link</a>
               <a href="mailto:someone@example.org">mail</a></p>
            <img src="img/dot.png" alt="a red dot, four pixels wide">
            <script>console.log("fine"); console.warn("only a warning");</script>
        """),
        "book/index.html": page("Book", '<p><a href="../index.html">home</a></p>'),
        "book/chapter.html": page("Chapter", """
            <h2 id="sec-one">One</h2><p><a href="../index.html#top-title">home</a></p>
            <h2 id="sec-two">Two</h2><p><a name="old-anchor"></a><a href="#old-anchor">old</a></p>
            <p><img src="../img/dot.png" alt="the same red dot again"></p>
            <pre><code>echo $$ \\(not math, code\\)</code></pre>
        """),
        "img/dot.png": tiny_png(),
        # Asset folders are not pages.
        "_static/ignored.html": page("ignored", '<a href="nowhere.html">x</a>'),
    })


def messages(result) -> str:
    return "\n".join(str(p) for p in result.problems)


def test_good_site_passes_and_writes_screenshots(browser, tmp_path):
    site = good_site(tmp_path / "site")
    shots = tmp_path / "shots"
    result = bc.check_site(site, shots, browser=browser)
    assert [p.page for p in result.pages] == ["book/chapter.html", "book/index.html", "index.html"]
    assert result.problems == [], messages(result)
    assert result.ok
    for name in ("index.png", "book_chapter.png", "book_index.png"):
        data = (shots / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 500, name
    home = next(p for p in result.pages if p.page == "index.html")
    assert home.n_images == 1 and home.n_links == 3 and home.n_external_links == 1
    assert result.summary().endswith("3 pages checked, 0 problems")


def test_external_requests_are_blocked_and_reported_not_errors(browser, tmp_path):
    site = write_site(tmp_path / "site", {
        "index.html": page("Ext", "<p>hello</p><img src='https://cdn.example.com/remote.png' alt='a remote picture'>",
                           head="<link rel='stylesheet' href='https://fonts.example.com/css?family=X'>"
                                "<script src='https://cdn.example.com/lib.js'></script>"),
    })
    result = bc.check_site(site, None, browser=browser)
    assert result.problems == [], messages(result)
    assert set(result.external_requests) == {
        "https://fonts.example.com/css?family=X", "https://cdn.example.com/lib.js",
        "https://cdn.example.com/remote.png"}
    assert "External requests blocked" in result.summary()


def bad_site(root: Path) -> Path:
    return write_site(root, {
        "index.html": page("Home", """
            <a href="broken_link.html">ok</a> <a href="missing_fragment.html">ok</a>
            <a href="broken_image.html">ok</a> <a href="js_error.html">ok</a>
            <a href="missing_css.html">ok</a> <a href="math_without_mathjax.html">ok</a>
        """),
        "broken_link.html": page("Broken link", '<a href="no_such_page.html">gone</a>'),
        "missing_fragment.html": page("Missing fragment",
                                      '<h1 id="here">x</h1><a href="index.html#nope">x</a>'),
        "broken_image.html": page("Broken image", '<img src="img/missing.png" alt="a missing picture">'
                                                  '<img src="img/corrupt.png" alt="a corrupt picture">'),
        "img/corrupt.png": b"this is not a png",
        "js_error.html": page("JS error", '<p>x</p><script>console.error("custom console error")</script>'
                                          '<script>throw new Error("boom")</script>'),
        "missing_css.html": page("Missing CSS", "<p>x</p>", head='<link rel="stylesheet" href="_static/nope.css">'),
        "math_without_mathjax.html": page("Math", '<p>Inline <span class="math notranslate nohighlight">'
                                                  '\\(x^2\\)</span>.</p>'),
    })


@pytest.fixture(scope="module")
def bad_result(browser, tmp_path_factory):
    site = bad_site(tmp_path_factory.mktemp("bad_site"))
    return bc.check_site(site, tmp_path_factory.mktemp("bad_shots"), browser=browser)


def problems_of(result, page_name):
    return [p for p in result.problems if p.page == page_name]


def test_bad_site_index_is_clean(bad_result):
    assert problems_of(bad_result, "index.html") == [], messages(bad_result)
    assert not bad_result.ok


def test_broken_internal_link(bad_result):
    probs = problems_of(bad_result, "broken_link.html")
    assert [p.kind for p in probs] == ["link"], messages(bad_result)
    assert "no_such_page.html" in probs[0].message
    assert "broken_link.html" in str(probs[0])


def test_missing_fragment_target(bad_result):
    probs = problems_of(bad_result, "missing_fragment.html")
    assert [p.kind for p in probs] == ["fragment"], messages(bad_result)
    assert "'nope'" in probs[0].message and "index.html" in probs[0].message


def test_broken_images(bad_result):
    probs = problems_of(bad_result, "broken_image.html")
    kinds = sorted(p.kind for p in probs)
    assert kinds == ["http", "image", "image"], messages(bad_result)
    text = "\n".join(map(str, probs))
    assert "img/missing.png" in text and "img/corrupt.png" in text and "HTTP 404" in text


def test_js_errors(bad_result):
    probs = problems_of(bad_result, "js_error.html")
    kinds = sorted(p.kind for p in probs)
    assert kinds == ["console", "pageerror"], messages(bad_result)
    text = "\n".join(map(str, probs))
    assert "boom" in text and "custom console error" in text


def test_missing_local_asset(bad_result):
    probs = problems_of(bad_result, "missing_css.html")
    assert [p.kind for p in probs] == ["http"], messages(bad_result)
    assert "HTTP 404" in probs[0].message and "_static/nope.css" in probs[0].message


def test_math_without_mathjax(bad_result):
    probs = problems_of(bad_result, "math_without_mathjax.html")
    assert [p.kind for p in probs] == ["mathjax"], messages(bad_result)
    assert "MathJax did not load" in probs[0].message


# --------------------------------------------------------------------------- layout, alt, xrefs, explorers

STYLE = "<style>article{width:800px} pre{overflow-x:auto} table{border-collapse:collapse}</style>"
LONG = "x = " + " + ".join(f"value_{k}" for k in range(60))          # about 600 characters


def layout_site(root: Path) -> Path:
    import numpy as np

    import nltutorial as nlt

    rng = np.random.default_rng(0)
    grid = np.array([[2, 2], [2, 12], [12, 2], [12, 12]])
    explorer = nlt.attention_explorer(rng.random((16, 16)), rng.random((4, 8, 8)), grid).html
    dead = re.sub(r"<script.*?</script>", "", explorer, flags=re.S)
    wide_row = "".join(f"<td>column_number_{k}</td>" for k in range(40))
    art = lambda body: f"<article>{body}</article>"  # noqa: E731 - the page's text column
    return write_site(root, {
        "index.html": page("Home", art("<p>home</p>")),
        "narrow_code.html": page("Narrow", art('<div class="highlight"><pre>x = 1\ny = 2</pre></div>'
                                               '<div class="cell_output"><div class="output text_plain">'
                                               '<pre>3</pre></div></div>'), STYLE),
        "wide_code.html": page("Wide", art(f'<div class="highlight"><pre>{LONG}</pre></div>'), STYLE),
        "collapsed.html": page("Collapsed", art(f"<details><summary>show</summary><pre>{LONG}</pre>"
                                                "</details>"), STYLE),
        "wide_table.html": page("Table", art(f"<table><tr>{wide_row}</tr></table>"), STYLE),
        "page_wide.html": page("Page", art("<p>x</p>") + '<div style="width:3000px">wide</div>', STYLE),
        "alt.html": page("Alt", art('<img src="img/dot.png"><img src="img/dot.png" alt="img/dot.png">'
                                    '<img src="img/dot.png" alt="dot.png">'
                                    '<figure><img src="img/dot.png" alt="a red dot on white"></figure>'),
                         STYLE),
        "xref.html": page("Xref", art('<h2 id="s">S</h2><a class="reference internal" href="#s">'
                                      '<span class="std std-ref">Section S</span></a>'
                                      '<span class="xref std std-ref">missing-label</span>'), STYLE),
        "explorer.html": page("Explorer", art(explorer), STYLE),
        "explorer_dead.html": page("Dead explorer", art(dead), STYLE),
        "img/dot.png": tiny_png(),
    })


@pytest.fixture(scope="module")
def layout_result(browser, tmp_path_factory):
    pytest.importorskip("numpy")
    site = layout_site(tmp_path_factory.mktemp("layout_site"))
    result = bc.check_site(site, None, browser=browser)
    return result, {p.page: p for p in result.pages}


def kinds_of(result, page_name):
    return sorted(p.kind for p in result.problems if p.page == page_name)


def test_narrow_blocks_pass_and_are_counted(layout_result):
    result, pages = layout_result
    assert kinds_of(result, "narrow_code.html") == [], messages(result)
    assert pages["narrow_code.html"].n_blocks == 2 and pages["narrow_code.html"].n_overflowing == 0


def test_a_block_that_scrolls_sideways_is_a_problem(layout_result):
    result, pages = layout_result
    assert kinds_of(result, "wide_code.html") == ["layout"], messages(result)
    msg = next(str(p) for p in result.problems if p.page == "wide_code.html")
    assert "scrolls sideways at a 1280-px window" in msg and "value_0" in msg
    assert pages["wide_code.html"].n_overflowing == 1


def test_collapsed_content_is_opened_and_measured(layout_result):
    result, _ = layout_result
    assert kinds_of(result, "collapsed.html") == ["layout"], messages(result)


def test_a_table_wider_than_the_text_column_is_a_problem(layout_result):
    result, _ = layout_result
    assert "layout" in kinds_of(result, "wide_table.html"), messages(result)
    assert any("column_number_0" in p.message or "text column" in p.message
               for p in result.problems if p.page == "wide_table.html")


def test_a_page_that_scrolls_sideways_is_a_problem(layout_result):
    result, _ = layout_result
    msgs = [p.message for p in result.problems if p.page == "page_wide.html"]
    assert any("the page scrolls sideways" in m for m in msgs), messages(result)


def test_images_need_a_real_alt_text(layout_result):
    result, pages = layout_result
    assert kinds_of(result, "alt.html") == ["alt", "alt", "alt"], messages(result)
    text = "\n".join(p.message for p in result.problems if p.page == "alt.html")
    assert "no alt text" in text and "'img/dot.png' is not a description" in text
    assert pages["alt.html"].n_alt_ok == 1 and pages["alt.html"].n_figures == 1


def test_unresolved_cross_references_are_problems(layout_result):
    result, pages = layout_result
    assert kinds_of(result, "xref.html") == ["xref"], messages(result)
    assert "missing-label" in str(next(p for p in result.problems if p.page == "xref.html"))
    assert pages["xref.html"].n_xrefs == 1


def test_explorers_must_answer_two_clicks(layout_result):
    result, pages = layout_result
    assert kinds_of(result, "explorer.html") == [], messages(result)
    assert pages["explorer.html"].n_explorers == 1
    assert kinds_of(result, "explorer_dead.html") == ["explorer"], messages(result)
    assert pages["explorer_dead.html"].n_explorers == 0


def test_totals_add_up_over_pages(layout_result):
    result, pages = layout_result
    totals = result.totals()
    assert totals["blocks"] == sum(p.n_blocks for p in pages.values())
    assert totals["explorers"] == 1 and totals["xrefs"] == 1
    assert f"{totals['blocks']} code/output blocks" in result.summary()


def test_screenshot_names():
    assert bc.screenshot_name("book/01_nl_means.html") == "book_01_nl_means.png"
    assert bc.screenshot_name("index.html") == "index.png"


# A stand-in for MathJax 3 (no MathJax is available offline here): it typesets each
# .math element into an <mjx-container>, and marks \error{...} as a MathJax error.
FAKE_MATHJAX = r"""
window.MathJax = {version: "3.2.2-fake", startup: {}};
window.MathJax.startup.promise = new Promise((resolve) => {
  document.addEventListener("DOMContentLoaded", () => {
    for (const el of document.querySelectorAll(".math")) {
      const tex = el.textContent;
      const c = document.createElement("mjx-container");
      if (tex.includes("\\error")) {
        const e = document.createElement("mjx-merror");
        e.setAttribute("data-mjx-error", "Undefined control sequence \\error");
        e.textContent = tex; c.appendChild(e);
      } else { c.textContent = "rendered"; }
      el.textContent = ""; el.appendChild(c);
    }
    setTimeout(resolve, 50);
  });
});
"""


def test_mathjax_typesetting_is_checked(browser, tmp_path):
    math = '<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>'
    head = '<script src="_static/fake-mathjax.js"></script>'
    site = write_site(tmp_path / "site", {
        "_static/fake-mathjax.js": FAKE_MATHJAX,
        "good.html": page("Good math", math, head=head),
        "merror.html": page("Bad math", math + '<div class="math">\\[\\error{x}\\]</div>', head=head),
        "raw.html": page("Raw", math + "<p>Unprocessed $$a+b$$ in prose.</p>", head=head),
    })
    result = bc.check_site(site, None, browser=browser)
    assert problems_of(result, "good.html") == [], messages(result)
    good = next(p for p in result.pages if p.page == "good.html")
    assert good.n_math == good.n_typeset == 1 and good.mathjax_version == "3.2.2-fake"
    merr = problems_of(result, "merror.html")
    assert [p.kind for p in merr] == ["mathjax"] and "Undefined control sequence" in merr[0].message
    raw = problems_of(result, "raw.html")
    assert [p.kind for p in raw] == ["mathjax"] and "raw TeX" in raw[0].message


def test_cli_exit_codes(tmp_path, capsys):
    site = good_site(tmp_path / "site")
    # Missing Chromium: a clear message, exit 0 (skip) or 1 with --require.
    missing = str(tmp_path / "no-chromium")
    assert bc.main(["--html", str(site), "--chromium", missing]) == 0
    err = capsys.readouterr().err
    assert f"Chromium not found at {missing}" in err and "apt-get install chromium" in err
    assert "skipping" in err
    assert bc.main(["--html", str(site), "--chromium", missing, "--require"]) == 1
    # No built site: exit 2.
    assert bc.main(["--html", str(tmp_path / "nothing"), "--chromium", missing]) == 2


def test_chromium_env_chooses_the_browser(monkeypatch, tmp_path):
    fake = tmp_path / "my-chrome"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv(bc.CHROMIUM_ENV, str(fake))
    assert bc.CHROMIUM_ENV == "NLTUTORIAL_CHROMIUM"
    assert bc.chromium_path() == str(fake)
    bc.require_chromium()  # an executable file: accepted, nothing raised
    monkeypatch.setenv(bc.CHROMIUM_ENV, "")  # empty counts as unset
    assert bc.chromium_path() == bc.DEFAULT_CHROMIUM == "/usr/bin/chromium"
    monkeypatch.delenv(bc.CHROMIUM_ENV)
    assert bc.chromium_path() == "/usr/bin/chromium"


@pytest.mark.parametrize("kind, what", [("missing", "does not exist"), ("folder", "is a folder"),
                                        ("plain file", "is not executable")])
def test_bad_chromium_env_value_is_named(monkeypatch, tmp_path, capsys, kind, what):
    bad = tmp_path / "chrome"
    if kind == "folder":
        bad.mkdir()
    elif kind == "plain file":
        bad.write_text("not a browser")
        bad.chmod(0o644)
        if os.access(bad, os.X_OK):
            pytest.skip("this user may execute any file")
    monkeypatch.setenv("NLTUTORIAL_CHROMIUM", str(bad))
    with pytest.raises(bc.ChromiumUnavailable) as err:
        bc.require_chromium()
    assert f"NLTUTORIAL_CHROMIUM={str(bad)!r} {what}: set NLTUTORIAL_CHROMIUM to the path of" in str(err.value)
    # The CLI without --chromium uses the variable: skips by default, fails with --require,
    # and both times says which variable holds the bad path.
    site = good_site(tmp_path / "site")
    assert bc.main(["--html", str(site)]) == 0
    out = capsys.readouterr().err
    assert f"NLTUTORIAL_CHROMIUM={str(bad)!r} {what}" in out and out.rstrip().endswith("skipping")
    assert bc.main(["--html", str(site), "--require"]) == 1
    assert f"NLTUTORIAL_CHROMIUM={str(bad)!r} {what}" in capsys.readouterr().err


def test_pytest_names_a_bad_chromium_env(tmp_path):
    """The browser tests skip (or, under NLTUTORIAL_REQUIRE_BUILD=1, fail) naming the variable."""
    try:
        bc.import_playwright()
    except bc.ChromiumUnavailable as exc:
        pytest.skip(str(exc))
    bad = str(tmp_path / "no-such-chrome")
    env = {k: v for k, v in os.environ.items() if k != "NLTUTORIAL_REQUIRE_BUILD"}
    env["NLTUTORIAL_CHROMIUM"] = bad
    cmd = [sys.executable, "-m", "pytest", "-q", "-rsf", str(ROOT / "tests" / "test_browser.py"),
           "-k", "test_good_site_passes_and_writes_screenshots"]
    skipped = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    assert f"NLTUTORIAL_CHROMIUM={bad!r} does not exist" in skipped.stdout, skipped.stdout
    failed = subprocess.run(cmd, cwd=ROOT, env={**env, "NLTUTORIAL_REQUIRE_BUILD": "1"},
                            capture_output=True, text=True, timeout=300)
    # pytest.fail in the fixture: the test errors at setup
    assert failed.returncode == 1 and "1 error" in failed.stdout, failed.stdout + failed.stderr
    assert f"NLTUTORIAL_CHROMIUM={bad!r} does not exist" in failed.stdout, failed.stdout


def run_cli(*args):
    # A separate process: playwright's sync API cannot start a second instance
    # inside the one the module's `browser` fixture holds.
    return subprocess.run([sys.executable, str(ROOT / "tools" / "browser_check.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_runs_the_check(browser, tmp_path):
    site = bad_site(tmp_path / "bad")
    shots = tmp_path / "shots"
    proc = run_cli("--html", str(site), "--screenshots", str(shots), "--chromium", CHROMIUM,
                   "missing_css.html", "js_error.html")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL missing_css.html" in proc.stdout and "2 pages checked, 3 problems" in proc.stdout
    assert sorted(p.name for p in shots.iterdir()) == ["js_error.png", "missing_css.png"]
    proc = run_cli("--html", str(good_site(tmp_path / "good")), "--no-screenshots", "--chromium", CHROMIUM)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 pages checked, 0 problems" in proc.stdout


# --------------------------------------------------------------------------- the real book


def test_built_book(browser):
    if not (BOOK_HTML / "index.html").is_file():
        msg = "book not built: run `jupyter-book build .` first"
        if REQUIRE:
            pytest.fail(f"{msg} (NLTUTORIAL_REQUIRE_BUILD=1)")
        pytest.skip(msg)
    result = bc.check_site(BOOK_HTML, BOOK_SHOTS, browser=browser)
    print(result.summary())
    assert result.pages, "no pages found in _build/html"
    assert result.problems == [], f"{len(result.problems)} problems:\n{messages(result)}\n\n{result.summary()}"
