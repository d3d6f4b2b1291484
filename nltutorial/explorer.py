"""Click a position of an image, see its attention map: a self-contained HTML explorer.

``attention_explorer(image, maps, grid)`` takes an image, one precomputed map per query
position and the query positions, and returns an :class:`AttentionExplorer`. A notebook cell
that ends with it shows (through ``_repr_html_``) the image and the map of the selected
query side by side; clicking the image selects the nearest precomputed query. Everything is
in the snippet: the image and the maps as base64 PNGs, an inline script, no network, no
kernel, so it works in Jupyter, in Colab and in the built book alike.

    image   (H, W) or (H, W, 3), values in [0, 1]
    maps    (Q, h, w), one map per query, any resolution h × w
    grid    (Q, 2), the (row, col) of each query in image pixels
    extents (Q, 4), optional: the (top, left, bottom, right) pixel edges each map covers;
            by default every map covers the whole image (a global attention map), for
            non-local means it is the search window around the query

Each map is quantised to 256 levels on its own scale, from min(0, map minimum) to the map
maximum, and coloured with a matplotlib colour map. The HTML is deterministic (its id is a
hash of its content), so nbval can compare it; readers without JavaScript see the first
query's map as a plain image.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import numbers
import struct
import zlib
from typing import Optional

import numpy as np

__all__ = ["AttentionExplorer", "attention_explorer"]

#: Largest embedded payload (the base64 PNGs) of one explorer, in bytes.
MAX_BYTES = 300_000


def _png(pixels: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """PNG file bytes of a uint8 image: (h, w) grey levels or palette indices, or (h, w, 3) RGB.

    A minimal encoder (no filter, zlib level 9, no metadata chunks), so the bytes depend on
    the pixels only.
    """
    h, w = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else (3 if palette is not None else 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)   # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0))
    if palette is not None:
        out += chunk(b"PLTE", palette.astype(np.uint8).tobytes())
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _as_array(name: str, value) -> np.ndarray:
    """``value`` (NumPy array, torch tensor or nested sequence) as a finite float64 array."""
    if hasattr(value, "detach"):                                 # torch.Tensor, on any device
        value = value.detach().cpu().numpy()
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers, got {type(value).__name__}") from err
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must contain only finite numbers (no NaN or inf)")
    return a


def _check_inputs(image, maps, grid, extents):
    """Validated (image, maps, grid, extents) as float64 arrays; ValueError naming the argument."""
    image = _as_array("image", image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or 0 in image.shape:
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {image.shape}")
    lo, hi = float(image.min()), float(image.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"image values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}] "
                         "(clip first, e.g. np.clip(v, 0, 1))")
    H, W = image.shape[:2]
    maps = _as_array("maps", maps)
    if maps.ndim != 3 or 0 in maps.shape:
        raise ValueError(f"maps must have shape (Q, h, w), one map per query, got {maps.shape}")
    Q = maps.shape[0]
    grid = _as_array("grid", grid)
    if grid.shape != (Q, 2):
        raise ValueError(f"grid must have shape (Q, 2) = ({Q}, 2), the (row, col) of each of the "
                         f"{Q} maps, got {grid.shape}")
    inside = (grid[:, 0] >= 0) & (grid[:, 0] <= H - 1) & (grid[:, 1] >= 0) & (grid[:, 1] <= W - 1)
    if not inside.all():
        k = int(np.argmin(inside))
        raise ValueError(f"grid[{k}] = {grid[k].tolist()} lies outside the {H}×{W} image "
                         f"(rows 0..{H - 1}, cols 0..{W - 1})")
    if extents is None:
        extents = np.tile([0.0, 0.0, H, W], (Q, 1))
    extents = _as_array("extents", extents)
    if extents.shape != (Q, 4):
        raise ValueError(f"extents must have shape (Q, 4) = ({Q}, 4), (top, left, bottom, right) "
                         f"per map, got {extents.shape}")
    empty = (extents[:, 2] <= extents[:, 0]) | (extents[:, 3] <= extents[:, 1])
    if empty.any():
        k = int(np.argmax(empty))
        raise ValueError(f"extents[{k}] = {extents[k].tolist()} is empty: expected top < bottom "
                         "and left < right")
    return image, maps, grid, extents


def _quantise(maps: np.ndarray):
    """Maps (Q, h, w) as uint8 levels, each on its own [min(0, min), max] scale; and the maxima."""
    lo = np.minimum(maps.min(axis=(1, 2)), 0.0)[:, None, None]   # (Q, 1, 1)
    hi = maps.max(axis=(1, 2))[:, None, None]
    span = np.where(hi > lo, hi - lo, 1.0)
    levels = np.round((maps - lo) / span * 255).clip(0, 255).astype(np.uint8)
    return levels, hi[:, 0, 0]


def _palette(cmap: str) -> np.ndarray:
    """(256, 3) uint8 colours of a matplotlib colour map."""
    import matplotlib

    try:
        colours = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
    except KeyError as err:
        raise ValueError(f"cmap must be a matplotlib colour map name, got {cmap!r}") from err
    return np.round(colours * 255).astype(np.uint8)


class AttentionExplorer:
    """An image and one map per query position; shown as an interactive HTML snippet.

    Build it with :func:`attention_explorer`. ``html`` (also ``_repr_html_()``) is the snippet;
    ``n_bytes`` the size of its embedded images; ``id`` the id of its root element.
    """

    def __init__(self, image, maps, grid, *, extents=None, title: str = "Attention explorer",
                 caption: str = "", alt: Optional[str] = None, cmap: str = "magma",
                 display_size: int = 256, max_bytes: int = MAX_BYTES):
        for name, value in (("title", title), ("caption", caption), ("cmap", cmap)):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        if alt is not None and (not isinstance(alt, str) or not alt.strip()):
            raise ValueError(f"alt must be a non-empty string (or None for a default), got {alt!r}")
        if isinstance(display_size, bool) or not isinstance(display_size, numbers.Integral) \
                or not 64 <= display_size <= 1024:
            raise ValueError(f"display_size must be an int in [64, 1024] (pixels), got {display_size!r}")
        image, maps, grid, extents = _check_inputs(image, maps, grid, extents)
        self.image, self.maps, self.grid, self.extents = image, maps, grid, extents
        self.title, self.caption, self.cmap, self.display_size = title, caption, cmap, int(display_size)
        Q, h, w = maps.shape
        self.alt = alt or (f"{title}: an image with {Q} query positions; choosing one shows "
                           f"its {h}×{w} attention map beside the image")

        levels, self.maxima = _quantise(maps)                       # (Q, h, w) uint8, (Q,)
        palette = _palette(cmap)
        pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
        self._image_url = _data_url(_png(pixels))
        self._atlas_url = _data_url(_png(levels.reshape(Q * h, w), palette))   # maps stacked
        self._first_url = _data_url(_png(levels[0], palette))                  # static fallback
        self.n_bytes = len(self._image_url) + len(self._atlas_url) + len(self._first_url)  # base64
        if self.n_bytes > max_bytes:
            raise ValueError(f"the explorer would embed {self.n_bytes:,} bytes of images, more than "
                             f"max_bytes={max_bytes:,}: use fewer queries, smaller maps or a "
                             "smaller image")
        stops = ", ".join("#%02x%02x%02x" % tuple(palette[k]) for k in range(0, 256, 51))
        self._gradient = f"linear-gradient(to right, {stops})"
        self.html = self._render()

    def _data(self) -> dict:
        """What the script needs, as plain JSON (numbers rounded so the text is stable)."""
        H, W = self.image.shape[:2]
        Q, h, w = self.maps.shape
        return {"H": H, "W": W, "h": h, "w": w,
                "grid": [[round(float(r), 2), round(float(c), 2)] for r, c in self.grid],
                "extents": [[round(float(v), 2) for v in e] for e in self.extents],
                "maxima": [float(f"{m:.3g}") for m in self.maxima],
                "atlas": self._atlas_url}                   # the image is the static <img>

    def _sizes(self):
        """Display sizes (width, height) in CSS pixels of the image view and the map view."""
        H, W = self.image.shape[:2]
        scale = self.display_size / max(H, W)
        top, left, bottom, right = self.extents[0]
        ratio = (right - left) / (bottom - top)                     # map aspect, from its extent
        map_h = round(H * scale)
        return (round(W * scale), round(H * scale)), (max(1, round(map_h * ratio)), map_h)

    def _render(self) -> str:
        data = json.dumps(self._data(), separators=(",", ":"), sort_keys=True)
        uid = "nlt-explorer-" + hashlib.sha256(
            "\n".join([data, self._first_url, self.title, self.caption, self.alt]).encode()
        ).hexdigest()[:12]
        (iw, ih), (mw, mh) = self._sizes()
        Q = self.maps.shape[0]
        e = lambda s: html.escape(s, quote=True)
        r0, c0 = (round(float(v), 1) for v in self.grid[0])
        status = f"query 1 of {Q} at row {r0:g}, column {c0:g}; largest value {self.maxima[0]:.3g}"
        pixelated = "image-rendering:pixelated;"
        caption = f'<div class="nlt-explorer-caption">{e(self.caption)}</div>' if self.caption else ""
        script = _SCRIPT.replace("__ID__", uid).replace("__DATA__", data.replace("</", "<\\/"))
        return (
            f'<div class="nlt-explorer" id="{uid}" data-query="0" role="group" '
            f'aria-label="{e(self.alt)}" style="max-width:100%;font-size:0.9em">'
            f'<div class="nlt-explorer-title" style="font-weight:bold">{e(self.title)}</div>'
            f'<div class="nlt-explorer-static">'
            f'<img src="{self._image_url}" alt="{e("The image of the explorer: " + self.title)}" '
            f'width="{iw}" height="{ih}" style="{pixelated}margin-right:8px">'
            f'<img src="{self._first_url}" alt="{e("The map of the first query, at row %g, column %g" % (r0, c0))}" '
            f'width="{mw}" height="{mh}" style="{pixelated}"></div>'
            f'<div class="nlt-explorer-views" style="display:none;flex-wrap:wrap;gap:8px">'
            f'<canvas class="nlt-explorer-image" width="{iw}" height="{ih}" tabindex="0" '
            f'role="img" aria-label="{e(self.alt)}. Click to choose a query; arrow keys step '
            f'through the queries." style="cursor:crosshair;max-width:100%"></canvas>'
            f'<canvas class="nlt-explorer-map" width="{mw}" height="{mh}" role="img" '
            f'aria-label="The map of the selected query" style="max-width:100%"></canvas></div>'
            f'<div style="display:flex;align-items:center;gap:6px;margin-top:4px">0'
            f'<span style="display:inline-block;width:120px;height:10px;'
            f'background:{self._gradient}"></span>largest value of the map</div>'
            f'<div class="nlt-explorer-status" aria-live="polite">{e(status)}</div>'
            f"{caption}<script>{script}</script></div>"
        )

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        Q, h, w = self.maps.shape
        H, W = self.image.shape[:2]
        return (f"AttentionExplorer({Q} queries, image {H}×{W}, maps {h}×{w}, "
                f"{self.n_bytes / 1000:.0f} kB embedded)")


def attention_explorer(image, maps, grid, *, extents=None, title: str = "Attention explorer",
                       caption: str = "", alt: Optional[str] = None, cmap: str = "magma",
                       display_size: int = 256, max_bytes: int = MAX_BYTES) -> AttentionExplorer:
    """An interactive view of ``maps`` (Q, h, w): click ``image`` near a query of ``grid`` (Q, 2).

    ``extents`` (Q, 4) gives the (top, left, bottom, right) pixel edges each map covers (default:
    the whole image). ``title``, ``caption`` and ``alt`` (the accessible description; a default
    is built from the title) are shown or announced with the views; ``display_size`` is the
    longer side of the image view in CSS pixels. Raises ValueError, naming the argument, on
    bad shapes or values, and when the embedded images exceed ``max_bytes``.
    """
    return AttentionExplorer(image, maps, grid, extents=extents, title=title, caption=caption, alt=alt,
                             cmap=cmap, display_size=display_size, max_bytes=max_bytes)


# The inline script: draws the image, the queries, the selected query's extent and its map;
# a click selects the nearest query. Wrapped in a function so that several explorers on one
# page do not share variables. __ID__ and __DATA__ are filled in by _render.
_SCRIPT = r"""
(function () {
  var s = document.currentScript;
  var root = (s && s.closest && s.closest(".nlt-explorer")) || document.getElementById("__ID__");
  if (!root) return;
  var D = __DATA__;
  var views = root.querySelector(".nlt-explorer-views");
  var ci = root.querySelector(".nlt-explorer-image"), cm = root.querySelector(".nlt-explorer-map");
  var status = root.querySelector(".nlt-explorer-status");
  var img = new Image(), atlas = new Image(), pending = 2, current = 0;
  function cross(ctx, x, y, r, colour) {
    ctx.strokeStyle = "black"; ctx.lineWidth = 4;
    ctx.beginPath(); ctx.moveTo(x - r, y); ctx.lineTo(x + r, y);
    ctx.moveTo(x, y - r); ctx.lineTo(x, y + r); ctx.stroke();
    ctx.strokeStyle = colour; ctx.lineWidth = 2; ctx.stroke();
  }
  function draw(k) {
    current = k;
    var a = ci.getContext("2d"), b = cm.getContext("2d");
    var sx = ci.width / D.W, sy = ci.height / D.H, q = D.grid[k], e = D.extents[k];
    a.imageSmoothingEnabled = false;
    a.drawImage(img, 0, 0, ci.width, ci.height);
    a.fillStyle = "rgba(0, 255, 255, 0.7)";
    D.grid.forEach(function (p) {
      a.fillRect((p[1] + 0.5) * sx - 1, (p[0] + 0.5) * sy - 1, 2, 2);
    });
    a.strokeStyle = "cyan"; a.lineWidth = 1.5;
    a.strokeRect(e[1] * sx, e[0] * sy, (e[3] - e[1]) * sx, (e[2] - e[0]) * sy);
    cross(a, (q[1] + 0.5) * sx, (q[0] + 0.5) * sy, 7, "cyan");
    b.imageSmoothingEnabled = false;
    b.clearRect(0, 0, cm.width, cm.height);
    b.drawImage(atlas, 0, k * D.h, D.w, D.h, 0, 0, cm.width, cm.height);
    var u = (q[1] + 0.5 - e[1]) / (e[3] - e[1]), v = (q[0] + 0.5 - e[0]) / (e[2] - e[0]);
    if (u >= 0 && u <= 1 && v >= 0 && v <= 1) cross(b, u * cm.width, v * cm.height, 7, "cyan");
    root.setAttribute("data-query", String(k));
    status.textContent = "query " + (k + 1) + " of " + D.grid.length + " at row " + q[0] +
      ", column " + q[1] + "; largest value " + D.maxima[k];
  }
  function nearest(r, c) {
    var best = 0, dist = Infinity;
    D.grid.forEach(function (p, k) {
      var d = (p[0] - r) * (p[0] - r) + (p[1] - c) * (p[1] - c);
      if (d < dist) { dist = d; best = k; }
    });
    return best;
  }
  ci.addEventListener("click", function (ev) {
    var box = ci.getBoundingClientRect();
    var c = (ev.clientX - box.left) / box.width * D.W - 0.5;
    var r = (ev.clientY - box.top) / box.height * D.H - 0.5;
    draw(nearest(r, c));
  });
  ci.addEventListener("keydown", function (ev) {
    var step = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[ev.key];
    if (!step) return;
    ev.preventDefault();
    draw((current + step + D.grid.length) % D.grid.length);
  });
  function ready() {
    if (--pending > 0) return;
    root.querySelector(".nlt-explorer-static").style.display = "none";
    views.style.display = "flex";
    draw(0);
  }
  img.onload = ready; atlas.onload = ready;
  img.src = root.querySelector(".nlt-explorer-static img").getAttribute("src");
  atlas.src = D.atlas;
})();
"""
