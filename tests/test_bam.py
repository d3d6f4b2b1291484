"""Tests of nltutorial.bam against the equations of Park et al., BAM (BMVC 2018)."""

import pytest
import torch
from torch import nn

from nltutorial.bam import BAM, ChannelBranch, SpatialBranch

from conftest import randomize_




def ref_bn(x, bn):
    """Inference BatchNorm on a (C, ...) tensor, channel by channel."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def ref_conv(x, conv):
    """'Same' convolution of one image (Cin, H, W) by summing shifted, zero-padded copies."""
    w, d = conv.weight, conv.dilation[0]
    k = w.shape[-1]
    p = d * (k // 2)
    C, H, W = x.shape
    xp = torch.zeros(C, H + 2 * p, W + 2 * p, dtype=x.dtype)
    xp[:, p:p + H, p:p + W] = x
    y = conv.bias.view(-1, 1, 1).expand(w.shape[0], H, W).clone()
    for u in range(k):
        for v in range(k):
            y = y + torch.einsum("oc,chw->ohw", w[:, :, u, v], xp[:, u * d:u * d + H, v * d:v * d + W])
    return y


def ref_bam(x, bam, layout, combine):
    ch, sp = bam.channel, bam.spatial
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        f = x[n]                                                        # (C, H, W)
        z = f.mean(dim=(1, 2))                                          # (C,) AvgPool
        W0, b0 = ch.fc1.weight[:, :, 0, 0], ch.fc1.bias
        W1, b1 = ch.fc2.weight[:, :, 0, 0], ch.fc2.bias
        if layout == "paper":                                           # BN(W1 δ(W0 z + b0) + b1)
            mc = ref_bn(W1 @ torch.relu(W0 @ z + b0) + b1, ch.bn2)
        else:                                                           # W1 δ(BN(W0 z + b0)) + b1
            mc = W1 @ torch.relu(ref_bn(W0 @ z + b0, ch.bn1)) + b1
        s = f
        for conv, bn in zip(sp.convs, sp.norms):                        # f0, f1, f2 with BN + ReLU
            s = torch.relu(ref_bn(ref_conv(s, conv), bn))
        ms = ref_conv(s, sp.conv_final)                                 # (1, H, W)
        if layout == "paper":
            ms = ref_bn(ms, sp.bn_final)
        m = torch.sigmoid(mc[:, None, None] + ms if combine == "sum" else mc[:, None, None] * ms)
        out[n] = f + f * m                                              # F' = F + F ⊗ M(F)
    return out


@pytest.mark.parametrize("layout", ["paper", "official"])
@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 8, 3, 2)])
def test_matches_paper_equation(layout, combine, shape):
    bam = randomize_(BAM(8, rd_ratio=1 / 4, dilation=2, bn_layout=layout, combine=combine))
    x = torch.randn(shape, dtype=torch.float64)
    y = bam(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_bam(x, bam, layout, combine))


def test_layout_defaults():
    bam = BAM(64)
    assert isinstance(bam.channel, ChannelBranch) and isinstance(bam.spatial, SpatialBranch)
    assert bam.channel.rd_channels == 4 and bam.spatial.dilation == 4
    assert [c.dilation for c in bam.spatial.convs] == [(1, 1), (4, 4), (4, 4)]
    assert isinstance(bam.channel.bn2, nn.BatchNorm2d) and isinstance(bam.spatial.bn_final, nn.BatchNorm2d)
    official = BAM(64, bn_layout="official")
    assert isinstance(official.channel.bn1, nn.BatchNorm2d) and isinstance(official.spatial.bn_final, nn.Identity)
    x = torch.randn(2, 64, 5, 7)
    assert bam.channel(x).shape == (2, 64, 1, 1) and bam.spatial(x).shape == (2, 1, 5, 7)
    assert bam.attention(x).shape == (2, 64, 5, 7)


def test_gradcheck():
    bam = randomize_(BAM(4, rd_ratio=1 / 2, dilation=1))
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bam, (x,))


def test_training_backward_and_bf16_autocast():
    bam = BAM(32, act_layer=lambda: nn.ReLU(inplace=True)).train()
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    bam(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and bam.channel.fc1.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bam(torch.randn(2, 32, 5, 7))
    assert torch.isfinite(y).all() and y.shape == (2, 32, 5, 7)


def test_batch_of_one():
    bam = BAM(32).eval()
    x = torch.randn(1, 32, 5, 7)
    assert bam(x).shape == x.shape
    with pytest.raises(ValueError, match="batch of at least 2"):
        bam.train()(x)                         # BN over (1, C, 1, 1) descriptors is undefined


@pytest.mark.parametrize("kwargs, arg", [
    (dict(channels=8), "channels"),
    (dict(channels=32, dilation=0), "dilation"),
    (dict(channels=32, bn_layout="timm"), "bn_layout"),
    (dict(channels=32, combine="max"), "combine"),
    (dict(channels=32, rd_ratio=3), "rd_ratio"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        BAM(**kwargs)


def test_bad_input():
    for bad in (torch.randn(2, 32, 5), torch.randn(2, 16, 5, 5)):
        with pytest.raises(ValueError, match="x must"):
            BAM(32).eval()(bad)
