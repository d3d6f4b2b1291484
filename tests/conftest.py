"""Shared paths and the rule for tests that need the built book."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_HTML = ROOT / "_build" / "html"


def require_built_book() -> Path:
    """Return ``_build/html``; skip when it is missing, or fail under NLTUTORIAL_REQUIRE_BUILD=1 (CI)."""
    if (BUILD_HTML / "index.html").exists():
        return BUILD_HTML
    message = "book not built: run `jupyter-book build .` first"
    if os.environ.get("NLTUTORIAL_REQUIRE_BUILD") == "1":
        pytest.fail(message + " (NLTUTORIAL_REQUIRE_BUILD=1)")
    pytest.skip(message)
