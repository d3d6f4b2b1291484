"""Sphinx extension: drop duplicated <script> entries from each page.

With Jupyter Book 1 and sphinx-book-theme 1.3, the inline scripts that sphinx-thebe and
sphinx-togglebutton register end up twice in every page, and the second copy throws
``Identifier 'THEBE_JS_URL' has already been declared`` in the browser console. The browser
check fails on console errors, so each page keeps only the first copy of each script.
"""


def _key(script):
    # inline scripts have no file name (None or "", depending on who registered them) and
    # carry their code in attributes["body"]
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""
    return str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=1000)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
