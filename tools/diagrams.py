#!/usr/bin/env python3
"""The book's block diagrams, ``book/figures/*.svg``, drawn from code.

Usage::

    python tools/diagrams.py            # (re)write every SVG of DIAGRAMS
    python tools/diagrams.py --check    # exit 1, naming each SVG that differs from the code

Standard library only. Every diagram is a function that places boxes, ⊕/⊗ circles,
arrows (each labelled with the tensor shape it carries), text and small grids on a
:class:`Diagram`; the same code always gives the same bytes. One style for all of them:
one font family, one palette (:data:`KINDS`: convolutions and linear layers, reshapes and
pooling, softmax and sigmoid, normalisation and activations, inputs and outputs), 720 px
wide with text of at least 12 px, a ``<title>``, a ``<desc>`` (the alt text) and
``role="img"``.

:meth:`Diagram.svg` refuses to write a diagram whose texts collide: each text's box,
estimated from DejaVu Sans advance widths, must stay inside the view box, inside its own
box (for box labels), clear of every other text, box and arrow.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "book" / "figures"

WIDTH = 720
FONT = "DejaVu Sans, Arial, sans-serif"
MIN_FONT = 12
LABEL = 12          # shapes on arrows, legend
NODE = 14           # box labels
SMALL = 12          # second lines in boxes, notes
HEAD = 14           # section headings (bold)
INK, LINE, MUTED = "#1a1a1a", "#333333", "#555555"

#: kind -> (fill, stroke, legend text)
KINDS: Dict[str, Tuple[str, str, str]] = {
    "io": ("#f2f2f2", "#555555", "input / output"),
    "conv": ("#d7e7f6", "#2f6fa8", "conv / linear"),
    "reshape": ("#dcefdc", "#3b8a3b", "reshape / pool"),
    "gate": ("#fde3c8", "#c4661f", "softmax / sigmoid"),
    "norm": ("#e9e0f4", "#7350a5", "norm / activation"),
    "pair": ("#fff3bf", "#9c7a00", "pairwise score"),
    "attn": ("#f9d6d3", "#b8322b", "attention block"),
    "block": ("#ffffff", "#2f6fa8", "residual block"),
}

# DejaVu Sans advance widths (em) of the characters the diagrams use (the widest of the
# listed fonts, so a layout that fits in DejaVu fits in Arial too).
_ADVANCE = {
    " ": 0.32, "(": 0.39, ")": 0.39, "+": 0.84, ",": 0.32, "-": 0.36, ".": 0.32, "/": 0.34,
    ":": 0.34, ";": 0.34, "=": 0.84, "<": 0.84, ">": 0.84, "[": 0.39, "]": 0.39, "|": 0.34,
    "A": 0.68, "B": 0.69, "C": 0.70, "D": 0.77, "E": 0.63, "F": 0.58, "G": 0.77, "H": 0.75,
    "I": 0.29, "J": 0.29, "K": 0.66, "L": 0.56, "M": 0.86, "N": 0.75, "O": 0.79, "P": 0.60,
    "Q": 0.79, "R": 0.69, "S": 0.63, "T": 0.61, "U": 0.73, "V": 0.68, "W": 0.99, "X": 0.69,
    "Y": 0.61, "Z": 0.69, "a": 0.61, "b": 0.63, "c": 0.55, "d": 0.63, "e": 0.62, "f": 0.35,
    "g": 0.63, "h": 0.63, "i": 0.28, "j": 0.28, "k": 0.58, "l": 0.28, "m": 0.97, "n": 0.63,
    "o": 0.61, "p": 0.63, "q": 0.63, "r": 0.41, "s": 0.52, "t": 0.39, "u": 0.63, "v": 0.59,
    "w": 0.82, "x": 0.59, "y": 0.59, "z": 0.52, "×": 0.84, "·": 0.32, "α": 0.66, "β": 0.64,
    "γ": 0.59, "δ": 0.61, "θ": 0.61, "φ": 0.66, "σ": 0.63, "ω": 0.84, "Σ": 0.63, "Φ": 0.79,
    "Ω": 0.76, "‖": 0.50, "→": 0.84, "⊕": 0.84, "⊗": 0.84, "⊙": 0.84, "ᵀ": 0.38, "²": 0.40,
    "′": 0.23, "–": 0.50, "−": 0.84, "…": 1.00, "≈": 0.84,
}
_DEFAULT_ADVANCE = 0.70
_BOLD = 1.13


def _f(v: float) -> str:
    """A coordinate as short, fixed text (one decimal), so output bytes never vary."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def _runs(s: str) -> List[Tuple[str, str]]:
    """Split ``s`` into (style, text) runs; ``_{..}`` is a subscript, ``^{..}`` a superscript."""
    runs, i = [], 0
    while i < len(s):
        j = min((k for k in (s.find("_{", i), s.find("^{", i)) if k >= 0), default=-1)
        if j < 0:
            runs.append(("", s[i:]))
            break
        if j > i:
            runs.append(("", s[i:j]))
        end = s.index("}", j)
        runs.append(("sub" if s[j] == "_" else "sup", s[j + 2:end]))
        i = end + 1
    return runs


def plain(s: str) -> str:
    """The characters ``s`` shows (markup removed)."""
    return "".join(t for _, t in _runs(s))


def text_width(s: str, size: float, bold: bool = False) -> float:
    """Width of ``s`` at ``size`` px: DejaVu Sans advances (sub/superscripts at ``MIN_FONT``), or
    0.6 × size per character where that is wider."""
    w = 0.0
    for style, t in _runs(s):
        sz = min(size, MIN_FONT) if style else size
        w += sum(_ADVANCE.get(ch, _DEFAULT_ADVANCE) for ch in t) * sz
    rule = 0.6 * size * len(plain(s))             # the usual estimate, which tests/test_diagrams.py uses
    return max(w * (_BOLD if bold else 1.0), rule)


class Node:
    """A placed box (or circle): centre (cx, cy), width w, height h."""

    def __init__(self, cx: float, cy: float, w: float, h: float) -> None:
        self.cx, self.cy, self.w, self.h = cx, cy, w, h

    left = property(lambda self: self.cx - self.w / 2)
    right = property(lambda self: self.cx + self.w / 2)
    top = property(lambda self: self.cy - self.h / 2)
    bottom = property(lambda self: self.cy + self.h / 2)

    def rect(self) -> Tuple[float, float, float, float]:
        return self.left, self.top, self.right, self.bottom


Rect = Tuple[float, float, float, float]
Point = Tuple[float, float]


