"""The book's configuration, bibliography and the Colab links in the built HTML."""

import re
import sys

import pytest
import yaml

from conftest import ROOT, require_built_book

sys.path.insert(0, str(ROOT / "book" / "_ext"))
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
