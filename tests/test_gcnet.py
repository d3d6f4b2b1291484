"""Tests of nltutorial.gcnet.ContextBlock against eq. (4) of Cao et al., GCNet (ICCVW 2019)."""

import pytest
import torch
from torch import nn

from nltutorial.gcnet import ContextBlock

from conftest import randomize_




def ref_transform(c, t):
    """W_v2 ReLU(LN(W_v1 c)) for a context vector c of shape (C,); LN over the C/r values."""
    conv1, ln, _, conv2 = t
    u = conv1.weight[:, :, 0, 0] @ c + conv1.bias                      # (C/r,)
    u = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + ln.eps) * ln.weight.flatten() + ln.bias.flatten()
    return conv2.weight[:, :, 0, 0] @ torch.relu(u) + conv2.bias       # (C,)


def ref_gc(x, block):
    """z_i = x_i + W_v2 ReLU(LN(W_v1 Σ_j α_j x_j)), α_j = softmax_j(W_k x_j); loops over positions."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        a = x[n].flatten(1)                                            # (C, N)
        N = a.shape[1]
        if block.pooling == "attention":
            wk, bk = block.conv_mask.weight[0, :, 0, 0], block.conv_mask.bias[0]
            logits = torch.stack([wk @ a[:, j] + bk for j in range(N)])
            alpha = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
        else:
            alpha = torch.full((N,), 1.0 / N, dtype=x.dtype)
        c = sum(alpha[j] * a[:, j] for j in range(N))                  # (C,)
        z = x[n]
        if "mul" in block.fusion:
            z = z * torch.sigmoid(ref_transform(c, block.transform_mul))[:, None, None]
        if "add" in block.fusion:
            z = z + ref_transform(c, block.transform_add)[:, None, None]
        out[n] = z
    return out


@pytest.mark.parametrize("pooling", ["attention", "avg"])
@pytest.mark.parametrize("fusion", [("add",), ("mul",), ("mul", "add")])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 8, 1, 1)])
def test_matches_paper_equation(pooling, fusion, shape):
    block = randomize_(ContextBlock(8, rd_ratio=1 / 4, pooling=pooling, fusion=fusion))
    x = torch.randn(shape, dtype=torch.float64)
    y = block(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_gc(x, block))


def test_layout_and_init():
    block = ContextBlock(64)
    assert block.rd_channels == 4 and block.transform_mul is None
    assert block.conv_mask.out_channels == 1
    assert isinstance(block.transform_add[1], nn.LayerNorm) and block.transform_add[1].normalized_shape == (4, 1, 1)
    assert torch.count_nonzero(block.transform_add[-1].weight) == 0
    x = torch.randn(1, 64, 5, 7)
    assert torch.equal(block(x), x)                                    # add fusion: identity at init
    torch.testing.assert_close(ContextBlock(64, fusion="mul")(x), x / 2)   # σ(0) = 1/2
    alpha = block.attention(x)
    assert alpha.shape == (1, 1, 5, 7)
    torch.testing.assert_close(alpha.sum(), torch.tensor(1.0))
    torch.testing.assert_close(ContextBlock(64, pooling="avg").context(x), x.mean((2, 3), keepdim=True))


def test_gradcheck():
    block = randomize_(ContextBlock(4, rd_ratio=1 / 2, fusion=("add", "mul")))
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,))


def test_backward_and_bf16_autocast():
    block = ContextBlock(32, fusion=("mul", "add"), act_layer=lambda: nn.ReLU(inplace=True)).train()
    x = torch.randn(1, 32, 5, 7, requires_grad=True)
    block(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert block.transform_add[-1].weight.grad.abs().sum() > 0        # zero-init conv still learns
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(torch.randn(2, 32, 5, 7))
    assert torch.isfinite(y).all() and y.shape == (2, 32, 5, 7)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(channels=8), "channels"),
    (dict(channels=32, pooling="max"), "pooling"),
    (dict(channels=32, fusion=()), "fusion"),
    (dict(channels=32, fusion=("add", "add")), "fusion"),
    (dict(channels=32, fusion=("channel_add",)), "fusion"),
    (dict(channels=32, rd_ratio=0.0), "rd_ratio"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        ContextBlock(**kwargs)


def test_bad_input():
    for bad in (torch.randn(32, 5, 5), torch.randn(1, 16, 5, 5), torch.randn(1, 32, 5, 5, 1)):
        with pytest.raises(ValueError, match="x must"):
            ContextBlock(32)(bad)