def _overlap(a: Rect, b: Rect, pad: float = 0.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _segment_hits(p: Point, q: Point, r: Rect) -> bool:
    """Does the segment p–q pass through the rectangle r? (sampled every 2 px)"""
    n = max(2, int(math.hypot(q[0] - p[0], q[1] - p[1]) / 2))
    for k in range(n + 1):
        x, y = p[0] + (q[0] - p[0]) * k / n, p[1] + (q[1] - p[1]) * k / n
        if r[0] < x < r[2] and r[1] < y < r[3]:
            return True
    return False


class Diagram:
    """An SVG canvas of width :data:`WIDTH` that records what it draws, to check the layout."""

    def __init__(self, name: str, height: float, title: str, desc: str) -> None:
        self.name, self.height, self.title, self.desc = name, height, title, desc
        self.body: List[str] = []
        self.texts: List[Tuple[Rect, str, Optional[Node]]] = []   # (box, text, own node)
        self.nodes: List[Node] = []
        self.segments: List[Tuple[Point, Point]] = []
        self.kinds: List[str] = []
        self.ops: List[str] = []

    # ---- text
    def text(self, x: float, y: float, s: str, size: float = LABEL, anchor: str = "middle",
             bold: bool = False, italic: bool = False, color: str = INK,
             node: Optional[Node] = None) -> None:
        """Text with its baseline at y; ``_{..}``/``^{..}`` become sub/superscripts."""
        assert size >= MIN_FONT, (self.name, s, size)
        w = text_width(s, size, bold)
        x0 = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        self.texts.append(((x0, y - 0.76 * size, x0 + w, y + 0.24 * size), plain(s), node))
        if plain(s) != s:                           # sub/superscripts: anchor by hand (renderers
            x, anchor = x0, "start"                 # disagree on anchoring texts with shifted tspans)
        attrs = f'x="{_f(x)}" y="{_f(y)}" font-size="{_f(size)}"'
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if bold:
            attrs += ' font-weight="bold"'
        if italic:
            attrs += ' font-style="italic"'
        if color != INK:
            attrs += f' fill="{color}"'
        parts, shift = [], 0
        for style, t in _runs(s):
            target = {"": 0, "sub": 4, "sup": -6}[style]
            if target == shift and not style:
                parts.append(escape(t))
                continue
            size_attr = f' font-size="{_f(min(size, MIN_FONT))}"' if style else ""
            parts.append(f'<tspan dy="{target - shift}"{size_attr}>{escape(t)}</tspan>')
            shift = target
        self.body.append(f"<text {attrs}>{''.join(parts)}</text>")

    # ---- boxes
    def box(self, cx: float, cy: float, lines: Sequence[str], kind: str, w: Optional[float] = None,
            h: Optional[float] = None, dashed: bool = False, gap: float = 3.0) -> Node:
        """A rounded box of ``kind`` with one or two centred lines (the second smaller), ``gap`` px
        apart (more where the first line has subscripts)."""
        if isinstance(lines, str):
            lines = [lines]
        sizes = [NODE] + [SMALL] * (len(lines) - 1)
        need = max(text_width(t, s) for t, s in zip(lines, sizes)) + 16
        w = w if w is not None else max(44.0, math.ceil(need / 2) * 2)
        h = h if h is not None else (30.0 if len(lines) == 1 else 44.0)
        node = Node(cx, cy, w, h)
        fill, stroke, _ = KINDS[kind]
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.body.append(f'<g class="node {kind}">')
        self.body.append(f'<rect x="{_f(node.left)}" y="{_f(node.top)}" width="{_f(w)}" height="{_f(h)}" '
                         f'rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>')
        total = sum(sizes) + gap * (len(lines) - 1)
        y = cy - total / 2
        for t, s in zip(lines, sizes):
            y += s
            self.text(cx, y - 0.12 * s, t, s, node=node)
            y += gap
        self.body.append("</g>")
        self.nodes.append(node)
        if kind not in self.kinds:
            self.kinds.append(kind)
        return node

    def op(self, cx: float, cy: float, symbol: str) -> Node:
        """A circled ⊕ (add) or ⊗ (multiply), radius 13."""
        assert symbol in "⊕⊗", symbol
        node = Node(cx, cy, 26, 26)
        self.body.append(f'<g class="node op"><circle cx="{_f(cx)}" cy="{_f(cy)}" r="13" fill="#ffffff" '
                         f'stroke="{LINE}" stroke-width="1.5"/>')
        turn = f' transform="rotate(45 {_f(cx)} {_f(cy)})"' if symbol == "⊗" else ""
        self.body.append(f'<path d="M{_f(cx - 8)} {_f(cy)}H{_f(cx + 8)}M{_f(cx)} {_f(cy - 8)}V{_f(cy + 8)}"'
                         f'{turn} stroke="{LINE}" stroke-width="1.6"/>')
        self.body.append("</g>")
        self.nodes.append(node)
        if symbol not in self.ops:
            self.ops.append(symbol)
        return node

    # ---- lines and arrows
    def line(self, pts: Sequence[Point], head: bool = True, dashed: bool = False, color: str = LINE,
             label: Optional[str] = None, at: Optional[int] = None, side: str = "auto",
             dot: bool = False) -> None:
        """A polyline through ``pts``; an arrowhead at the end if ``head``; ``label`` (a tensor
        shape) beside segment ``at`` (default: the longest), right of vertical segments and above
        horizontal ones unless ``side`` says "left" or "below"."""
        pts = [(float(x), float(y)) for x, y in pts]
        full, end = list(pts), pts[-1]
        if head:                                    # stop the line at the base of the head
            (x0, y0), (x1, y1) = pts[-2], pts[-1]
            d = math.hypot(x1 - x0, y1 - y0)
            ux, uy = (x1 - x0) / d, (y1 - y0) / d
            pts = pts[:-1] + [(x1 - 8 * ux, y1 - 8 * uy)]
        d = "M" + " L".join(f"{_f(x)} {_f(y)}" for x, y in pts)
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.body.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        for p, q in zip(pts, pts[1:]):
            self.segments.append((p, q))
        if head:
            bx, by = pts[-1]
            tri = [end, (bx + 4.5 * uy, by - 4.5 * ux), (bx - 4.5 * uy, by + 4.5 * ux)]
            self.body.append('<path d="M' + " L".join(f"{_f(x)} {_f(y)}" for x, y in tri) +
                             f'Z" fill="{color}"/>')
        if dot:
            self.body.append(f'<circle cx="{_f(pts[0][0])}" cy="{_f(pts[0][1])}" r="3" fill="{color}"/>')
        if label:
            self._label(full, label, at, side)

    def _label(self, pts: Sequence[Point], label: str, at: Optional[int], side: str) -> None:
        segs = list(zip(pts, pts[1:]))
        if at is None:
            at = max(range(len(segs)), key=lambda k: math.hypot(segs[k][1][0] - segs[k][0][0],
                                                                 segs[k][1][1] - segs[k][0][1]))
        (x0, y0), (x1, y1) = segs[at]
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        if abs(x1 - x0) >= abs(y1 - y0):           # horizontal: above (or below)
            y = my + 15 if side == "below" else my - 6
            self.text(mx, y, label, LABEL, color=MUTED)
        elif side == "left":
            self.text(mx - 6, my + 4, label, LABEL, anchor="end", color=MUTED)
        else:
            self.text(mx + 6, my + 4, label, LABEL, anchor="start", color=MUTED)

    def connect(self, a: Node, b: Node, label: Optional[str] = None, **kw) -> None:
        """A straight arrow between two aligned nodes (same row or same column)."""
        if abs(a.cy - b.cy) < 1:
            xa, xb = (a.right, b.left) if b.cx > a.cx else (a.left, b.right)
            self.line([(xa, a.cy), (xb, a.cy)], label=label, **kw)
        else:
            assert abs(a.cx - b.cx) < 1, (self.name, "connect needs aligned nodes")
            ya, yb = (a.bottom, b.top) if b.cy > a.cy else (a.top, b.bottom)
            self.line([(a.cx, ya), (a.cx, yb)], label=label, **kw)

    # ---- other shapes
    def rect(self, x: float, y: float, w: float, h: float, fill: str, stroke: str = "none",
             width: float = 1.0, dashed: bool = False, rx: float = 0) -> None:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        r = f' rx="{_f(rx)}"' if rx else ""
        self.body.append(f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}"{r} fill="{fill}" '
                         f'stroke="{stroke}" stroke-width="{_f(width)}"{dash}/>')

    def heading(self, x: float, y: float, s: str, anchor: str = "start") -> None:
        self.text(x, y, s, HEAD, anchor=anchor, bold=True)

    def note(self, x: float, y: float, s: str, anchor: str = "middle") -> None:
        self.text(x, y, s, SMALL, anchor=anchor, italic=True, color=MUTED)

    def legend(self, y: float, extra: Sequence[str] = ()) -> None:
        """One row of swatches for the kinds used so far, then ⊕ / ⊗ and ``extra`` notes."""
        items = [(k, KINDS[k][2]) for k in KINDS if k in self.kinds]
        items += [(s, {"⊕": "add", "⊗": "multiply"}[s]) for s in "⊕⊗" if s in self.ops]
        items += [("", e) for e in extra]
        x = 8.0
        for key, text in items:
            w = text_width(text, LABEL) + (18 if key else 0)
            if x + w > WIDTH - 6:
                x, y = 8.0, y + 20
            if key in KINDS:
                fill, stroke, _ = KINDS[key]
                self.rect(x, y - 11, 14, 14, fill, stroke, 1.5, rx=3)
            elif key:
                self.body.append(f'<circle cx="{_f(x + 7)}" cy="{_f(y - 4)}" r="7" fill="#ffffff" '
                                 f'stroke="{LINE}" stroke-width="1.2"/>')
                self.text(x + 7, y + 0.5, key, LABEL)
                self.texts.pop()                     # the symbol sits inside its own circle
            self.text(x + (18 if key else 0), y, text, LABEL, anchor="start", color=MUTED)
            x += w + 12
        self.height = y + 12                         # the legend is the last row of every diagram

    # ---- output
    def problems(self) -> List[str]:
        """Layout problems: text outside the view box, outside its own box, or colliding."""
        out = []
        view = (0.0, 0.0, float(WIDTH), float(self.height))
        for k, (r, s, own) in enumerate(self.texts):
            if not (r[0] >= 2 and r[1] >= 2 and r[2] <= view[2] - 2 and r[3] <= view[3] - 2):
                out.append(f"text {s!r} leaves the view box")
            if own is not None and not (r[0] >= own.left + 3 and r[2] <= own.right - 3
                                        and r[1] >= own.top + 1 and r[3] <= own.bottom - 1):
                out.append(f"text {s!r} does not fit its box")
            for r2, s2, _ in self.texts[k + 1:]:
                if _overlap(r, r2, 1.0):
                    out.append(f"texts {s!r} and {s2!r} overlap")
            for n in self.nodes:
                if n is not own and _overlap(r, n.rect(), 1.0):
                    out.append(f"text {s!r} overlaps a box at ({_f(n.cx)}, {_f(n.cy)})")
            for p, q in self.segments:
                if own is None and _segment_hits(p, q, (r[0] - 1, r[1] - 1, r[2] + 1, r[3] + 1)):
                    out.append(f"text {s!r} is crossed by a line {p}–{q}")
        return out

    def svg(self, strict: bool = True) -> str:
        problems = self.problems()
        if problems and strict:
            raise ValueError(f"{self.name}: layout problems:\n  " + "\n  ".join(problems))
        h = _f(self.height)
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" '
                f'viewBox="0 0 {WIDTH} {h}" role="img" aria-labelledby="{self.name}-title {self.name}-desc" '
                f'font-family="{FONT}" fill="{INK}">')
        return "\n".join([
            head,
            f'<title id="{self.name}-title">{escape(self.title)}</title>',
            f'<desc id="{self.name}-desc">{escape(self.desc)}</desc>',
            f'<rect width="{WIDTH}" height="{h}" fill="#ffffff"/>',
            *self.body,
            "</svg>",
            "",
        ])

    def notes(self, x: float, y: float, lines: Sequence[str], anchor: str = "start") -> None:
        """Several lines of note text, 17 px apart, the first baseline at y."""
        for k, s in enumerate(lines):
            self.note(x, y + 17 * k, s, anchor)


# --------------------------------------------------------------------------------------
# The diagrams. Each function returns a Diagram; DIAGRAMS maps file names to them.
# --------------------------------------------------------------------------------------


