import pytest

import nltutorial as nlt
from nltutorial.tables import Table


def test_text_and_html_show_the_same_formatted_cells():
    t = nlt.table([["NLM", 29.123, 3], ["blur", 27.5, None]], ["method", "PSNR (dB)", "n"],
                  formats={"PSNR (dB)": ".2f"}, caption="best h")
    text = str(t)
    assert text.splitlines()[0] == "best h"
    assert "29.12" in text and "27.50" in text and "29.123" not in text
    html = t._repr_html_()
    assert html.count("<tr>") == 3 and "<caption>best h</caption>" in html
    assert ">29.12</td>" in html and '<td style="text-align:right"></td>' in html  # None -> empty
    assert '<td style="text-align:left">NLM</td>' in html  # text columns left-aligned
    assert t.column("n") == [3, None] and len(t) == 2


def test_html_escapes_cells():
    assert "&lt;b&gt;" in Table([["<b>"]], ["x"])._repr_html_()


def test_text_columns_are_aligned():
    lines = str(nlt.table([["a", 1.0], ["bbbb", 10.0]], ["k", "v"], formats={"v": ".1f"})).splitlines()
    assert lines == ["k        v", "----  ----", "a      1.0", "bbbb  10.0"]


def test_bad_rows_and_formats_name_the_problem():
    with pytest.raises(ValueError, match=r"rows\[1\] has 1 cells, expected 2"):
        nlt.table([[1, 2], [3]], ["a", "b"])
    with pytest.raises(ValueError, match="formats names unknown columns"):
        nlt.table([[1]], ["a"], formats={"b": ".1f"})


def test_glue_writes_what_myst_nb_reads(monkeypatch):
    import IPython.display
    from myst_nb.ext.glue import GLUE_PREFIX

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw, metadata: shown.append((obj, metadata)))
    nlt.glue("gain", 1.25)
    nlt.glue("table", nlt.table([[1]], ["a"]), display=True)
    (hidden, meta), (visible, meta2) = shown
    assert nlt.tables.GLUE_PREFIX == GLUE_PREFIX
    assert hidden == {GLUE_PREFIX + "text/plain": "1.25"}
    assert meta["scrapbook"] == {"name": "gain", "mime_prefix": GLUE_PREFIX}
    assert "text/html" in visible and meta2["scrapbook"]["mime_prefix"] == ""
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        nlt.glue("", 1)
