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


def randomize_(module, seed=0):
    """Random weights and BatchNorm statistics, so that no zero-initialised term hides in a test.

    Returns the module in float64 eval mode.
    """
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    module = module.double().eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=torch.float64))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    return module
