"""The book's configuration, bibliography, the Colab links and the executed outputs in the built HTML,
the re-execution of failed pages (book/_ext/rerun_failed.py), and the README's commands as CI runs them."""

import html.parser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import yaml

from conftest import ROOT, require_built_book

sys.path.insert(0, str(ROOT / "book" / "_ext"))
import rerun_failed  # noqa: E402
from colab_notebooks import colab_url_for  # noqa: E402

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def toc_files():
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_config_points_at_the_repository():
    repo = CONFIG["repository"]
    assert repo["url"].startswith("https://github.com/")
    assert repo["branch"] == "main"
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert CONFIG["sphinx"]["config"]["colab_notebook_dir"] == "notebooks"


def test_toc_lists_every_chapter_and_only_existing_files():
    files = toc_files()
    for f in files:
        assert (ROOT / f"{f}.md").exists(), f"_toc.yml names {f}, which does not exist"
    for stem in CHAPTERS:
        assert f"book/{stem}" in files, f"chapter {stem} is not in _toc.yml"


def test_bibliography_has_the_papers_of_the_book():
    from pybtex.database import parse_file

    keys = set(parse_file(ROOT / "book" / "references.bib").entries)
    needed = {
        "buades2005nonlocal", "wang2018nonlocal", "hu2018senet", "woo2018cbam", "park2018bam",
        "fu2019danet", "zhang2019sagan", "cao2019gcnet", "hu2019localrelation", "he2016resnet",
    }
    assert needed <= keys, f"missing from references.bib: {sorted(needed - keys)}"
    assert "book/references.bib" in CONFIG["bibtex_bibfiles"]


def test_every_citation_resolves():
    from pybtex.database import parse_file

    keys = set(parse_file(ROOT / "book" / "references.bib").entries)
    for md in (ROOT / "book").glob("*.md"):
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", md.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{md.name} cites unknown key {key!r}"


def test_chapter_one_cites_buades():
    assert "{cite}`buades2005nonlocal`" in (ROOT / "book" / "01_nl_means.md").read_text()


def test_colab_url_rewrite():
    url = "https://colab.research.google.com/github/org/repo/blob/main/book/01_nl_means.md"
    assert colab_url_for(url, "book/01_nl_means", "notebooks") == (
        "https://colab.research.google.com/github/org/repo/blob/main/notebooks/01_nl_means.ipynb"
    )


@pytest.mark.parametrize("stem", CHAPTERS)
def test_built_page_opens_the_executed_notebook_in_colab(stem):
    html_dir = require_built_book()
    page = html_dir / "book" / f"{stem}.html"
    assert page.exists(), f"{page} was not built"
    html = page.read_text(encoding="utf-8")
    colab = re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html)
    org_repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    expected = (
        f"https://colab.research.google.com/github/{org_repo}/blob/"
        f"{CONFIG['repository']['branch']}/notebooks/{stem}.ipynb"
    )
    assert colab == [expected], f"Colab links on {page.name}: {colab}"


def test_built_bibliography_lists_buades():
    html_dir = require_built_book()
    text = (html_dir / "book" / "bibliography.html").read_text(encoding="utf-8")
    assert "A non-local algorithm for image denoising" in text
    chapter = (html_dir / "book" / "01_nl_means.html").read_text(encoding="utf-8")
    assert 'href="bibliography.html#id' in chapter, "chapter 1's citation does not link to the bibliography"


# --------------------------------------------------------------------------- executed outputs on the pages

GLUE_MIME = "application/papermill.record/"  # glue records: stored in the notebook, not shown


class RenderedCells(html.parser.HTMLParser):
    """The code cells myst-nb rendered on a page (``<div class="cell ...">``), in order.

    ``cells[k]`` is a dict: ``tags`` (the cell's ``tag_*`` classes), ``output`` (it has a
    ``cell_output`` area) and ``traceback`` (an error output is shown).
    """

    def __init__(self, page: str):
        super().__init__()
        self.cells: list[dict] = []
        self._open: list[bool] = []  # one entry per open <div>: is it a cell?
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag != "div":
            return
        classes = (dict(attrs).get("class") or "").split()
        inside = any(self._open)
        if "cell" in classes and not inside:
            tags = [c[len("tag_"):] for c in classes if c.startswith("tag_")]
            self.cells.append({"tags": tags, "output": False, "traceback": False})
            self._open.append(True)
            return
        self._open.append(False)
        if inside and "cell_output" in classes:
            self.cells[-1]["output"] = True
        if inside and "output" in classes and "traceback" in classes:
            self.cells[-1]["traceback"] = True

    def handle_endtag(self, tag):
        if tag == "div" and self._open:
            self._open.pop()


