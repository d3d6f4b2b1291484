"""Sphinx extension: execute again, on the next build, every page whose notebook execution failed.

With ``execute_notebooks: cache``, myst-nb stores a notebook in the jupyter-cache only when it
executed without error; a failed execution (a cell that raised or timed out) leaves no cache
entry, only a traceback in ``_build/html/reports/<page>.err.log``. The cache is therefore not
what keeps a failure: Sphinx's incremental build is. Sphinx reads a page again only when its
source changed, so on the next ``jupyter-book build`` an unchanged chapter is not read, not
executed, and its half-executed page from the failed build stays in ``_build/html`` while the
build prints "build succeeded".

myst-nb records the outcome of each page's execution in the Sphinx environment
(``env.nb_metadata[page]["exec_data"]["succeeded"]``). This extension

* names every page whose last execution failed as outdated (``env-get-outdated``), so that
  Sphinx reads it again and myst-nb, finding no cache entry, executes it again;
* deletes a page's old ``reports/<page>.err.log`` once the page has been executed (or taken
  from the cache) successfully, so that the reports folder only holds current failures.
"""

from __future__ import annotations

from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)


def failed_pages(env) -> list[str]:
    """Pages (docnames) whose last notebook execution, as myst-nb recorded it, did not succeed."""
    metadata = getattr(env, "nb_metadata", None) or {}
    return sorted(
        page for page, data in metadata.items()
        if (data.get("exec_data") or {}).get("succeeded") is False
    )


def report_path(outdir, page: str) -> Path:
    """Where myst-nb writes the traceback of a failed execution of ``page``."""
    return Path(outdir, "reports", *(page + ".err.log").split("/"))


def reread_failed(app, env, added, changed, removed) -> list[str]:
    """``env-get-outdated``: the pages to read (and so execute) again although their source is unchanged."""
    pages = [p for p in failed_pages(env) if p in env.found_docs and p not in removed]
    if pages:
        logger.info(f"[rerun_failed] executing again, their last execution failed: {', '.join(pages)}")
    return pages


def remove_stale_report(app, doctree) -> None:
    """``doctree-read``: drop the error log of a page that has now executed successfully."""
    env = app.env
    data = (getattr(env, "nb_metadata", None) or {}).get(env.docname, {}).get("exec_data") or {}
    if data.get("succeeded") is True:
        report_path(app.outdir, env.docname).unlink(missing_ok=True)


def setup(app):
    app.connect("env-get-outdated", reread_failed)
    app.connect("doctree-read", remove_stale_report)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
