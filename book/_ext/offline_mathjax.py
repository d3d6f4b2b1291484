"""Sphinx extension: serve MathJax 3 from the built book instead of a CDN.

The book must render its equations offline (CI has no internet, and readers may open a
downloaded copy). MathJax 3.2.2 comes from PyPI as ``django-static-mathjax`` (pinned in
requirements.txt); this extension copies the CommonHTML bundle and the files it loads on
demand (fonts, TeX extensions, menu) to ``_static/mathjax/`` and points ``mathjax_path``
there. Without that package the theme's default CDN MathJax is used.
"""

import shutil
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
BUNDLE = "tex-chtml.js"
# what tex-chtml.js loads lazily, relative to its own folder
LAZY = ("output/chtml/fonts/woff-v2", "input/tex/extensions", "ui", "a11y")


def mathjax_es5_dir():
    try:
        import mathjax  # django-static-mathjax
    except ImportError:
        return None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    return es5 if (es5 / BUNDLE).exists() else None


def use_local_mathjax(app, config):
    if mathjax_es5_dir() is None:
        logger.info("offline_mathjax: django-static-mathjax not installed, MathJax comes from its CDN")
        return
    config.mathjax_path = f"mathjax/{BUNDLE}"  # relative paths are relative to _static/


def copy_mathjax(app, exception):
    es5 = mathjax_es5_dir()
    if exception is not None or es5 is None or app.builder.format != "html":
        return
    target = Path(app.outdir) / "_static" / "mathjax"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(es5 / BUNDLE, target / BUNDLE)
    for sub in LAZY:
        shutil.copytree(es5 / sub, target / sub, dirs_exist_ok=True)
    shutil.copy2(es5.parent / "LICENSE", target / "LICENSE")


def setup(app):
    app.connect("config-inited", use_local_mathjax, priority=900)
    app.connect("build-finished", copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