def shows_output(cell) -> bool:
    """Whether the page should show an output area for this executed notebook cell.

    The build removes stderr (``stderr_output: remove-warn``), glue records and the outputs of
    ``remove-output`` cells; stdout, errors and every other display are shown.
    """
    if "remove-output" in cell.metadata.get("tags", []):
        return False
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.get("name") == "stdout":
            return True
        if out.output_type == "error":
            return True
        if any(not mime.startswith(GLUE_MIME) for mime in out.get("data", {})):
            return True
    return False


def rendered_code_cells(nb):
    """The notebook's code cells that myst-nb puts on the page: not empty, not ``remove-cell``."""
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()
            and "remove-cell" not in c.metadata.get("tags", [])]


def page_output_problems(page: str, nb) -> list[str]:
    """What the built ``page`` lacks of the executed notebook ``nb``: one line per problem.

    A half-executed page (its build's execution failed or timed out) has cells without the
    output area the executed notebook has, or shows the traceback of the failure.
    """
    rendered = RenderedCells(page).cells
    expected = rendered_code_cells(nb)
    if len(rendered) != len(expected):
        return [f"the page shows {len(rendered)} code cells, the notebook has {len(expected)}"]
    problems = []
    for k, (shown, cell) in enumerate(zip(rendered, expected), start=1):
        first_line = cell.source.strip().splitlines()[0][:60]
        if shows_output(cell) and not shown["output"]:
            problems.append(f"code cell {k} ({first_line!r}) has no output on the page; the notebook has")
        if shown["traceback"]:
            problems.append(f"code cell {k} ({first_line!r}) shows a traceback on the page")
    return problems


def execution_error_logs(html_dir: Path) -> list[Path]:
    """The tracebacks myst-nb saved of failed executions: ``reports/<page>.err.log``."""
    reports = html_dir / "reports"
    return sorted(reports.rglob("*.log")) if reports.is_dir() else []


@pytest.mark.parametrize("stem", CHAPTERS)
def test_built_page_shows_the_outputs_of_its_notebook(stem):
    html_dir = require_built_book()
    page = html_dir / "book" / f"{stem}.html"
    assert page.exists(), f"{page} was not built"
    nb = nbformat.read(ROOT / "notebooks" / f"{stem}.ipynb", as_version=4)
    problems = page_output_problems(page.read_text(encoding="utf-8"), nb)
    assert not problems, (
        f"{page.relative_to(ROOT)} lacks outputs of notebooks/{stem}.ipynb (did its execution fail "
        f"or time out during the build? see _build/html/reports/):\n  " + "\n  ".join(problems))


def test_build_left_no_execution_error_log():
    html_dir = require_built_book()
    logs = execution_error_logs(html_dir)
    lines = []
    for log in logs:
        text = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        lines.append(f"{log.relative_to(ROOT)}: {text[-1] if text else '(empty)'}")
    assert not logs, "notebook execution failed during the book build:\n  " + "\n  ".join(lines)


# A notebook executed the way the build sees it, and the page myst-nb makes of it.
def _notebook():
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output
    cells = [
        ("print('a')", [out("stream", name="stdout", text="a\n")], []),
        ("glue('x', 1, display=False)", [out("display_data", data={GLUE_MIME + "text/plain": "1"})], []),
        ("print('hidden')", [out("stream", name="stdout", text="hidden\n")], ["remove-output"]),
        ("warn()", [out("stream", name="stderr", text="w\n")], []),
        ("", [], []),  # empty: not rendered
        ("print('gone')", [out("stream", name="stdout", text="gone\n")], ["remove-cell"]),
        ("fig", [out("display_data", data={"image/png": "iVBO", "text/plain": "<Figure>"})], ["hide-input"]),
    ]
    for source, outputs, tags in cells:
        nb.cells.append(nbformat.v4.new_code_cell(source, outputs=outputs, metadata={"tags": tags}))
    return nb