def _attention_core(d: Diagram, mid: float, top: float, q: Tuple[float, Node], k: Tuple[float, Node],
                    v: Tuple[float, Node], labels: Sequence[str], mix: Tuple[Sequence[str], str],
                    out: Tuple[str, Node], gap: float = 0.0) -> None:
    """The shared lower half of the non-local and PAM diagrams, from ``top`` down.

    q, k, v: (column x, reshape box) of the three embeddings; labels: the edge labels
    (q, k, energies, map, v, product, after the reshape, mixed), mix: (lines, kind) of the
    box before the ⊕, out: (name, input box) for the output and the identity shortcut;
    gap: extra space above the mixing box.
    """
    (qc, qb), (kc, kb), (vc, vb) = q, k, v
    lq, lk, energies, weights, lv, product, after, mixed = labels
    m1 = d.op(mid, top, "⊗")
    d.line([(qc, qb.bottom), (qc, m1.cy), (m1.left, m1.cy)], label=lq, at=0)
    d.line([(kc, kb.bottom), (kc, m1.cy), (m1.right, m1.cy)], label=lk, at=0)
    soft = d.box(mid, top + 65, ["softmax", "over j"], "gate")
    d.connect(m1, soft, energies)
    m2 = d.op(mid, top + 140, "⊗")
    d.connect(soft, m2, weights)
    d.line([(vc, vb.bottom), (vc, m2.cy), (m2.right, m2.cy)], label=lv, at=0)
    back = d.box(mid, top + 205, ["reshape"], "reshape")
    d.connect(m2, back, product)
    scale = d.box(mid, top + 275 + gap, *mix)
    d.connect(back, scale, after)
    add = d.op(mid, top + 345 + gap, "⊕")
    d.connect(scale, add, mixed)
    name, src = out
    result = d.box(mid, top + 402 + gap, [name], "io")
    d.connect(add, result, mixed)
    d.line([(src.left, src.cy), (26, src.cy), (26, add.cy), (add.left, add.cy)], label=mixed, at=0)


def nonlocal_block() -> Diagram:
    """Wang et al.'s Fig. 2 for an image: nltutorial.NonLocalBlock(mode="embedded")."""
    d = Diagram("nonlocal_block", 800, "The embedded-Gaussian non-local block",
                "Flow diagram of the non-local block, top to bottom. The input x of shape B×C×H×W "
                "goes into three 1×1 convolutions θ, φ and g, each from C to C/2 channels; φ and g "
                "pass through an optional 2×2 max-pooling, drawn dashed. Each result is reshaped: "
                "θ to B×N×C/2, φ to B×C/2×N and g to B×N×C/2, with N = H·W. The matrix product of θ "
                "and φ gives the B×N×N map, a softmax over j normalises each row, and the product "
                "with g gives B×N×C/2 again. It is reshaped to B×C/2×H×W, the 1×1 convolution W_z "
                "with batch normalisation (initialised to zero) brings it back to C channels, and a "
                "circled plus adds the input x to give z, of shape B×C×H×W.")
    tc, pc, gc, mid = 170, 360, 550, 265
    x = d.box(pc, 30, ["x"], "io")
    d.line([(pc, x.bottom), (pc, 72)], head=False, label="B×C×H×W")
    d.line([(tc, 72), (gc, 72)], head=False)
    convs = {}
    for cx, name in ((tc, "θ"), (pc, "φ"), (gc, "g")):
        d.line([(cx, 72), (cx, 92)])
        convs[name] = d.box(cx, 114, [f"{name}: 1×1 conv", "C → C/2"], "conv")
    pools = {name: d.box(cx, 196, ["2×2 max-pool", "optional"], "reshape", dashed=True)
             for cx, name in ((pc, "φ"), (gc, "g"))}
    for name in ("φ", "g"):
        d.connect(convs[name], pools[name], "B×C/2×H×W")
    flat = {name: d.box(cx, 270, ["reshape"], "reshape") for cx, name in ((tc, "θ"), (pc, "φ"), (gc, "g"))}
    d.connect(convs["θ"], flat["θ"], "B×C/2×H×W")
    for name in ("φ", "g"):
        d.connect(pools[name], flat[name], "B×C/2×H×W")
    _attention_core(d, mid, 340, (tc, flat["θ"]), (pc, flat["φ"]), (gc, flat["g"]),
                    ["B×N×C/2", "B×C/2×N", "B×N×N", "B×N×N", "B×N×C/2", "B×N×C/2",
                     "B×C/2×H×W", "B×C×H×W"],
                    (["W_{z}: 1×1 conv + BN", "C/2 → C, BN zero-init"], "conv"), ("z", x), gap=5)
    d.notes(392, 560, ["N = H·W positions; ⊗ of two matrices is", "their matrix product.",
                       "Dashed: the optional 2×2 max-pool on φ and g",
                       "(sub_sample=True, the package default); then",
                       "φ and g keep N/4 positions and the map is",
                       "B×N×N/4.", "BN after W_{z} starts at zero: z = x at first."])
    d.legend(788)
    return d


def se() -> Diagram:
    """nltutorial.SqueezeExcite: x̃ = x ⊗ σ(W_2 δ(W_1 GAP(x)))."""
    d = Diagram("se", 320, "The squeeze-and-excitation block",
                "Flow diagram of a squeeze-and-excitation block. The input x of shape B×C×H×W runs "
                "down the left side to a circled multiplication. A branch goes right: global average "
                "pooling squeezes it to B×C×1×1, a fully connected layer reduces it to C/r channels, "
                "a ReLU follows; the branch turns back, a second fully connected layer restores C "
                "channels and a sigmoid gives the gates s of shape B×C×1×1. The gates multiply x "
                "channel by channel, giving the output x̃ of shape B×C×H×W.")
    X, top, bottom = 50, 95, 185
    x = d.box(X, 30, ["x"], "io")
    d.line([(X, x.bottom), (X, top)], head=False)
    gap = d.box(230, top, ["global avg pool"], "reshape")
    fc1 = d.box(410, top, ["FC", "C → C/r"], "conv")
    relu = d.box(560, top, ["ReLU"], "norm")
    d.line([(X, top), (gap.left, top)], label="B×C×H×W", dot=True)
    d.connect(gap, fc1, "B×C×1×1")
    d.connect(fc1, relu, "B×C/r×1×1")
    fc2 = d.box(560, bottom, ["FC", "C/r → C"], "conv")
    sig = d.box(390, bottom, ["sigmoid"], "gate")
    mul = d.op(X, bottom, "⊗")
    d.line([(relu.right, top), (664, top), (664, bottom), (fc2.right, bottom)], label="B×C/r×1×1",
           at=1, side="left")
    d.connect(fc2, sig, "B×C×1×1")
    d.connect(sig, mul, "s: B×C×1×1")
    d.line([(X, top), (X, mul.top)], label="B×C×H×W")
    out = d.box(X, 255, ["x̃"], "io")
    d.connect(mul, out, "B×C×H×W")
    d.note(gap.cx, 140, "squeeze")
    d.note(485, 140, "excitation")
    d.note(96, 240, "scale: channel c of x times its gate s_{c}", anchor="start")
    d.legend(300)
    return d


def _fork(d: Diagram, X: float, y: float, fx: float, rows: Sequence[float], targets: Sequence[Node],
          label: str) -> None:
    """From the trunk at (X, y) right to fx, then to each target box at its row."""
    d.line([(X, y), (fx, y)], head=False, label=label, dot=True)
    d.line([(fx, min(rows)), (fx, max(rows))], head=False)
    for r, t in zip(rows, targets):
        d.line([(fx, r), (t.left, r)])


def cbam() -> Diagram:
    """nltutorial.CBAM: F' = M_c(F) ⊗ F, F'' = M_s(F') ⊗ F'."""
    d = Diagram("cbam", 500, "CBAM: a channel gate, then a spatial gate",
                "Flow diagram of CBAM in two stages on the left trunk. Channel gate: the input F of "
                "shape B×C×H×W is average-pooled and max-pooled over the positions into two B×C×1×1 "
                "vectors, both pass through one shared MLP (C to C/r to C), the two results are "
                "summed and a sigmoid gives the channel map M_c of shape B×C×1×1, which multiplies F "
                "channel by channel to give F'. Spatial gate: F' is averaged and maximised over the "
                "channels into two B×1×H×W maps, concatenated to B×2×H×W, a 7×7 convolution to one "
                "channel and a sigmoid give the spatial map M_s of shape B×1×H×W, which multiplies "
                "every position of F' to give the output F'', of shape B×C×H×W.")
    X, R = 50, 668
    f = d.box(X, 30, ["F"], "io")
    d.heading(150, 52, "channel gate")
    d.line([(X, f.bottom), (X, 110)], head=False)
    avg = d.box(210, 85, ["avg pool"], "reshape")
    mx = d.box(210, 135, ["max pool"], "reshape")
    _fork(d, X, 110, 140, (85, 135), (avg, mx), "B×C×H×W")
    mlp = d.box(385, 110, ["shared MLP", "C → C/r → C"], "conv", h=94)
    for r, b in ((85, avg), (135, mx)):
        d.line([(b.right, r), (mlp.left, r)], label="B×C×1×1")
    add = d.op(530, 110, "⊕")
    d.line([(mlp.right, 85), (add.cx, 85), (add.cx, add.top)], label="B×C×1×1", at=0)
    d.line([(mlp.right, 135), (add.cx, 135), (add.cx, add.bottom)], label="B×C×1×1", at=0, side="below")
    sig = d.box(560, 190, ["sigmoid"], "gate")
    d.line([(add.right, 110), (R, 110), (R, 190), (sig.right, 190)], label="B×C×1×1", at=0)
    m1 = d.op(X, 190, "⊗")
    d.line([(X, 110), (X, m1.top)], label="B×C×H×W")
    d.line([(sig.left, 190), (m1.right, 190)], label="M_{c}: B×C×1×1")
    d.heading(150, 226, "spatial gate")
    d.line([(X, m1.bottom), (X, 275)], head=False, label="F′: B×C×H×W")
    mean = d.box(230, 250, ["mean over C"], "reshape")
    cmax = d.box(230, 300, ["max over C"], "reshape", w=mean.w)
    _fork(d, X, 275, 140, (250, 300), (mean, cmax), "B×C×H×W")
    cat = d.box(400, 275, ["concat"], "reshape", h=94)
    for r, b in ((250, mean), (300, cmax)):
        d.line([(b.right, r), (cat.left, r)], label="B×1×H×W")
    conv = d.box(560, 275, ["7×7 conv", "2 → 1"], "conv")
    d.connect(cat, conv, "B×2×H×W")
    sig2 = d.box(560, 355, ["sigmoid"], "gate")
    d.line([(conv.right, 275), (R, 275), (R, 355), (sig2.right, 355)], label="B×1×H×W", at=1, side="left")
    m2 = d.op(X, 355, "⊗")
    d.line([(X, 275), (X, m2.top)], label="B×C×H×W")
    d.line([(sig2.left, 355), (m2.right, 355)], label="M_{s}: B×1×H×W")
    out = d.box(X, 425, ["F″"], "io")
    d.connect(m2, out, "B×C×H×W")
    d.note(96, 418, "F′ = M_{c}(F) ⊗ F,   F″ = M_{s}(F′) ⊗ F′   (maps broadcast over H×W and C)",
           anchor="start")
    d.legend(475)
    return d


