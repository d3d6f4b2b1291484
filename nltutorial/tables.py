"""What a chapter shows: result tables (HTML in the book, aligned text in a terminal) and ``glue``.

``table(rows, columns)`` returns a :class:`Table`; a notebook cell that ends with it shows an
HTML ``<table>`` (Jupyter's ``_repr_html_``), a plain ``print`` shows fixed-width text. Numbers
are formatted once, by ``formats`` (a format spec per column, e.g. ``{"PSNR (dB)": ".2f"}``), so
both views show the same digits. No pandas needed.

``glue(name, value)`` records a value for the book's prose (myst-nb's ``{glue:text}`name:.2f```),
with the same output myst-nb's own ``glue`` writes, so that a chapter runs in Colab or plain Jupyter
without myst-nb installed.
"""

from __future__ import annotations

import html
import numbers
from typing import Mapping, Optional, Sequence

__all__ = ["GLUE_PREFIX", "Table", "glue", "table"]

#: The mime-type prefix myst-nb reads glued values from (``myst_nb.ext.glue.GLUE_PREFIX``).
GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value, display: bool = False) -> None:
    """Record ``value`` under ``name`` for ``{glue:text}`` / ``{glue}`` in the chapter's prose.

    Writes the display output myst-nb's ``glue`` writes (its mime bundle under
    :data:`GLUE_PREFIX`, ``metadata["scrapbook"]``), hidden unless ``display``. Round a number to
    what is stable before gluing it: the stored text is what nbval compares.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue: name must be a non-empty string, got {name!r}")
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    bundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def _cell(value, spec: Optional[str]) -> str:
    if value is None:
        return ""
    if spec is not None and isinstance(value, numbers.Number) and not isinstance(value, bool):
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Table:
    """Rows of cells with column names; ``_repr_html_`` for notebooks, ``str`` for terminals."""

    def __init__(self, rows: Sequence[Sequence], columns: Sequence[str], *,
                 formats: Optional[Mapping[str, str]] = None, caption: Optional[str] = None):
        columns = [str(c) for c in columns]
        rows = [list(r) for r in rows]
        for k, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(f"rows[{k}] has {len(row)} cells, expected {len(columns)} (one per column)")
        formats = dict(formats or {})
        unknown = sorted(set(formats) - set(columns))
        if unknown:
            raise ValueError(f"formats names unknown columns {unknown}; the columns are {columns}")
        self.columns, self.rows, self.caption = columns, rows, caption
        self.cells = [[_cell(v, formats.get(c)) for v, c in zip(row, columns)] for row in rows]
        self.numeric = [all(isinstance(r[j], numbers.Number) or r[j] is None for r in rows) and bool(rows)
                        for j in range(len(columns))]

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        """The raw values of one column."""
        return [row[self.columns.index(name)] for row in self.rows]

    def __str__(self) -> str:
        widths = [max([len(c)] + [len(r[j]) for r in self.cells]) for j, c in enumerate(self.columns)]

        def line(cells):
            return "  ".join(c.rjust(w) if num else c.ljust(w)
                             for c, w, num in zip(cells, widths, self.numeric)).rstrip()

        out = ([self.caption] if self.caption else []) + [line(self.columns), line(["-" * w for w in widths])]
        return "\n".join(out + [line(r) for r in self.cells])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        def row(cells, tag):
            return "<tr>" + "".join(
                f'<{tag} style="text-align:{"right" if num else "left"}">{html.escape(c)}</{tag}>'
                for c, num in zip(cells, self.numeric)) + "</tr>"

        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        body = "".join(row(r, "td") for r in self.cells)
        return (f'<table class="nlt-table">{caption}<thead>{row(self.columns, "th")}</thead>'
                f"<tbody>{body}</tbody></table>")


def table(rows: Sequence[Sequence], columns: Sequence[str], *, formats: Optional[Mapping[str, str]] = None,
          caption: Optional[str] = None) -> Table:
    """A :class:`Table` of ``rows`` (sequences, one cell per column) under ``columns``."""
    return Table(rows, columns, formats=formats, caption=caption)