def _page(*cells):
    """HTML in myst-nb's layout; each cell is (tags, output_class or None)."""
    body = []
    for tags, output in cells:
        classes = " ".join(["cell", *(f"tag_{t}" for t in tags), "docutils", "container"])
        body.append(f'<div class="{classes}">\n<div class="cell_input docutils container">'
                    f'<div class="highlight"><pre>code</pre></div></div>')
        if output:
            body.append(f'<div class="cell_output docutils container"><div class="output {output}">'
                        f'<div class="highlight"><pre>x</pre></div></div></div>')
        body.append("</div>")
    return "<html><body><section>" + "\n".join(body) + "</section></body></html>"


FULL_PAGE = [([], "stream"), ([], None), (["remove-output"], None), ([], None), (["hide-input"], "image")]


def test_page_checker_accepts_a_fully_executed_page():
    assert [len(c["tags"]) for c in RenderedCells(_page(*FULL_PAGE)).cells] == [0, 0, 1, 0, 1]
    assert page_output_problems(_page(*FULL_PAGE), _notebook()) == []


def test_page_checker_finds_a_half_executed_page():
    # the figure cell timed out: no output area
    half = FULL_PAGE[:-1] + [(["hide-input"], None)]
    assert page_output_problems(_page(*half), _notebook()) == [
        "code cell 5 ('fig') has no output on the page; the notebook has"]
    # the first cell shows the error of a failed execution
    failed = [([], "traceback highlight-ipythontb")] + FULL_PAGE[1:]
    assert page_output_problems(_page(*failed), _notebook()) == [
        "code cell 1 (\"print('a')\") shows a traceback on the page"]
    assert page_output_problems(_page(*FULL_PAGE[:3]), _notebook()) == [
        "the page shows 3 code cells, the notebook has 5"]


def test_execution_error_logs_are_found(tmp_path):
    assert execution_error_logs(tmp_path) == []
    log = tmp_path / "reports" / "book" / "07_training_cifar10.err.log"
    log.parent.mkdir(parents=True)
    log.write_text("CellTimeoutError: A cell timed out\n")
    assert execution_error_logs(tmp_path) == [log]


# --------------------------------------------------------------------------- re-executing failed pages


def test_execution_settings():
    execute = CONFIG["execute"]
    assert execute["execute_notebooks"] == "cache" and execute["allow_errors"] is False
    # a margin for a loaded machine (one-minute cells 10x slower), still bounded for a real hang
    assert execute["timeout"] == 1800
    assert CONFIG["sphinx"]["local_extensions"]["rerun_failed"] == "book/_ext"


def test_rerun_failed_names_the_pages_whose_execution_failed():
    env = SimpleNamespace(found_docs={"book/a", "book/b", "book/c", "intro"}, nb_metadata={
        "book/a": {"exec_data": {"succeeded": False, "error": "CellTimeoutError"}},
        "book/b": {"exec_data": {"succeeded": True}},
        "book/c": {},  # not a notebook
        "book/gone": {"exec_data": {"succeeded": False}},  # no longer in the book
    })
    assert rerun_failed.failed_pages(env) == ["book/a", "book/gone"]
    assert rerun_failed.reread_failed(None, env, set(), set(), set()) == ["book/a"]
    assert rerun_failed.reread_failed(None, env, set(), set(), {"book/a"}) == []
    assert rerun_failed.reread_failed(None, SimpleNamespace(found_docs=set()), set(), set(), set()) == []


@pytest.mark.parametrize("succeeded, kept", [(True, False), (False, True), (None, True)])
def test_rerun_failed_removes_the_error_log_only_after_a_success(tmp_path, succeeded, kept):
    log = tmp_path / "reports" / "book" / "a.err.log"
    log.parent.mkdir(parents=True)
    log.write_text("traceback")
    data = {} if succeeded is None else {"exec_data": {"succeeded": succeeded}}
    app = SimpleNamespace(outdir=str(tmp_path), env=SimpleNamespace(docname="book/a", nb_metadata={"book/a": data}))
    assert rerun_failed.report_path(app.outdir, "book/a") == log
    rerun_failed.remove_stale_report(app, None)
    assert log.exists() == kept


TINY_CHAPTER = """---
jupytext:
  text_representation: {{extension: .md, format_name: myst}}
kernelspec: {{display_name: Python 3, language: python, name: python3}}
---

# Tiny chapter

```{{code-cell}} ipython3
print("first")
```

```{{code-cell}} ipython3
import os, time
if os.path.exists({flag!r}):
    time.sleep(120)  # the "hang": longer than the timeout of this book
print("second")
```
"""


