"""Tests of nltutorial.cbam against the equations of Woo et al., CBAM (ECCV 2018)."""

import pytest
import torch
from torch import nn

from nltutorial.cbam import CBAM, ChannelGate, SpatialGate

from conftest import randomize_




def ref_conv_same(x, w, b):
    """Single-output 'same' convolution by summing shifted copies: y = Σ_{c,u,v} w[c,u,v] x_pad[c, i+u, j+v] + b."""
    k = w.shape[-1]
    r = k // 2
    xp = torch.zeros(x.shape[0], x.shape[1] + 2 * r, x.shape[2] + 2 * r, dtype=x.dtype)
    xp[:, r:r + x.shape[1], r:r + x.shape[2]] = x
    y = torch.zeros(x.shape[1:], dtype=x.dtype) + (0 if b is None else b)
    for c in range(x.shape[0]):
        for u in range(k):
            for v in range(k):
                y = y + w[c, u, v] * xp[c, u:u + x.shape[1], v:v + x.shape[2]]
    return y


def ref_cbam(x, cbam, order="avg_max"):
    """Eq. (1)-(3), one image at a time."""
    cg, sg = cbam.channel_gate, cbam.spatial_gate
    W0, b0 = cg.fc1.weight[:, :, 0, 0], cg.fc1.bias
    W1, b1 = cg.fc2.weight[:, :, 0, 0], cg.fc2.bias
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        f = x[n]                                                       # (C, H, W)
        avg, mx = f.mean(dim=(1, 2)), f.flatten(1).max(dim=1).values   # (C,)
        mlp = lambda z: W1 @ torch.relu(W0 @ z + b0) + b1
        mc = torch.sigmoid(mlp(avg) + mlp(mx))                         # (C,)
        f1 = mc[:, None, None] * f                                     # F' = M_c ⊗ F
        a, m = f1.mean(dim=0), f1.max(dim=0).values                    # (H, W)
        pooled = torch.stack([a, m] if order == "avg_max" else [m, a])
        s = ref_conv_same(pooled, sg.conv.weight[0], sg.conv.bias[0] if sg.conv.bias is not None else None)
        if sg.spatial_bn:
            bn = sg.bn
            s = (s - bn.running_mean[0]) / torch.sqrt(bn.running_var[0] + bn.eps) * bn.weight[0] + bn.bias[0]
        out[n] = torch.sigmoid(s)[None] * f1                           # F'' = M_s ⊗ F'
    return out


@pytest.mark.parametrize("spatial_bn, order", [(False, "avg_max"), (True, "max_avg"), (True, "avg_max")])
@pytest.mark.parametrize("shape, k", [((2, 8, 5, 7), 7), ((1, 8, 4, 3), 3), ((1, 8, 1, 1), 7)])
def test_matches_paper_equation(spatial_bn, order, shape, k):
    cbam = randomize_(CBAM(8, rd_ratio=1 / 4, kernel_size=k, spatial_bn=spatial_bn, spatial_order=order))
    x = torch.randn(shape, dtype=torch.float64)
    y = cbam(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_cbam(x, cbam, order))


def test_gates_alone_and_layout():
    cbam = CBAM(32)
    assert cbam.channel_gate.rd_channels == 2
    assert cbam.spatial_gate.conv.weight.shape == (1, 2, 7, 7) and cbam.spatial_gate.conv.padding == (3, 3)
    assert cbam.spatial_gate.conv.bias is not None                     # paper: no BN, conv with bias
    official = CBAM(32, spatial_bn=True)
    assert official.spatial_gate.conv.bias is None and isinstance(official.spatial_gate.bn, nn.BatchNorm2d)
    x = torch.randn(2, 32, 5, 7)
    cg, sg = cbam.channel_gate, cbam.spatial_gate
    torch.testing.assert_close(cg(x), x * cg.attention(x))
    torch.testing.assert_close(sg(x), x * sg.attention(x))
    torch.testing.assert_close(cbam(x), sg(cg(x)))
    assert cg.attention(x).shape == (2, 32, 1, 1) and sg.attention(x).shape == (2, 1, 5, 7)


def test_gradcheck():
    for spatial_bn in (False, True):
        cbam = randomize_(CBAM(4, rd_ratio=1 / 2, kernel_size=3, spatial_bn=spatial_bn))
        x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(cbam, (x,))


def test_backward_batch_one_and_bf16_autocast():
    cbam = CBAM(32, spatial_bn=True, act_layer=lambda: nn.ReLU(inplace=True)).train()
    x = torch.randn(1, 32, 5, 7, requires_grad=True)
    y = cbam(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and cbam.spatial_gate.conv.weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cbam(torch.randn(2, 32, 5, 7))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("kwargs, arg", [
    (dict(channels=8), "channels"),
    (dict(channels=32, kernel_size=6), "kernel_size"),
    (dict(channels=32, kernel_size=0), "kernel_size"),
    (dict(channels=32, spatial_order="mean_max"), "spatial_order"),
    (dict(channels=32, rd_ratio=-1), "rd_ratio"),
    (dict(channels=32, gate_layer=None), "gate_layer"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        CBAM(**kwargs)


def test_bad_input():
    for bad in (torch.randn(2, 32, 5), torch.randn(2, 16, 5, 5), torch.randn(2, 32, 0, 5)):
        with pytest.raises(ValueError, match="x must"):
            CBAM(32)(bad)
    with pytest.raises(ValueError, match="x must"):
        SpatialGate()(torch.randn(3, 4))
    with pytest.raises(ValueError, match="x must"):
        ChannelGate(32)(torch.randn(1, 31, 2, 2))


def test_spatial_bn_batch_of_one_pixel_is_named_in_training():
    # spatial_bn=True: BatchNorm2d(1) over the (B, 1, H, W) map needs B·H·W >= 2 in training
    for block in (CBAM(32, spatial_bn=True), SpatialGate(spatial_bn=True)):
        block.train()
        with pytest.raises(ValueError, match=r"x must give at least 2 values per channel to the BatchNorm "
                                             r"of the \(B, 1, H, W\) spatial map .*training mode.*\.eval\(\)"):
            block(torch.randn(1, 32, 1, 1))
        assert block(torch.randn(1, 32, 2, 1)).shape == (1, 32, 2, 1)       # two values: fine
        assert block.eval()(torch.randn(1, 32, 1, 1)).shape == (1, 32, 1, 1)
    assert CBAM(32).train()(torch.randn(1, 32, 1, 1)).shape == (1, 32, 1, 1)  # no BN, no limit