def bam() -> Diagram:
    """nltutorial.BAM (bn_layout="paper", combine="sum"): F' = F ⊗ (1 + σ(M_c(F) + M_s(F)))."""
    d = Diagram("bam", 700, "BAM: channel and spatial branches in parallel",
                "Flow diagram of BAM, top to bottom. From the input x of shape B×C×H×W two branches "
                "run in parallel. The channel branch average-pools x to B×C×1×1 and passes it through "
                "an MLP (C to C/r to C) with batch normalisation. The spatial branch reduces x with a "
                "1×1 convolution to C/r channels, applies two 3×3 convolutions with dilation 4 and a "
                "1×1 convolution to a single B×1×H×W map with batch normalisation. The two outputs "
                "are broadcast to B×C×H×W and summed, a sigmoid gives the attention map M, x is "
                "multiplied elementwise by M, and x is added again: the output is x + x ⊗ M.")
    ch, sp, mid, S = 190, 480, 335, 30
    x = d.box(mid, 30, ["x"], "io")
    d.line([(mid, x.bottom), (mid, 72)], head=False, label="B×C×H×W")
    d.line([(ch, 72), (sp, 72)], head=False)
    d.heading(ch - 8, 100, "channel branch", anchor="end")
    d.heading(sp + 8, 100, "spatial branch")
    gap = d.box(ch, 135, ["global avg pool"], "reshape")
    d.line([(ch, 72), (ch, gap.top)])
    mlp = d.box(ch, 215, ["MLP + BN", "C → C/r → C"], "conv")
    d.connect(gap, mlp, "B×C×1×1")
    f0 = d.box(sp, 135, ["1×1 conv", "C → C/r"], "conv")
    d.line([(sp, 72), (sp, f0.top)])
    f1 = d.box(sp, 215, ["3×3 conv", "dilation 4"], "conv", w=f0.w)
    f2 = d.box(sp, 295, ["3×3 conv", "dilation 4"], "conv", w=f0.w)
    f3 = d.box(sp, 375, ["1×1 conv + BN", "C/r → 1"], "conv")
    d.connect(f0, f1, "B×C/r×H×W")
    d.connect(f1, f2, "B×C/r×H×W")
    d.connect(f2, f3, "B×C/r×H×W")
    add = d.op(mid, 440, "⊕")
    d.line([(ch, mlp.bottom), (ch, add.cy), (add.left, add.cy)], label="M_{c}: B×C×1×1", at=0)
    d.line([(sp, f3.bottom), (sp, add.cy), (add.right, add.cy)], label="M_{s}: B×1×H×W", at=0)
    sig = d.box(mid, 500, ["sigmoid"], "gate")
    d.connect(add, sig, "B×C×H×W")
    mul = d.op(mid, 565, "⊗")
    d.connect(sig, mul, "M: B×C×H×W")
    res = d.op(mid, 625, "⊕")
    d.connect(mul, res, "B×C×H×W")
    out = d.box(mid, 680, ["x + x ⊗ M"], "io")
    d.connect(res, out, "B×C×H×W")
    d.line([(x.left, x.cy), (S, x.cy), (S, res.cy), (res.left, res.cy)], label="B×C×H×W", at=0)
    d.line([(S, mul.cy), (mul.left, mul.cy)], label="B×C×H×W", dot=True)
    d.notes(420, 560, ["broadcast sum: M_{c} over H×W, M_{s} over C",
                       "BN ends both branches (paper layout);",
                       "BN + ReLU after each conv but the last;",
                       "r = 16, dilation 4"])
    d.legend(720)
    return d


def danet_pam() -> Diagram:
    """nltutorial.PositionAttention: E = α D Sᵀ + A, S = softmax_j(Bᵀ C')."""
    d = Diagram("danet_pam", 700, "DANet's position attention module",
                "Flow diagram of DANet's position attention module, top to bottom. The feature map A of "
                "shape B×C×H×W goes into three 1×1 convolutions B, C and D (B and C reduce the channels "
                "to C/8, D keeps C). B is reshaped to B×N×C/8 and C to B×C/8×N, with N = H·W; their "
                "matrix product is the B×N×N energy, and a softmax over each row gives the attention "
                "map S. D, reshaped to B×C×N, is multiplied by the transposed map, giving B×C×N; the "
                "result is reshaped to B×C×H×W, scaled by the learnable scalar α (0 at the start) and "
                "added to A to give the output E of shape B×C×H×W.")
    bc, cc, dc, mid = 170, 360, 550, 265
    a = d.box(cc, 30, ["A"], "io")
    d.line([(cc, a.bottom), (cc, 72)], head=False, label="B×C×H×W")
    d.line([(bc, 72), (dc, 72)], head=False)
    convs = {}
    for cx, name, out in ((bc, "B", "C/8"), (cc, "C", "C/8"), (dc, "D", "C")):
        d.line([(cx, 72), (cx, 92)])
        convs[name] = d.box(cx, 114, [f"{name}: 1×1 conv", f"C → {out}"], "conv")
    flat = {name: d.box(cx, 200, ["reshape"], "reshape") for cx, name in ((bc, "B"), (cc, "C"), (dc, "D"))}
    for name, shape in (("B", "B×C/8×H×W"), ("C", "B×C/8×H×W"), ("D", "B×C×H×W")):
        d.connect(convs[name], flat[name], shape)
    _attention_core(d, mid, 270, (bc, flat["B"]), (cc, flat["C"]), (dc, flat["D"]),
                    ["B×N×C/8", "B×C/8×N", "B×N×N", "S: B×N×N", "B×C×N", "D Sᵀ: B×C×N",
                     "B×C×H×W", "B×C×H×W"],
                    (["× α", "learnable, 0 at start"], "conv"), ("E", a))
    d.notes(392, 470, ["N = H·W positions; ⊗ of two matrices is", "their matrix product.",
                       "S_{ij} = softmax over j of B_{i} · C_{j}: the",
                       "embedded-Gaussian non-local operation",
                       "with θ = B, φ = C, g = D.",
                       "C/8: the official code's width (paper: C)."])
    d.legend(712)
    return d


def danet_cam() -> Diagram:
    """nltutorial.ChannelAttention: E = β softmax(A Aᵀ) A + A (cam_energy="paper")."""
    d = Diagram("danet_cam", 700, "DANet's channel attention module",
                "Flow diagram of DANet's channel attention module, top to bottom. The feature map A of "
                "shape B×C×H×W is reshaped to X of shape B×C×N, with N = H·W. The matrix product of X "
                "with its transpose, of shape B×N×C, gives the B×C×C channel energies, and a softmax "
                "over each row turns them into the channel attention map. The map multiplies X, giving "
                "B×C×N, which is reshaped back to B×C×H×W, scaled by the learnable scalar β (0 at the "
                "start) and added to A to give the output E of shape B×C×H×W. There is no "
                "convolution.")
    lc, tc, rc, mid = 170, 360, 550, 265
    a = d.box(tc, 30, ["A"], "io")
    flat = d.box(tc, 100, ["reshape"], "reshape")
    d.connect(a, flat, "B×C×H×W")
    d.line([(tc, flat.bottom), (tc, 140)], head=False, label="X: B×C×N")
    d.line([(lc, 140), (rc, 140)], head=False)
    tr = d.box(tc, 200, ["transpose"], "reshape")
    d.line([(tc, 140), (tc, tr.top)])
    m1 = d.op(mid, 270, "⊗")
    d.line([(lc, 140), (lc, m1.cy), (m1.left, m1.cy)], label="X: B×C×N", at=0)
    d.line([(tc, tr.bottom), (tc, m1.cy), (m1.right, m1.cy)], label="Xᵀ: B×N×C", at=0)
    soft = d.box(mid, 335, ["softmax", "over j"], "gate")
    d.connect(m1, soft, "X Xᵀ: B×C×C")
    m2 = d.op(mid, 410, "⊗")
    d.connect(soft, m2, "B×C×C")
    d.line([(rc, 140), (rc, m2.cy), (m2.right, m2.cy)], label="X: B×C×N", at=0)
    back = d.box(mid, 475, ["reshape"], "reshape")
    d.connect(m2, back, "B×C×N")
    scale = d.box(mid, 545, ["× β", "learnable, 0 at start"], "conv")
    d.connect(back, scale, "B×C×H×W")
    add = d.op(mid, 615, "⊕")
    d.connect(scale, add, "B×C×H×W")
    e = d.box(mid, 672, ["E"], "io")
    d.connect(add, e, "B×C×H×W")
    d.line([(a.left, a.cy), (26, a.cy), (26, add.cy), (add.left, add.cy)], label="B×C×H×W", at=0)
    d.notes(392, 470, ["The C channels are the tokens, each a vector",
                       "of N = H·W numbers; ⊗ of two matrices is",
                       "their matrix product.",
                       "No convolution: X, Xᵀ and X are the input.",
                       "cam_energy='official' uses softmax(−X Xᵀ)."])
    d.legend(712)
    return d