def _jupyter_book():
    here = Path(sys.executable).with_name("jupyter-book")
    return str(here) if here.exists() else shutil.which("jupyter-book")


def test_a_failed_execution_is_executed_again_by_the_next_build(tmp_path):
    """A cell times out; the next build (same sources) must execute the chapter again."""
    jb = _jupyter_book()
    if jb is None:
        pytest.skip("jupyter-book is not installed")
    book, flag = tmp_path / "book", tmp_path / "HANG"
    book.mkdir()
    config = {
        "title": "tiny", "only_build_toc_files": True, "exclude_patterns": ["_build"],
        "execute": {**CONFIG["execute"], "timeout": 3},
        "sphinx": {"local_extensions": {"rerun_failed": str(ROOT / "book" / "_ext")},
                   "config": {"nb_execution_show_tb": True}},
    }
    (book / "_config.yml").write_text(yaml.safe_dump(config))
    (book / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n")
    (book / "intro.md").write_text("# Tiny book\n")
    (book / "chapter.md").write_text(TINY_CHAPTER.format(flag=str(flag)))
    cmd = [jb, "build", str(book), "-W", "-n", "--keep-going"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    html_dir, log = book / "_build" / "html", book / "_build" / "html" / "reports" / "chapter.err.log"

    flag.touch()
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode != 0, first.stdout + first.stderr
    assert log.exists() and "CellTimeoutError" in log.read_text()
    half_page = (html_dir / "chapter.html").read_text(encoding="utf-8")

    flag.unlink()  # the machine is no longer loaded: the same sources now execute in time
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    page = (html_dir / "chapter.html").read_text(encoding="utf-8")
    assert "second" in page.split('class="cell_output', 2)[-1], "the chapter was not executed again"
    assert "[rerun_failed] executing again, their last execution failed: chapter" in second.stdout
    assert "build succeeded" in second.stdout
    assert not log.exists(), "the error log of the failed build was not removed after the success"
    assert execution_error_logs(html_dir) == []

    # The page checker tells the two pages apart, against the executed notebook of the build.
    executed = nbformat.read(book / "_build" / "jupyter_execute" / "chapter.ipynb", as_version=4)
    assert page_output_problems(page, executed) == []
    assert page_output_problems(half_page, executed) == [
        "code cell 2 ('import os, time') shows a traceback on the page"]


# --------------------------------------------------------------------------- the README's commands, as CI runs them

README = (ROOT / "README.md").read_text(encoding="utf-8")
CI_RUN = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    """The two commands of the README's quick start: install + build, then the tests."""
    section = README.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [block.strip() for block in blocks[:2]]


def test_readme_commands_use_a_virtual_environment():
    install_and_build, tests = quick_start_commands()
    # Debian/Ubuntu's system Python refuses `pip install` (externally-managed-environment)
    assert install_and_build == (
        "python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.txt"
        " && .venv/bin/jupyter-book build . -W -n --keep-going")
    assert tests == ".venv/bin/python -m pytest"
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_ci_runs_the_readme_commands_verbatim():
    lines = [line.strip() for line in CI_RUN.splitlines()]
    code = [line for line in lines if line and not line.startswith("#")]
    install_and_build, tests = quick_start_commands()
    assert install_and_build in code, f".ci/run does not run the README's command: {install_and_build}"
    assert tests in code, f".ci/run does not run the README's command: {tests}"
    assert code.index(install_and_build) < code.index(tests)
    check = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_pytest_collects_nothing_under_venv_or_build(tmp_path):
    """`pytest` and `pytest .` collect the project's tests, never a virtual environment's or _build's."""
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "notebooks").mkdir()
    for name in ("pyproject.toml", "nbval_sanitize.cfg"):
        shutil.copy(ROOT / name, project / name)
    (project / "tests" / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    for folder in (".venv/lib/python3.11/site-packages/pkg", "venv/lib", "_build/jupyter_execute/book"):
        (project / folder).mkdir(parents=True)
        (project / folder / "test_bad.py").write_text("def test_bad():\n    assert False\n")
        nbformat.write(nb, project / folder / "bad.ipynb")
    for args in ([], ["."]):
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], cwd=project,
                              capture_output=True, text=True, timeout=300)
        collected = [line for line in proc.stdout.splitlines() if "::" in line]
        assert proc.returncode == 0 and collected == ["tests/test_ok.py::test_ok"], (
            f"pytest {' '.join(args)}:\n{proc.stdout}{proc.stderr}")
