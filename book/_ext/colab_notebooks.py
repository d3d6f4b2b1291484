"""Sphinx extension: point the "open in Colab" launch button at the executed notebook.

The chapters are written as MyST markdown in ``book/`` and paired by jupytext with an
executed ``.ipynb`` in ``notebooks/``. sphinx-book-theme builds its Colab link from the
page's own source file (``book/01_nl_means.md``), which Colab cannot open. This extension
runs after the theme on every page and rewrites that link to
``.../blob/<branch>/<colab_notebook_dir>/<name>.ipynb``.
"""

from pathlib import Path, PurePosixPath

from sphinx.util import logging

logger = logging.getLogger(__name__)
COLAB_PREFIX = "https://colab.research.google.com/github/"


def _launch_links(buttons):
    for button in buttons:
        if button.get("type") == "group":
            yield from _launch_links(button.get("buttons", []))
        elif button.get("type") == "link":
            yield button


def colab_url_for(url: str, pagename: str, notebook_dir: str) -> str:
    """Replace the file part of a Colab GitHub URL by ``notebook_dir/<page stem>.ipynb``."""
    # url = https://colab.research.google.com/github/<org>/<repo>/blob/<branch>/<path>
    head, sep, _ = url.partition("/blob/")
    branch_and_path = url[len(head) + len(sep):]
    branch = branch_and_path.split("/", 1)[0]
    stem = PurePosixPath(pagename).name
    return f"{head}/blob/{branch}/{notebook_dir.strip('/')}/{stem}.ipynb"


def rewrite_colab_link(app, pagename, templatename, context, doctree):
    notebook_dir = app.config.colab_notebook_dir
    stem = PurePosixPath(pagename).name
    notebook = Path(app.confdir) / notebook_dir / f"{stem}.ipynb"
    for button in _launch_links(context.get("header_buttons", [])):
        if button.get("url", "").startswith(COLAB_PREFIX):
            if not notebook.exists():
                logger.warning(f"{pagename}: no executed notebook {notebook_dir}/{stem}.ipynb for the Colab link")
            button["url"] = colab_url_for(button["url"], pagename, notebook_dir)


def setup(app):
    app.add_config_value("colab_notebook_dir", "notebooks", "html")
    # The theme adds its launch buttons at the default priority (500); run after it.
    app.connect("html-page-context", rewrite_colab_link, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