def gc_block() -> Diagram:
    """nltutorial.ContextBlock (pooling="attention", fusion="add")."""
    d = Diagram("gc_block", 700, "The global context (GC) block",
                "Flow diagram of the global context block, top to bottom, in three parts. Context "
                "modelling: the input x of shape B×C×H×W goes through a 1×1 convolution W_k to one "
                "channel, B×1×H×W, reshaped to B×N×1 with N = H·W, and a softmax over the N positions "
                "gives the weights α; x reshaped to B×C×N times α is the weighted sum of x over all "
                "positions, one context vector of shape B×C×1×1 per image. Transform: a 1×1 "
                "convolution to C/r channels, a LayerNorm, a ReLU and a 1×1 convolution back to C "
                "channels (initialised to zero). Fusion: the transformed vector is broadcast and "
                "added to x at every position, giving the output z of shape B×C×H×W.")
    kc, vc, mid = 150, 360, 255
    x = d.box(vc, 30, ["x"], "io")
    d.line([(vc, x.bottom), (vc, 70)], head=False, label="B×C×H×W")
    d.line([(kc, 70), (vc, 70)], head=False)
    wk = d.box(kc, 110, ["W_{k}: 1×1 conv", "C → 1"], "conv")
    d.line([(kc, 70), (kc, wk.top)])
    flat_k = d.box(kc, 185, ["reshape"], "reshape")
    d.connect(wk, flat_k, "B×1×H×W")
    soft = d.box(kc, 255, ["softmax", "over the N positions"], "gate")
    d.connect(flat_k, soft, "B×N×1")
    flat_v = d.box(vc, 185, ["reshape"], "reshape")
    d.line([(vc, 70), (vc, flat_v.top)])
    m = d.op(mid, 325, "⊗")
    d.line([(kc, soft.bottom), (kc, m.cy), (m.left, m.cy)], label="α: B×N×1", at=0)
    d.line([(vc, flat_v.bottom), (vc, m.cy), (m.right, m.cy)], label="B×C×N", at=0)
    t1 = d.box(mid, 395, ["1×1 conv", "C → C/r"], "conv")
    d.connect(m, t1, "context: B×C×1×1")
    ln = d.box(mid, 465, ["LayerNorm"], "norm")
    d.connect(t1, ln, "B×C/r×1×1")
    relu = d.box(mid, 525, ["ReLU"], "norm")
    d.connect(ln, relu, "B×C/r×1×1")
    t2 = d.box(mid, 592, ["1×1 conv", "C/r → C, zero-init"], "conv")
    d.connect(relu, t2, "B×C/r×1×1")
    add = d.op(mid, 655, "⊕")
    d.connect(t2, add, "B×C×1×1")
    z = d.box(mid, 712, ["z"], "io")
    d.connect(add, z, "B×C×H×W")
    d.line([(x.left, x.cy), (30, x.cy), (30, add.cy), (add.left, add.cy)], label="B×C×H×W", at=0)
    parts = ((92, 350, "context modelling", ["α = softmax(W_{k} x) over",
                                               "the N positions: the same",
                                               "for every query i"]),
             (370, 622, "transform", ["bottleneck C → C/r → C", "(r = 16), as in SE"]),
             (640, 672, "fusion", ["broadcast over H×W"]))
    for y0, y1, name, lines in parts:
        d.line([(505, y0), (515, y0), (515, y1), (505, y1)], head=False, color=MUTED)
        d.heading(528, y0 + 14, name)
        d.notes(528, y0 + 34, lines)
    d.legend(752)
    return d


def _lcg(seed: int):
    """A tiny deterministic generator of floats in [0, 1) (same numbers on every platform)."""
    state = seed
    while True:
        state = (1103515245 * state + 12345) % 2**31
        yield state / 2**31


def _shade(v: float) -> str:
    """A blue of intensity v in [0, 1] (0 = white), as #rrggbb."""
    v = min(1.0, max(0.0, v))
    lo, hi = (255, 255, 255), (38, 99, 160)
    return "#" + "".join(f"{round(a + (b - a) * v):02x}" for a, b in zip(lo, hi))


def _grey(v: float) -> str:
    g = round(255 * min(1.0, max(0.0, v)))
    return f"#{g:02x}{g:02x}{g:02x}"


def _cells(d: Diagram, x0: float, y0: float, cell: float, values: Sequence[Sequence[Optional[float]]],
           colour: Callable[[float], str] = _shade) -> None:
    """A grid of square cells; None cells are white. Thin grey grid lines."""
    for r, row in enumerate(values):
        for c, v in enumerate(row):
            d.rect(x0 + c * cell, y0 + r * cell, cell, cell, "#ffffff" if v is None else colour(v),
                   "#b0b0b0", 0.6)


def _outline(d: Diagram, x0: float, y0: float, cell: float, r0: int, c0: int, rows: int, cols: int,
             stroke: str, width: float = 2.0, dashed: bool = False) -> None:
    d.rect(x0 + c0 * cell, y0 + r0 * cell, cols * cell, rows * cell, "none", stroke, width, dashed)


