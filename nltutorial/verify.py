"""Numerical checks that the chapters print.

A chapter verifies each formula against an independent computation. Printing the raw
difference (``3.1e-07``) would make the notebook's stored output depend on the CPU's float
rounding, so the chapters print the tolerance that was met, and a failed check stops the
notebook with the actual difference.
"""

from __future__ import annotations

import numpy as np


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(name: str, actual, expected, *, atol: float = 1e-5, rtol: float = 0.0) -> None:
    """Check |actual − expected| ≤ atol + rtol·|expected| elementwise and print the verdict.

    Raises AssertionError (with the largest difference) when the check fails. Returns None,
    so that a call ending a notebook cell displays nothing but the printed verdict.
    """
    a, b = _as_numpy(actual), _as_numpy(expected)
    if a.shape != b.shape:
        raise ValueError(f"actual must have the shape of expected {b.shape}, got {a.shape}")
    diff = np.abs(a - b)
    bound = atol + rtol * np.abs(b)
    worst = float(diff.max()) if diff.size else 0.0
    if not np.all(diff <= bound):
        raise AssertionError(f"{name}: max |difference| = {worst:.3e} exceeds atol={atol:g}, rtol={rtol:g}")
    tol = f"{atol:g}" if rtol == 0 else f"{atol:g} + {rtol:g}·|expected|"
    print(f"{name}: max |difference| ≤ {tol}  ✓")
