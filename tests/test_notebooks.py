"""Notebook conventions: pairing with book/, executed outputs, and the Colab setup cell.

nbval (configured in pyproject.toml) re-runs every notebook and compares its outputs; these
checks make sure there *are* stored outputs to compare, and that the notebook readers open in
Colab is the chapter the book shows.
"""

import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def chapter_sources():
    """book/*.md files that are notebooks (jupytext front matter with a kernelspec)."""
    out = []
    for md in sorted((ROOT / "book").glob("*.md")):
        text = md.read_text(encoding="utf-8")
        if text.startswith("---") and "kernelspec:" in text.split("---", 2)[1]:
            out.append(md)
    return out


def code_sources(nb):
    return [c.source.strip() for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"
    assert {p.stem for p in NOTEBOOKS} == {p.stem for p in chapter_sources()}


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_paired_with_identical_code(nb_path):
    md = ROOT / "book" / (nb_path.stem + ".md")
    assert md.exists(), f"{nb_path.name} has no source {md.relative_to(ROOT)}"
    nb = nbformat.read(nb_path, as_version=4)
    src = jupytext.read(md)
    assert code_sources(nb) == code_sources(src), (
        f"code of {nb_path.name} differs from {md.name}: run `jupytext --sync {md.relative_to(ROOT)}` "
        "and re-execute"
    )
    # markdown too: the notebook readers open in Colab says what the page says
    md_cells = lambda n: [c.source.strip() for c in n.cells if c.cell_type == "markdown"]
    assert md_cells(nb) == md_cells(src), f"markdown of {nb_path.name} differs from {md.name}"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_in_order_without_errors(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.get("execution_count") for c in cells]
    assert None not in counts, f"{nb_path.name}: {counts.count(None)} code cells were never executed"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{nb_path.name}: not executed top to bottom in a fresh kernel (execution counts {counts})"
    )
    for cell in cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{nb_path.name}: a cell raised {out.get('ename')}"
    with_output = sum(bool(c.get("outputs")) for c in cells)
    assert with_output >= len(cells) // 2, f"{nb_path.name}: most cells have no stored output"


def setup_cell(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code").source


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_installs_nltutorial_for_colab(nb_path, monkeypatch):
    code = setup_cell(nb_path)
    repo_url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert "drive.mount" not in code, "the setup cell must not mount Google Drive"

    # 1) nltutorial importable (local run, CI): the cell does nothing.
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: calls.append(a))
    exec(compile(code, "setup-cell", "exec"), {"__name__": "__main__"})
    assert calls == [], "the setup cell must not reinstall an importable nltutorial"

    # 2) nltutorial missing (fresh Colab runtime): one quiet pip install from the repository.
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nltutorial" else real_find_spec(name, *a)
    )
    exec(compile(code, "setup-cell", "exec"), {"__name__": "__main__"})
    assert len(calls) == 1, "the setup cell must install nltutorial exactly once"
    cmd = [str(x) for x in calls[0][0]]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"]
    assert "--quiet" in cmd or "-q" in cmd
    assert any(repo_url in arg for arg in cmd), f"install must come from {repo_url}"
    banned = {"torch", "--upgrade", "-U", "--force-reinstall", "--upgrade-strategy"}
    assert not banned & set(cmd), f"the setup cell must never (re)install torch: {cmd}"


#: Widest line of a fenced block (code cells, their YAML headers, text blocks) in book/*.md,
#: in UTF-8 bytes: 88 characters fit the book's code column at a 1280-px window, and counting
#: bytes keeps lines with θ, ², × well inside it.
MAX_FENCED_BYTES = 88


def fenced_lines(text):
    """(line number, line) of every line inside a ``` fence of a MyST file."""
    inside = False
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            inside = not inside if (line.strip() == "```" or not inside) else inside
            continue
        if inside:
            yield number, line


def test_fenced_lines_fit_the_code_column():
    text = "x = 1\n```python\nok = 1\n" + "y" * 89 + "\n```\n" + "z" * 100 + "\n"
    assert [n for n, l in fenced_lines(text) if len(l.encode()) > MAX_FENCED_BYTES] == [4]
    long = [f"{md.relative_to(ROOT)}:{n} ({len(l.encode())} bytes)"
            for md in sorted((ROOT / "book").glob("*.md"))
            for n, l in fenced_lines(md.read_text(encoding="utf-8"))
            if len(l.encode()) > MAX_FENCED_BYTES]
    assert not long, f"fenced lines over {MAX_FENCED_BYTES} bytes (they scroll sideways): {long}"
