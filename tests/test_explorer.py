"""nltutorial.explorer: the self-contained HTML attention explorer.

The script itself runs in Node against a tiny fake DOM (skipped without ``node``) and, when
Playwright and Chromium are installed, in a real headless browser.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import nltutorial as nlt
from nltutorial.explorer import AttentionExplorer, _png


def example(Q=6, h=5, w=7, H=20, W=28, colour=False, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((H, W, 3) if colour else (H, W))
    maps = rng.random((Q, h, w))
    grid = np.stack([np.linspace(2, H - 3, Q), np.linspace(3, W - 4, Q)], axis=1).round()
    return image, maps, grid


def data_of(html):
    """The JSON object the inline script carries."""
    m = re.search(r"var D = (\{.*?\});\n", html)
    assert m, "no data object in the script"
    return json.loads(m.group(1).replace("<\\/", "</"))


def decode_png(url):
    from PIL import Image

    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    return img


def test_html_is_deterministic_and_its_id_follows_the_content():
    image, maps, grid = example()
    a = nlt.attention_explorer(image, maps, grid, title="t").html
    b = nlt.attention_explorer(image.copy(), maps.copy(), grid.copy(), title="t").html
    assert a == b
    uid = re.search(r'class="nlt-explorer" id="(nlt-explorer-[0-9a-f]{12})"', a).group(1)
    maps2 = maps.copy()
    maps2[3, 0, 0] += 0.5
    c = nlt.attention_explorer(image, maps2, grid, title="t").html
    assert uid not in c, "different maps must give a different id"
    assert uid not in nlt.attention_explorer(image, maps, grid, title="other").html


def test_html_is_self_contained():
    image, maps, grid = example(colour=True)
    html = nlt.attention_explorer(image, maps, grid, caption="see https://example.org")._repr_html_()
    body = html.replace("see https://example.org", "")       # the caption is text, escaped
    assert "http://" not in body and "https://" not in body
    assert "<link" not in body and "import(" not in body and "fetch(" not in body
    sources = re.findall(r'src="([^"]*)"', html) + re.findall(r"\.src = (\S+);", html)
    assert sources, "expected the static images"
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,"), src[:40]
    assert html.count("<script>") == 1 and "<script src" not in html


def test_root_element_fallback_and_accessible_labels():
    image, maps, grid = example()
    ex = nlt.attention_explorer(image, maps, grid, title="NLM <weights>", alt="Weights of a pixel")
    html = ex.html
    assert re.search(r'<div class="nlt-explorer" id="nlt-explorer-[0-9a-f]{12}" data-query="0" '
                     r'role="group" aria-label="Weights of a pixel"', html)
    assert "NLM &lt;weights&gt;" in html and "<weights>" not in html          # escaped title
    static = re.search(r'<div class="nlt-explorer-static">(.*?)</div>', html).group(1)
    imgs = re.findall(r"<img [^>]*>", static)
    assert len(imgs) == 2 and all('alt="' in i for i in imgs)
    first = re.search(r'src="([^"]*)"', imgs[1]).group(1)
    assert np.array_equal(np.asarray(decode_png(first)), np.asarray(
        decode_png(data_of(html)["atlas"]))[:5]), "the fallback is the first query's map"
    assert 'aria-live="polite"' in html and "query 1 of 6" in html
    default = nlt.attention_explorer(image, maps, grid, title="T").alt
    assert default.startswith("T: an image with 6 query positions")


def test_embeds_every_map_quantised_on_its_own_scale():
    image, maps, grid = example(Q=4, h=3, w=5)
    maps[1] *= 10                      # another scale: still 0..255
    maps[2] = 0.25                     # constant: no division by zero
    maps[3] -= 0.5                     # signed: scale from the minimum
    data = data_of(nlt.attention_explorer(image, maps, grid).html)
    atlas = decode_png(data["atlas"])
    assert atlas.mode == "P" and atlas.size == (5, 4 * 3)              # Q maps stacked
    levels = np.asarray(atlas).reshape(4, 3, 5)
    for k in (0, 1):
        expected = np.round(maps[k] / maps[k].max() * 255)
        assert np.array_equal(levels[k], expected.astype(np.uint8))
    assert np.array_equal(levels[2], np.full((3, 5), 255, np.uint8))
    assert levels[3].min() == 0 and levels[3].max() == 255
    assert len(data["grid"]) == len(data["extents"]) == len(data["maxima"]) == 4
    assert data["maxima"][1] == float(f"{maps[1].max():.3g}")
    assert data["extents"][0] == [0.0, 0.0, 20.0, 28.0]                   # default: whole image


def test_png_encoder_round_trips_grey_rgb_and_palette():
    from PIL import Image

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    rgb = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png(grey)))), grey)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(_png(rgb)))), rgb)
    p = Image.open(io.BytesIO(_png(grey, palette)))
    assert np.array_equal(np.asarray(p), grey)
    assert np.array_equal(np.asarray(p.convert("RGB")), palette[grey])


def test_image_values_are_embedded():
    image, maps, grid = example(colour=True)
    html = nlt.attention_explorer(image, maps, grid).html
    shown = np.asarray(decode_png(re.search(r'<img src="([^"]*)"', html).group(1)))
    assert shown.shape == (20, 28, 3)
    assert np.array_equal(shown, np.round(image * 255).astype(np.uint8))


def test_accepts_torch_tensors_and_extents():
    image, maps, grid = example()
    extents = np.concatenate([grid - 2, grid + 3], axis=1)                 # 5×5 windows
    a = nlt.attention_explorer(torch.from_numpy(image), torch.from_numpy(maps).requires_grad_(),
                               torch.from_numpy(grid), extents=extents)
    b = nlt.attention_explorer(image, maps, grid, extents=extents)
    assert isinstance(a, AttentionExplorer) and a.html == b.html
    assert data_of(a.html)["extents"][0] == extents[0].tolist()
    assert "6 queries, image 20×28, maps 5×7" in repr(a)


@pytest.mark.parametrize("change, match", [
    (dict(image=np.zeros((4, 5, 4))), r"image must have shape \(H, W\) or \(H, W, 3\)"),
    (dict(image=np.full((20, 28), 1.5)), r"image values must lie in \[0, 1\]"),
    (dict(image=np.full((20, 28), np.nan)), "image must contain only finite numbers"),
    (dict(image="cat"), "image must be an array of numbers"),
    (dict(maps=np.zeros((6, 5))), r"maps must have shape \(Q, h, w\)"),
    (dict(grid=np.zeros((5, 2))), r"grid must have shape \(Q, 2\) = \(6, 2\)"),
    (dict(grid=np.zeros((6, 3))), r"grid must have shape \(Q, 2\)"),
    (dict(grid=np.array([[0, 0]] * 5 + [[20, 3]])), r"grid\[5\] = \[20.0, 3.0\] lies outside"),
    (dict(extents=np.zeros((6, 3))), r"extents must have shape \(Q, 4\)"),
    (dict(extents=np.array([[0, 0, 5, 5]] * 5 + [[3, 0, 3, 5]])), r"extents\[5\] .* is empty"),
    (dict(title=3), "title must be a string"),
    (dict(alt=""), "alt must be a non-empty string"),
    (dict(cmap="no-such-map"), "cmap must be a matplotlib colour map name"),
    (dict(display_size=10), r"display_size must be an int in \[64, 1024\]"),
    (dict(max_bytes=1000), r"more than max_bytes=1,000"),
])
def test_bad_input_names_the_argument(change, match):
    image, maps, grid = example()
    kwargs = dict(image=image, maps=maps, grid=grid) | change
    with pytest.raises(ValueError, match=match):
        nlt.attention_explorer(kwargs.pop("image"), kwargs.pop("maps"), kwargs.pop("grid"), **kwargs)


def test_payload_of_a_chapter_sized_explorer_stays_small():
    # chapter 1: a 192×192 noisy crop and 144 search windows of 31×31
    rng = np.random.default_rng(0)
    image = rng.random((192, 192))
    maps = np.exp(-rng.random((144, 31, 31)) * 5)
    r = np.linspace(20, 171, 12).round()
    grid = np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    ex = nlt.attention_explorer(image, maps, grid)
    assert ex.n_bytes < 300_000
    assert len(ex.html) < ex.n_bytes + 20_000, "each image is embedded once"


# --- the script, run in Node against a fake DOM -------------------------------------------

FAKE_DOM = r"""
const calls = [];
function ctx(name) {
  const c = {}; const rec = (f) => (...a) => calls.push([name, f, ...a]);
  for (const f of ["drawImage", "fillRect", "strokeRect", "clearRect", "beginPath", "moveTo",
                   "lineTo", "stroke"]) c[f] = rec(f);
  return c;
}
function canvas(name, w, h) {
  const listeners = {}; const c2d = ctx(name);
  return {width: w, height: h, getContext: () => c2d,
          addEventListener: (t, f) => { listeners[t] = f; }, listeners,
          getBoundingClientRect: () => ({left: 10, top: 20, width: w, height: h})};
}
const attrs = {"data-query": "0"};
const parts = {
  ".nlt-explorer-views": {style: {display: "none"}},
  ".nlt-explorer-static": {style: {}},
  ".nlt-explorer-static img": {getAttribute: (k) => k === "src" ? "data:image/png;base64," : null},
  ".nlt-explorer-image": canvas("image", IW, IH),
  ".nlt-explorer-map": canvas("map", MW, MH),
  ".nlt-explorer-status": {textContent: ""},
};
const root = {querySelector: (s) => parts[s], setAttribute: (k, v) => { attrs[k] = v; }};
globalThis.document = {currentScript: null, getElementById: (id) => id === ID ? root : null};
globalThis.Image = class { set src(v) { this._src = v; setTimeout(() => this.onload(), 0); } };
"""

DRIVER = r"""
setTimeout(() => {
  const out = {shown: parts[".nlt-explorer-views"].style.display,
               hidden: parts[".nlt-explorer-static"].style.display, queries: [attrs["data-query"]],
               sources: []};
  const img = parts[".nlt-explorer-image"];
  const mapDraws = () => calls.filter((c) => c[0] === "map" && c[1] === "drawImage");
  out.sources.push(mapDraws().at(-1).slice(3, 7));
  for (const [x, y] of CLICKS) {
    img.listeners.click({clientX: 10 + x, clientY: 20 + y});
    out.queries.push(attrs["data-query"]);
    out.sources.push(mapDraws().at(-1).slice(3, 7));
  }
  img.listeners.keydown({key: "ArrowRight", preventDefault() {}});
  out.queries.push(attrs["data-query"]);
  out.status = parts[".nlt-explorer-status"].textContent;
  console.log(JSON.stringify(out));
}, 20);
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_script_selects_the_nearest_query_on_click(tmp_path):
    image, maps, grid = example(Q=6, h=5, w=7, H=20, W=28)
    ex = nlt.attention_explorer(image, maps, grid, display_size=280)       # 10 CSS px per pixel
    html = ex.html
    uid = re.search(r'id="(nlt-explorer-[0-9a-f]{12})"', html).group(1)
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    (iw, ih), (mw, mh) = ex._sizes()
    clicks = [((grid[4, 1] + 0.5) * 10, (grid[4, 0] + 0.5) * 10),          # on query 4
              ((grid[1, 1] + 0.9) * 10, (grid[1, 0] + 0.2) * 10)]          # near query 1
    prelude = FAKE_DOM.replace("IW", str(iw)).replace("IH", str(ih)).replace("MW", str(mw))
    prelude = prelude.replace("MH", str(mh)).replace("ID", json.dumps(uid))
    js = tmp_path / "run.js"
    js.write_text(prelude + script + DRIVER.replace("CLICKS", json.dumps(clicks)))
    result = subprocess.run(["node", str(js)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["shown"] == "flex" and out["hidden"] == "none"              # fallback replaced
    assert out["queries"] == ["0", "4", "1", "2"]                          # clicks, then a key
    # the map view draws the tile of the selected query from the stacked maps
    assert out["sources"] == [[0, 0, 7, 5], [0, 20, 7, 5], [0, 5, 7, 5]]
    assert out["status"].startswith("query 3 of 6 at row")


# --- the script in a real browser, when there is one ---------------------------------------

CHROMIUM = os.environ.get("NLTUTORIAL_CHROMIUM", "/usr/bin/chromium")


def test_in_headless_chromium_a_click_changes_the_view(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"Chromium not found at {CHROMIUM}")
    image, maps, grid = example(Q=6)
    page_file = tmp_path / "explorer.html"
    page_file.write_text("<!doctype html><html><body>" + nlt.attention_explorer(image, maps, grid).html
                         + "</body></html>")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_function("getComputedStyle(document.querySelector("
                               "'.nlt-explorer-views')).display === 'flex'")
        pixels = "Array.from(document.querySelector('.nlt-explorer-map').getContext('2d')" \
                 ".getImageData(0, 0, 40, 40).data).join()"
        before = page.evaluate(pixels)
        canvas = page.locator(".nlt-explorer-image")
        box = canvas.bounding_box()
        scale = box["width"] / image.shape[1]
        canvas.click(position={"x": (grid[5, 1] + 0.5) * scale, "y": (grid[5, 0] + 0.5) * scale})
        assert page.locator(".nlt-explorer").get_attribute("data-query") == "5"
        assert page.evaluate(pixels) != before
        browser.close()
    assert errors == []
