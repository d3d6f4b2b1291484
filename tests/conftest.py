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


class LocalServer:
    """An HTTP server on 127.0.0.1 for the download tests (no network needed).

    ``files[name]`` is served at ``url(name)``; ``trickle[name]`` is served one byte every half
    second (a mirror that hangs); other names get 404. ``hits`` logs the requested paths;
    ``stop()`` closes the port, so that later requests are refused as without network.
    """

    def __init__(self, files=None):
        import http.server
        import threading

        self.files, self.trickle, self.hits = dict(files or {}), {}, []
        self._stop, self._stopped = threading.Event(), False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                name = self.path.lstrip("/")
                payload = server.files.get(name, server.trickle.get(name))
                if payload is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if name in server.files:
                    self.wfile.write(payload)
                    return
                for i in range(len(payload)):  # a trickle file: one byte every half second
                    if server._stop.wait(0.5):
                        return
                    try:
                        self.wfile.write(payload[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return

            def log_message(self, *args):
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def url(self, name: str) -> str:
        return self.base_url + name

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop.set()
            self._httpd.shutdown()
            self._httpd.server_close()


def largest_saved_tensor(module, x) -> int:
    """Elements of the largest tensor autograd saves for the backward of ``module(x).sum()``.

    Runs the backward too, so a path that saved a view it cannot use fails here. An N×N map
    kept for backward shows up as N·N elements.
    """
    import torch

    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        y = module(x)
    y.sum().backward()
    return max(sizes)


def assert_every_path_matches(module, x, reference, implementations) -> None:
    """``module(x)`` and its gradients (x and every parameter) equal ``reference(x, module)``
    for each value of ``module.implementation`` in ``implementations``; outputs contiguous."""
    import torch

    g = torch.randn(x.shape, dtype=x.dtype)
    wanted = [x, *module.parameters()]
    expected = torch.autograd.grad(reference(x, module), wanted, g)
    for implementation in implementations:
        module.implementation = implementation
        y = module(x)
        assert y.is_contiguous(), implementation
        torch.testing.assert_close(y, reference(x, module))
        for a, b in zip(torch.autograd.grad(y, wanted, g), expected):
            torch.testing.assert_close(a, b)
