import numpy as np
import pytest
import torch

from nltutorial.verify import assert_close


def test_assert_close_passes_and_prints_the_verdict(capsys):
    assert assert_close("x", np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-7]), atol=1e-6) is None
    assert capsys.readouterr().out == "x: max |difference| ≤ 1e-06  ✓\n"


def test_assert_close_accepts_tensors_and_relative_tolerance(capsys):
    assert_close("t", torch.tensor([100.0]), torch.tensor([100.001]), atol=0.0, rtol=1e-4)
    assert "0.0001·|expected|" in capsys.readouterr().out


def test_assert_close_fails_with_the_difference():
    with pytest.raises(AssertionError, match="x: max \\|difference\\| = 1.000e-03"):
        assert_close("x", [0.0], [1e-3], atol=1e-5)
    with pytest.raises(ValueError, match="actual"):
        assert_close("x", [0.0, 1.0], [0.0], atol=1e-5)
