"""Tests of nltutorial.se.SqueezeExcite against the equations of Hu, Shen & Sun (CVPR 2018)."""

import pytest
import torch
from torch import nn

from nltutorial._utils import make_divisible, reduced_channels
from nltutorial.se import SqueezeExcite

from conftest import randomize_




def ref_se(x, W1, b1, W2, b2):
    """Eq. (2)-(4) with loops over the batch: z = mean, s = σ(W2 δ(W1 z + b1) + b2), x̃_c = s_c x_c."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        z = torch.stack([x[n, c].sum() / x[n, c].numel() for c in range(x.shape[1])])   # (C,)
        s = torch.sigmoid(W2 @ torch.relu(W1 @ z + b1) + b2)                              # (C,)
        for c in range(x.shape[1]):
            out[n, c] = s[c] * x[n, c]
    return out


@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 16, 1, 1), (1, 16, 6, 3)])
def test_matches_paper_equation(shape):
    se = randomize_(SqueezeExcite(16, rd_ratio=1 / 4))
    x = torch.randn(shape, dtype=torch.float64)
    W1, W2 = se.fc1.weight[:, :, 0, 0], se.fc2.weight[:, :, 0, 0]
    torch.testing.assert_close(se(x), ref_se(x, W1, se.fc1.bias, W2, se.fc2.bias))
    assert se(x).shape == x.shape


def test_widths():
    assert SqueezeExcite(64).rd_channels == 4                       # C / 16
    assert SqueezeExcite(64, rd_ratio=1 / 8).fc1.out_channels == 8
    assert SqueezeExcite(24, rd_ratio=1 / 4, rd_divisor=8).rd_channels == 8
    assert SqueezeExcite(24, rd_channels=5).rd_channels == 5
    assert make_divisible(6, 8) == 8 and make_divisible(1.5, 1) == 2 and reduced_channels(48, 1 / 16) == 3


def test_act_and_gate_layers():
    se = randomize_(SqueezeExcite(8, rd_ratio=1 / 2, act_layer=nn.GELU, gate_layer=nn.Hardsigmoid))
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    s = nn.functional.hardsigmoid(se.fc2(nn.functional.gelu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * s)


def test_gradcheck():
    se = randomize_(SqueezeExcite(4, rd_ratio=1 / 2))
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(se, (x,))


def test_backward_and_bf16_autocast():
    se = SqueezeExcite(32, act_layer=lambda: nn.ReLU(inplace=True)).train()
    x = torch.randn(1, 32, 5, 7, requires_grad=True)
    se(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and se.fc1.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = se(torch.randn(2, 32, 5, 7))
    assert y.shape == (2, 32, 5, 7) and torch.isfinite(y).all()


@pytest.mark.parametrize("kwargs, arg", [
    (dict(channels=8), "channels"),                     # 8 < r = 16: empty bottleneck
    (dict(channels=0), "channels"),
    (dict(channels=16, rd_ratio=0), "rd_ratio"),
    (dict(channels=16, rd_ratio=2.0), "rd_ratio"),
    (dict(channels=16, rd_divisor=0), "rd_divisor"),
    (dict(channels=16, rd_channels=0), "rd_channels"),
    (dict(channels=16, act_layer="relu"), "act_layer"),
    (dict(channels=16, gate_layer=3), "gate_layer"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        SqueezeExcite(**kwargs)


@pytest.mark.parametrize("x", [torch.randn(2, 16, 5), torch.randn(2, 8, 5, 5), torch.randn(16, 5, 5),
                               torch.zeros(2, 16, 5, 5, dtype=torch.long), [1.0]])
def test_bad_input(x):
    with pytest.raises(ValueError, match=r"x must"):
        SqueezeExcite(16)(x)