def local_relation() -> Diagram:
    """nltutorial.LocalRelation2d (in = out channels, stride 1, unfold view)."""
    d = Diagram("local_relation", 700, "The local relation layer",
                "Flow diagram of the local relation layer, top to bottom. The input x of shape B×C×H×W "
                "goes into two 1×1 convolutions, queries and keys, each to G = C/m channels. The keys "
                "of the k×k window around every output position p′ are gathered, B×G×k²×H×W. For each "
                "offset the appearance composability Φ of the query at p′ and the key at p (by default "
                "−(q − k)²; q·k is the product variant) is computed, and a geometry prior, a small "
                "network applied to the relative positions p − p′, of shape G×k², is added. A softmax "
                "over the k² positions of the window gives the weights ω, and the weighted sum of the "
                "values x in the window, each weight shared by m channels, gives the output y of shape "
                "B×C×H×W. A small grid at the right shows the k×k window around p′: a local non-local "
                "operation.")
    qc, kc, gc, mid, V = 150, 330, 520, 240, 30
    x = d.box(kc, 30, ["x"], "io")
    d.line([(kc, x.bottom), (kc, 70)], head=False, label="B×C×H×W")
    d.line([(qc, 70), (kc, 70)], head=False)
    q = d.box(qc, 110, ["query: 1×1 conv", "C → G = C/m"], "conv")
    k = d.box(kc, 110, ["key: 1×1 conv", "C → G"], "conv")
    d.line([(qc, 70), (qc, q.top)])
    d.line([(kc, 70), (kc, k.top)])
    win = d.box(kc, 190, ["k×k neighbours", "of every p′"], "reshape")
    d.connect(k, win, "B×G×H×W")
    off = d.box(gc, 110, ["offsets p − p′", "(Δy, Δx)"], "io")
    geo = d.box(gc, 190, ["geometry prior", "1×1 conv, ReLU, 1×1 conv"], "conv")
    d.connect(off, geo, "2×k×k")
    phi = d.box(mid, 270, ["Φ(q_{p′}, k_{p}) per offset", "default −(q − k)²"], "pair")
    d.line([(qc, q.bottom), (qc, phi.top)], label="B×G×H×W")
    d.line([(kc, win.bottom), (kc, phi.top)], label="B×G×k²×H×W")
    add = d.op(mid, 340, "⊕")
    d.connect(phi, add, "B×G×k²×H×W")
    d.line([(gc, geo.bottom), (gc, add.cy), (add.right, add.cy)], label="G×k²", at=0)
    soft = d.box(mid, 410, ["softmax", "over the k² window"], "gate")
    d.connect(add, soft, "B×G×k²×H×W")
    agg = d.box(mid, 490, ["Σ_{p} ω(p′, p) x_{p}", "m channels share each ω"], "pair")
    d.connect(soft, agg, "ω: B×G×k²×H×W")
    y = d.box(mid, 560, ["y"], "io")
    d.connect(agg, y, "B×C×H×W")
    d.line([(x.left, x.cy), (V, x.cy), (V, agg.cy), (agg.left, agg.cy)], label="values x: B×C×H×W", at=0)
    # the window of one output position, on a small grid
    gx, gy, cell, n, kk = 470, 400, 16, 9, 5
    gen = _lcg(7)
    vals = [[next(gen) * 0.8 + 0.2 if abs(r - 4) <= kk // 2 and abs(c - 4) <= kk // 2 else None
             for c in range(n)] for r in range(n)]
    vals[4][4] = 1.0
    _cells(d, gx, gy, cell, vals)
    _outline(d, gx, gy, cell, 4 - kk // 2, 4 - kk // 2, kk, kk, INK, 2.0)
    _outline(d, gx, gy, cell, 4, 4, 1, 1, "#b8322b", 2.5)
    d.text(gx + n * cell / 2, gy - 10, "ω(p′, ·): k×k window (k = 5)", SMALL, color=MUTED)
    d.notes(gx + n * cell / 2, gy + n * cell + 20, ["red: the output position p′;",
                                                      "only its k×k neighbours count:",
                                                      "a local non-local operation"], anchor="middle")
    d.legend(630)
    return d


def cifar_resnet_placement() -> Diagram:
    """nltutorial.models.resnet20 and the default placement of every attention block."""
    d = Diagram("cifar_resnet_placement", 600, "Where the attention blocks sit in ResNet-20",
                "ResNet-20 for CIFAR-10 drawn in three columns. The image of shape B×3×32×32 goes "
                "through a 3×3 convolution with 16 channels, batch normalisation and ReLU, then "
                "stage 1: the basic blocks layer1.0 to layer1.2 with 16 channels at 32×32. Stage 2, "
                "layer2.0 to layer2.2, has 32 channels at 16×16, and stage 3, layer3.0 to layer3.2, "
                "64 channels at 8×8; the first block of stages 2 and 3 halves the resolution. Global "
                "average pooling gives B×64 and a fully connected layer the B×10 logits. A red dot in "
                "every basic block marks where SE, CBAM and GC sit: inside the block, on the residual "
                "branch before the addition. Dashed red boxes mark the separate blocks placed after "
                "a basic block: BAM after layer1.2 and layer2.2, and NL or DANet after layer2.1 and "
                "layer3.1. One kind of attention is used per network.")
    cols, y0, step, bw = (95, 345, 595), 92, 54, 140
    rows: List[List[Tuple[List[str], str, bool]]] = [
        [(["image"], "io", False), (["3×3 conv, 16", "BN, ReLU"], "conv", False),
         (["layer1.0"], "block", True), (["layer1.1"], "block", True), (["layer1.2"], "block", True),
         (["BAM"], "attn", False)],
        [(["layer2.0"], "block", True), (["layer2.1"], "block", True), (["NL / DANet"], "attn", False),
         (["layer2.2"], "block", True), (["BAM"], "attn", False)],
        [(["layer3.0"], "block", True), (["layer3.1"], "block", True), (["NL / DANet"], "attn", False),
         (["layer3.2"], "block", True), (["global avg pool"], "reshape", False), (["FC 64 → 10"], "conv", False)],
    ]
    shapes = [["B×3×32×32", "B×16×32×32", "B×16×32×32", "B×16×32×32", "B×16×32×32"],
              ["B×32×16×16", "B×32×16×16", "B×32×16×16", "B×32×16×16"],
              ["B×64×8×8", "B×64×8×8", "B×64×8×8", "B×64×8×8", "B×64"]]
    heads = ["stem, stage 1: 16 ch, 32×32", "stage 2: 32 ch, 16×16", "stage 3: 64 ch, 8×8"]
    placed: List[List[Node]] = []
    for cx, col, head in zip(cols, rows, heads):
        d.heading(cx - bw / 2, 40, head)
        nodes = []
        for r, (lines, kind, residual) in enumerate(col):
            n = d.box(cx, y0 + r * step, lines, kind, w=bw, h=30 if len(lines) == 1 else 38,
                      dashed=kind == "attn")
            if residual:
                d.body.append(f'<circle cx="{_f(n.right - 11)}" cy="{_f(n.cy)}" r="5" '
                              f'fill="{KINDS["attn"][0]}" stroke="{KINDS["attn"][1]}" stroke-width="1.5"/>')
            nodes.append(n)
        placed.append(nodes)
    for nodes, labels in zip(placed, shapes):
        for a, b, lab in zip(nodes, nodes[1:], labels):
            d.connect(a, b, lab)
    for k in range(2):                                # column k's last box -> column k+1's first
        a, b = placed[k][-1], placed[k + 1][0]
        gx = (a.cx + b.cx) / 2 + 10
        d.line([(a.cx, a.bottom), (a.cx, a.bottom + 16), (gx, a.bottom + 16), (gx, y0 - 22),
                (b.cx, y0 - 22), (b.cx, b.top)], label=["B×16×32×32", "B×32×16×16"][k], at=3)
    fc = placed[2][-1]
    logits = d.box(cols[2], fc.cy + step, ["logits"], "io")
    d.connect(fc, logits, "B×10")
    yl = logits.bottom + 34
    d.body.append(f'<circle cx="15" cy="{_f(yl - 4)}" r="5" fill="{KINDS["attn"][0]}" '
                  f'stroke="{KINDS["attn"][1]}" stroke-width="1.5"/>')
    d.text(26, yl, "SE, CBAM, GC: inside every basic block, on the residual branch before the ⊕",
           LABEL, anchor="start", color=MUTED)
    d.rect(8, yl + 9, 14, 14, KINDS["attn"][0], KINDS["attn"][1], 1.5, dashed=True, rx=3)
    d.text(26, yl + 20, "BAM, NL, DANet: a separate block after a basic block (one kind per network)",
           LABEL, anchor="start", color=MUTED)
    d.text(8, yl + 40, "basic block: 3×3 conv, BN, ReLU, 3×3 conv, BN, (attention), ⊕ shortcut, ReLU",
           LABEL, anchor="start", color=MUTED)
    d.legend(yl + 62)
    return d


def video_resnet_placement() -> Diagram:
    """nltutorial.video_models.video_resnet("c2d" | "i3d", attention="nl3d"), default sizes."""
    d = Diagram("video_resnet_placement", 600, "C2D and I3D with space-time non-local blocks",
                "Two networks side by side, C2D on the left and I3D on the right, each a column of boxes "
                "from the input clip of shape B×3×8×32×32 (3 colours, 8 frames, 32×32 pixels) to the "
                "logits. The stem convolution, 1×3×3 in C2D and 3×3×3 in I3D, with 16 channels and "
                "spatial stride 2, gives B×16×8×16×16. Stage 1 keeps 16 channels; stage 2 has 32 "
                "channels at 8×8 and stage 3 64 channels at 4×4, and time is never sub-sampled. In C2D "
                "every block's first convolution is 1×3×3, in I3D it is inflated to 3×3×3. A space-time "
                "non-local block, NL3D, drawn as a dashed red box, follows stage 2 and stage 3 in both "
                "networks. Global average pooling over time and space gives B×64 and a fully connected "
                "layer the B×2 logits.")
    shapes = ["B×3×8×32×32", "B×16×8×16×16", "B×16×8×16×16", "B×32×8×8×8", "B×32×8×8×8",
              "B×64×8×4×4", "B×64×8×4×4", "B×64", "B×2"]
    for cx, name, kt in ((160, "C2D", "1×3×3"), (500, "I3D", "3×3×3")):
        d.heading(cx, 26, name, anchor="middle")
        spec = [(["clip"], "io"), ([f"stem: {kt} conv, 16", "BN, ReLU, stride (1, 2, 2)"], "conv"),
                (["stage 1: 16 ch", f"conv1 {kt}, conv2 1×3×3"], "block"),
                (["stage 2: 32 ch", f"conv1 {kt}, stride (1, 2, 2)"], "block"),
                (["NL3D", "N = T·H·W = 512"], "attn"),
                (["stage 3: 64 ch", f"conv1 {kt}, stride (1, 2, 2)"], "block"),
                (["NL3D", "N = T·H·W = 128"], "attn"),
                (["global avg pool", "over T×H×W"], "reshape"), (["FC 64 → 2"], "conv"), (["logits"], "io")]
        nodes = [d.box(cx, 56 + 66 * r, lines, kind, w=220, h=30 if len(lines) == 1 else 40,
                       dashed=kind == "attn")
                 for r, (lines, kind) in enumerate(spec)]
        for a, b, lab in zip(nodes, nodes[1:], shapes):
            d.connect(a, b, lab)
    y = 56 + 66 * 9 + 44
    d.notes(12, y, ["C2D: every kernel is 1×k×k, a 2-D network applied to each frame; frames meet only "
                    "in the pool.",
                    "I3D: the stem and conv1 of the first block of each stage inflated to 3×3×3.",
                    "NL3D: NonLocalBlock(dimension=3); i and j range over all T×H×W positions of the "
                    "clip."])
    d.legend(y + 68)
    return d


def _edge_image(n: int, seed: int) -> List[List[float]]:
    """A noisy n×n test image: a dark left half, a bright right half, Gaussian-like noise."""
    gen = _lcg(seed)
    img = []
    for r in range(n):
        row = []
        for c in range(n):
            noise = sum(next(gen) for _ in range(3)) / 3 - 0.5          # in (-0.5, 0.5), peaked
            row.append(min(1.0, max(0.0, (0.25 if c < n // 2 else 0.75) + 0.45 * noise)))
        img.append(row)
    return img


def nlm_patches() -> Diagram:
    """Non-local means (nltutorial.nl_means): patch distances over the search window."""
    d = Diagram("nlm_patches", 500, "Non-local means: patches and weights",
                "Left: a noisy 16×16 image with a dark left half and a bright right half. A dashed "
                "9×9 search window is drawn around the pixel i, which lies on the edge; the 3×3 patch "
                "P_i around i is outlined in blue, a candidate patch P_j, also on the edge, in green, "
                "and a second candidate patch P_k, inside the dark half, in orange. Right: the steps "
                "for every candidate j of the window: the squared distance between the two P×P "
                "patches, the weight exp(−‖P_i − P_j‖² / h²), the normalisation by the sum over the "
                "S×S window, and the weighted average û(i) = Σ_j w(i, j) v(j). Below the image, the "
                "S×S map of the weights w(i, ·): large along the edge, where the patches look like "
                "P_i, small elsewhere.")
    n, cell, x0, y0 = 16, 14, 20, 44
    img = _edge_image(n, 3)
    _cells(d, x0, y0, cell, img, _grey)
    i, j, k, S, P = (7, 8), (3, 8), (9, 4), 9, 3
    _outline(d, x0, y0, cell, i[0] - S // 2, i[1] - S // 2, S, S, INK, 1.8, dashed=True)
    for (r, c), col in ((k, KINDS["gate"][1]), (j, KINDS["reshape"][1]), (i, KINDS["conv"][1])):
        _outline(d, x0, y0, cell, r - P // 2, c - P // 2, P, P, col, 2.5)
    d.heading(x0, 30, "noisy image v")
    d.heading(545, 30, "for every candidate j of the window", anchor="middle")
    right = x0 + n * cell
    # labels beside the image, with leader lines
    for (r, c), name, col in ((j, "P_{j}: like P_{i}", KINDS["reshape"][1]), (i, "P_{i} around i", KINDS["conv"][1]),
                              (k, "P_{k}: unlike P_{i}", KINDS["gate"][1])):
        yy = y0 + (r + 0.5) * cell
        d.line([(x0 + (c + 1.5) * cell, yy), (right + 8, yy)], head=False, color=col)
        d.text(right + 12, yy + 4, name, LABEL, anchor="start", color=col)
    d.note(x0 + n * cell / 2, y0 + n * cell + 18, "dashed: search window, S×S (S = 9)")
    # the weights of the window, computed from the image above
    h2 = 0.3                                        # h² for patches of this image
    def patch(r0: int, c0: int) -> List[float]:
        return [img[r0 + a][c0 + b] for a in (-1, 0, 1) for b in (-1, 0, 1)]
    pi = patch(*i)
    ws = [[math.exp(-sum((u - v) ** 2 for u, v in zip(pi, patch(i[0] + a, i[1] + b))) / h2)
           for b in range(-(S // 2), S // 2 + 1)] for a in range(-(S // 2), S // 2 + 1)]
    top = max(max(row) for row in ws)
    wx, wy = x0 + (n * cell - S * cell) / 2, y0 + n * cell + 50
    d.text(x0 + n * cell / 2, wy - 10, "weights w(i, ·) over the window", SMALL, color=MUTED)
    _cells(d, wx, wy, cell, [[w / top for w in row] for row in ws])
    _outline(d, wx, wy, cell, S // 2, S // 2, 1, 1, KINDS["conv"][1], 2.5)
    d.note(x0 + n * cell / 2, wy + S * cell + 18, "darker = larger weight")
    # the computation, for every candidate j of the window
    fx = 545
    pair = d.box(fx, 70, ["P_{i} and P_{j}", "two P×P patches (P = 3)"], "io")
    dist = d.box(fx, 150, ["‖P_{i} − P_{j}‖²", "squared patch distance"], "pair")
    d.connect(pair, dist, "P×P, P×P")
    ker = d.box(fx, 230, ["exp(−‖P_{i} − P_{j}‖² / h²)"], "gate")
    d.connect(dist, ker, "S×S (one per j)")
    norm = d.box(fx, 310, ["÷ Σ_{j} over the window", "weights sum to 1"], "gate")
    d.connect(ker, norm, "S×S")
    est = d.box(fx, 390, ["û(i) = Σ_{j} w(i, j) v(j)"], "io")
    d.connect(norm, est, "w(i, ·): S×S")
    d.note(fx, 440, "repeated for every pixel i of the image")
    d.legend(496)
    return d


#: The example of :func:`nlm_spacetime`: a 12×12 clip of 3 frames, the object's centre in each,
#: pixel i = (t, p) with t = 1, p = (5, 5); 2-D P×P patches, S×S windows, τ = 1; σ = 0.45 / 6,
#: the standard deviation of the noise :func:`_moving_object_clip` adds (before clipping); h = 0.25.
NLM_ST = {"n": 12, "centres": ((5, 3), (5, 5), (5, 7)), "seed": 5, "t": 1, "p": (5, 5),
          "P": 3, "S": 7, "tau": 1, "h": 0.25, "sigma": 0.075}


def _moving_object_clip(n: int, centres: Sequence[Tuple[int, int]], seed: int) -> List[List[List[float]]]:
    """Noisy n×n frames, one per centre: a dark background (0.2) and a bright 3×3 object (0.85)
    centred on that frame's (row, col); noise 0.45 × (mean of 3 uniforms − 1/2), clipped to [0, 1]."""
    gen = _lcg(seed)
    clip = []                                            # (T, n, n)
    for cr, cc in centres:
        frame = []
        for r in range(n):
            row = []
            for c in range(n):
                base = 0.85 if abs(r - cr) <= 1 and abs(c - cc) <= 1 else 0.2
                noise = sum(next(gen) for _ in range(3)) / 3 - 0.5
                row.append(min(1.0, max(0.0, base + 0.45 * noise)))
            frame.append(row)
        clip.append(frame)
    return clip


def _spacetime_weights(clip: Sequence[Sequence[Sequence[float]]], t: int, p: Tuple[int, int], P: int,
                       S: int, tau: int, h: float, sigma: float) -> List[List[List[float]]]:
    """Normalised space-time NL-means weights of pixel i = (t, p) (Buades, Coll & Morel 2008).

    W[τ + δ][S//2 + dy][S//2 + dx] = w(i, j) / Σ_j w(i, j), j = (t + δ, p + (dy, dx)), |δ| ≤ τ,
    w(i, j) = exp(−max(d²(i, j) − 2σ², 0) / h²), w(i, i) = max_{j≠i} w(i, j),
    d²(i, j) = (1/P²) Σ_k (v(t, p + k) − v(t + δ, p + o + k))², k over the P×P offsets:
    nltutorial.nl_means_weights(..., patch_weighting="uniform", video=True) for a window and
    patches inside the frames (checked; the figure needs no padding).
    """
    n_t, rows, cols = len(clip), len(clip[0]), len(clip[0][0])
    R = P // 2 + S // 2                                  # reach of the patches of the window
    if not (tau <= t < n_t - tau and R <= p[0] < rows - R and R <= p[1] < cols - R):
        raise ValueError(f"_spacetime_weights: pixel (t, p) = ({t}, {p}) needs frames t ± {tau} and "
                         f"{R} pixels on every side inside the {n_t}×{rows}×{cols} clip")
    ks, os_ = range(-(P // 2), P // 2 + 1), range(-(S // 2), S // 2 + 1)

    def patch(f: int, r: int, c: int) -> List[float]:   # (P·P,) patch of frame f around (r, c)
        return [clip[f][r + a][c + b] for a in ks for b in ks]

    pi = patch(t, *p)
    w = [[[math.exp(-max(sum((u - v) ** 2 for u, v in zip(pi, patch(t + dt, p[0] + dy, p[1] + dx)))
                         / (P * P) - 2 * sigma * sigma, 0.0) / (h * h))
           for dx in os_] for dy in os_] for dt in range(-tau, tau + 1)]     # (2τ + 1, S, S)
    w[tau][S // 2][S // 2] = 0.0
    w[tau][S // 2][S // 2] = max(v for frame in w for row in frame for v in row)
    total = sum(v for frame in w for row in frame for v in row)
    return [[[v / total for v in row] for row in frame] for frame in w]


def _swatches(d: Diagram, x: float, y: float, items: Sequence[Tuple[str, bool, str]],
              col_w: float) -> None:
    """Rows of outline swatches (stroke, dashed, text), two per row, ``col_w`` apart, 20 px rows."""
    for k, (stroke, dashed, text) in enumerate(items):
        sx, sy = x + (k % 2) * col_w, y + 20 * (k // 2)
        d.rect(sx, sy - 11, 14, 14, "none", stroke, 1.8 if dashed else 2.5, dashed)
        d.text(sx + 20, sy, text, LABEL, anchor="start", color=MUTED)


def _frame_name(dt: int) -> str:
    """"frame t", "frame t − 1", "frame t + 2", … for the frame t + dt."""
    return "frame t" + ("" if dt == 0 else f" {'−+'[dt > 0]} {abs(dt)}")


def _best_matches(maps: Sequence[Sequence[Sequence[float]]], p: Tuple[int, int]) -> List[Tuple[int, int]]:
    """The centre (row, col) of the best match of P_i in each frame: its map's largest weight."""
    out = []
    for frame in maps:                                   # (S, S) map of one frame
        _, r, c = max((v, r, c) for r, row in enumerate(frame) for c, v in enumerate(row))
        out.append((p[0] + r - len(frame) // 2, p[1] + c - len(frame) // 2))
    return out


def _st_frames(d: Diagram, clip, xs: Sequence[float], y0: float, cell: float,
               best: Sequence[Tuple[int, int]]) -> None:
    """The noisy frames with the search windows, P_i, the best and a poor match, and above each
    frame t ± 1 an arrow from p to the best offset o."""
    t, (pr, pc), P, S = NLM_ST["t"], NLM_ST["p"], NLM_ST["P"], NLM_ST["S"]
    blue, green, orange = KINDS["conv"][1], KINDS["reshape"][1], KINDS["gate"][1]
    ya = y0 - 10                                          # the arrows' row
    for f, (x0, frame) in enumerate(zip(xs, clip)):
        dt = f - t
        d.heading(x0 + len(frame) * cell / 2, 22, _frame_name(dt), anchor="middle")
        _cells(d, x0, y0, cell, frame, _grey)
        _outline(d, x0, y0, cell, pr - S // 2, pc - S // 2, S, S, INK, 1.8, dashed=True)
        xp = x0 + (pc + 0.5) * cell
        if dt == 0:
            _outline(d, x0, y0, cell, pr - P // 2, pc - P // 2, P, P, blue, 2.5)
            d.line([(xp, ya - 14), (xp, ya + 6)], color=blue)
            d.text(xp + 8, ya - 8, "i = (t, p)", LABEL, anchor="start", color=blue)
            continue
        (br, bc) = best[f]
        _outline(d, x0, y0, cell, pr - P // 2, pc - P // 2, P, P, orange, 2.5)
        _outline(d, x0, y0, cell, br - P // 2, bc - P // 2, P, P, green, 2.5)
        xb = x0 + (bc + 0.5) * cell
        d.line([(xp, ya), (xb, ya)], color=green, dot=True)
        d.text((xp + xb) / 2, ya - 8, f"best o = ({br - pr}, {'+' if bc > pc else '−'}{abs(bc - pc)})",
               LABEL, color=green)


def _st_maps(d: Diagram, maps, xs: Sequence[float], y0: float, cell: float,
             best: Sequence[Tuple[int, int]]) -> float:
    """The (2τ + 1) S×S weight maps on one shared scale, the cells of P_i, the best and the poor
    match outlined; returns the y below them."""
    t, (pr, pc), S = NLM_ST["t"], NLM_ST["p"], NLM_ST["S"]
    blue, green, orange = KINDS["conv"][1], KINDS["reshape"][1], KINDS["gate"][1]
    top = max(v for frame in maps for row in frame for v in row)
    c = S // 2
    for f, (cx, frame) in enumerate(zip(xs, maps)):
        wx = cx - S * cell / 2
        _cells(d, wx, y0, cell, [[v / top for v in row] for row in frame])
        if f == t:
            _outline(d, wx, y0, cell, c, c, 1, 1, blue, 2.5)
        else:
            _outline(d, wx, y0, cell, c, c, 1, 1, orange, 2.5)
            _outline(d, wx, y0, cell, c + best[f][0] - pr, c + best[f][1] - pc, 1, 1, green, 2.5)
        dt = f - t
        d.text(cx, y0 + S * cell + 18, _frame_name(dt), SMALL, color=MUTED)
        d.text(cx, y0 + S * cell + 34, f"Σ = {sum(map(sum, frame)):.2f}", SMALL, color=MUTED)
    return y0 + S * cell + 34


def nlm_spacetime() -> Diagram:
    """Space-time non-local means (nltutorial.nl_means(..., video=True, temporal_radius=τ)), τ = 1:
    the maps are :func:`_spacetime_weights` of the drawn clip, on one shared scale."""
    clip = _moving_object_clip(NLM_ST["n"], NLM_ST["centres"], NLM_ST["seed"])
    maps = _spacetime_weights(clip, NLM_ST["t"], NLM_ST["p"], NLM_ST["P"], NLM_ST["S"], NLM_ST["tau"],
                              NLM_ST["h"], NLM_ST["sigma"])
    sums = [sum(map(sum, frame)) for frame in maps]
    d = Diagram("nlm_spacetime", 760, "Space-time non-local means: one window in every frame",
                "Top: three noisy 12×12 frames side by side, t − 1, t and t + 1, with a dark "
                "background and a bright 3×3 object that moves two cells to the right from one frame "
                "to the next. In every frame a dashed 7×7 search window is drawn around the same "
                "position p. In frame t the 3×3 patch P_i of the pixel i = (t, p), on the object, is "
                "outlined in blue, and an arrow above the frame points down to i. In frames t − 1 and "
                "t + 1 the best matching patch, on the object two cells to the left and two cells to "
                "the right, is outlined in green, and the patch at the same position p, which the "
                "object has left, is a poor match outlined in orange; an arrow above each of these "
                "frames goes from p to the best offset o, (0, −2) and (0, +2). There is no motion "
                "estimation: the patch similarity finds where the object went. Middle: below each "
                "frame, the 7×7 map of the weights w(i, j) of pixel i over that frame's window, "
                "computed from the drawn pixels and shown on one shared scale, with the same cells "
                "outlined: each map is large only where the patch lies on the object, at the centre "
                "in frame t, two cells to the left in frame t − 1 and two cells to the right in frame "
                f"t + 1, and the three maps sum to {sums[0]:.2f}, {sums[1]:.2f} and {sums[2]:.2f}, "
                "together 1. Bottom: the steps for every candidate "
                "j of the space-time window: the squared distance of the two P×P patches, the weight "
                "exp(−max(d² − 2σ², 0) / h²), the normalisation by the sum over all (2τ + 1)·S² = 147 "
                "candidates of the three windows, and the weighted average û(i) = Σ_j w(i, j) v(j).")
    n, cell, mcell, y0 = NLM_ST["n"], 15, 16, 66
    xs = [30 + 240 * f for f in range(3)]                 # left edge of each frame
    cxs = [x + n * cell / 2 for x in xs]                  # its centre
    best = _best_matches(maps, NLM_ST["p"])              # green in frames t ± 1
    _st_frames(d, clip, xs, y0, cell, best)
    y = y0 + n * cell + 24
    _swatches(d, 30, y, [(KINDS["conv"][1], False, "P_{i}: the P×P patch of i (P = 3)"),
                         (INK, True, "search window S×S around p (S = 7)"),
                         (KINDS["reshape"][1], False, "best match: on the moved object"),
                         (KINDS["gate"][1], False, "poor match: same p, object gone")], 340)
    d.note(WIDTH / 2, y + 46, "No motion estimation: the similarity of the patches finds where the "
                              "object went.")
    ym = y + 100
    d.text(WIDTH / 2, ym - 12, "weights w(i, j) of pixel i in each frame's window, one shared scale",
           SMALL, color=MUTED)
    yb = _st_maps(d, maps, cxs, ym, mcell, best)
    d.note(WIDTH / 2, yb + 24, "The three maps together sum to 1 (one normalisation over the space-time "
                               "window); darker = larger.")
    _st_flow(d, yb + 80)
    d.legend(yb + 240)
    return d


def _st_flow(d: Diagram, y: float) -> None:
    """The computation for every candidate j of the space-time window, as two rows of boxes."""
    dist = d.box(170, y, ["d² = ‖P_{i} − P_{j}‖²", "P×P, frames t and t + δ"], "pair", h=50, gap=7)
    ker = d.box(510, y, ["exp(−max(d² − 2σ², 0) / h²)", "one weight per candidate j"], "gate", h=50)
    d.connect(dist, ker, "3×S×S")
    norm = d.box(510, y + 76, ["÷ Σ_{j} over the 3 windows", "(2τ + 1)·S² = 147 terms"], "gate",
                 h=50, gap=7)
    d.connect(ker, norm, "3×S×S")
    est = d.box(170, y + 76, ["û(i) = Σ_{j} w(i, j) v(j)"], "io")
    d.connect(norm, est, "w(i, ·): 3×S×S")
    d.note(WIDTH / 2, y + 124, "nl_means(clip, video=True, temporal_radius=τ): repeated for every pixel "
                               "of every frame")


def omega_patterns() -> Diagram:
    """Chapter 6's unified view: which positions p each operation reads for one output p′."""
    d = Diagram("omega_patterns", 400, "Aggregation patterns ω of the unified view",
                "Four columns of small 7×7 grids of positions, one column per kind of operation, and "
                "two rows, one per output position i (marked with a red outline). Convolution: a 3×3 "
                "window of positions around i is shaded, with the same fixed pattern of weights for "
                "both positions. Local relation: a 3×3 window around i, with weights that differ from "
                "one position to the other because they are computed from the input. Non-local block "
                "and DANet's position module: every position of the grid is shaded, with shades of "
                "different strength that change with i. SE and GC: every position feeds one globally "
                "pooled context with the same weights, and that one context reaches every position i "
                "alike.")
    n, cell = 7, 16
    cols = [("convolution", ["k×k window,", "fixed learned weights"]),
            ("local relation", ["k×k window,", "weights from the input"]),
            ("non-local / PAM", ["all N positions,", "weights from the input"]),
            ("SE / GC", ["one pooled context,", "shared by every i"])]
    queries = [(2, 2), (4, 5)]
    conv_w = [[0.35, 0.7, 0.35], [0.7, 1.0, 0.55], [0.2, 0.55, 0.3]]
    gen = _lcg(11)
    pooled = [[0.25 + 0.2 * next(gen) for _ in range(n)] for _ in range(n)]
    for ci, (name, lines) in enumerate(cols):
        cx = 90 + ci * 180
        d.text(cx, 24, name, HEAD, bold=True)
        for li, s in enumerate(lines):
            d.note(cx, 42 + 16 * li, s)
        for ri, (qr, qc) in enumerate(queries):
            gx, gy = cx - n * cell / 2, 80 + ri * 150
            vals: List[List[Optional[float]]] = [[None] * n for _ in range(n)]
            for r in range(n):
                for c in range(n):
                    near = abs(r - qr) <= 1 and abs(c - qc) <= 1
                    if ci == 0 and near:
                        vals[r][c] = conv_w[r - qr + 1][c - qc + 1]
                    elif ci == 1 and near:
                        vals[r][c] = 0.2 + 0.8 * next(gen)
                    elif ci == 2:
                        closeness = math.exp(-((r - qr) ** 2 + (c - qc - 2 * ri + 1) ** 2) / 6)
                        vals[r][c] = 0.1 + 0.5 * next(gen) * (0.4 + closeness)
                    elif ci == 3:
                        vals[r][c] = pooled[r][c]
            _cells(d, gx, gy, cell, vals)
            _outline(d, gx, gy, cell, qr, qc, 1, 1, "#b8322b", 2.5)
            if ci == 0:
                d.text(12, gy + n * cell / 2 + 4, f"i{'₁₂'[ri]}", HEAD, anchor="start", bold=True)
    d.text(12, 372, "Each grid: the positions j that the output position i (red) aggregates;",
           LABEL, anchor="start", color=MUTED)
    d.text(12, 390, "darker = larger weight ω, white = 0 (not aggregated).", LABEL, anchor="start", color=MUTED)
    d.height = 400
    return d


DIAGRAMS: Dict[str, Callable[[], Diagram]] = {
    "nlm_patches.svg": nlm_patches,
    "nlm_spacetime.svg": nlm_spacetime,
    "nonlocal_block.svg": nonlocal_block,
    "se.svg": se,
    "cbam.svg": cbam,
    "bam.svg": bam,
    "danet_pam.svg": danet_pam,
    "danet_cam.svg": danet_cam,
    "gc_block.svg": gc_block,
    "local_relation.svg": local_relation,
    "cifar_resnet_placement.svg": cifar_resnet_placement,
    "video_resnet_placement.svg": video_resnet_placement,
    "omega_patterns.svg": omega_patterns,
}


def render_all() -> Dict[str, str]:
    """{file name: SVG text} for every diagram."""
    return {name: make().svg() for name, make in DIAGRAMS.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare book/figures/*.svg with the code instead of writing them")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder of the SVGs (default book/figures)")
    args = parser.parse_args(argv)
    svgs = render_all()
    if args.check:
        stale = [name for name, text in svgs.items()
                 if not (args.out / name).is_file() or (args.out / name).read_bytes() != text.encode("utf-8")]
        for name in stale:
            print(f"{args.out / name}: differs from what tools/diagrams.py generates "
                  f"(run `python tools/diagrams.py`)", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in svgs.items():
        tmp = args.out / f".{name}.tmp"
        tmp.write_bytes(text.encode("utf-8"))
        tmp.replace(args.out / name)               # atomic: never a half-written SVG
    print(f"wrote {len(svgs)} diagrams to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
