"""Tests of nltutorial.local_relation against a per-pixel loop written from Hu et al., LR-Net (ICCV 2019)."""

import math

import pytest
import torch
from torch import nn

from nltutorial.local_relation import LocalRelation2d, LRBottleneck, lr_resnet_stage

from conftest import randomize_




def phi(q, k, kind):
    if kind == "squared_difference":
        return -(q - k) ** 2
    if kind == "absolute_difference":
        return -abs(q - k)
    return q * k


@torch.no_grad()
def ref_local_relation(x, layer, kind):
    """y_c(p') = Σ_{p ∈ Ω(p') ∩ image} ω_g(p', p) v_c(p), g = c // m, with
    ω_g(p', ·) = softmax over the in-image window of Φ(q_g(p'), k_g(p)) + f_θg(p − p')_g.
    Plain loops over output pixels and window offsets; the 1×1 convolutions and the
    geometry network are applied by hand to single pixels."""
    B, Cin, H, W = x.shape
    k, s, m, G = layer.kernel_size, layer.stride, layer.m, layer.groups
    r = k // 2
    Wq, bq = layer.query.weight[:, :, 0, 0], layer.query.bias
    Wk, bk = layer.key.weight[:, :, 0, 0], layer.key.bias
    Wv = None if layer.value is None else layer.value.weight[:, :, 0, 0]
    g1, g2 = layer.geometry[0], layer.geometry[2]

    def geometry(dy, dx):                                        # (G,) prior of offset p − p' = (dy, dx)
        hidden = torch.relu(g1.weight[:, :, 0, 0] @ torch.tensor([dy, dx], dtype=x.dtype) + g1.bias)
        return g2.weight[:, :, 0, 0] @ hidden + g2.bias

    Ho, Wo = (H - 1) // s + 1, (W - 1) // s + 1
    Cout = layer.out_channels
    y = torch.zeros(B, Cout, Ho, Wo, dtype=x.dtype)
    for b in range(B):
        for io in range(Ho):
            for jo in range(Wo):
                pi, pj = s * io, s * jo                          # query position p'
                q = Wq @ x[b, :, pi, pj] + bq                    # (G,)
                scores, values = [], []
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        ii, jj = pi + dy, pj + dx
                        if not (0 <= ii < H and 0 <= jj < W):
                            continue                             # outside the image: not in the softmax
                        kk = Wk @ x[b, :, ii, jj] + bk           # (G,)
                        scores.append([phi(q[g], kk[g], kind) + geometry(dy, dx)[g] for g in range(G)])
                        v = x[b, :, ii, jj] if Wv is None else Wv @ x[b, :, ii, jj]
                        values.append(v)
                for g in range(G):
                    e = [math.exp(float(sc[g])) for sc in scores]
                    total = sum(e)
                    for c in range(g * m, (g + 1) * m):
                        y[b, c, io, jo] = sum(e[t] / total * values[t][c] for t in range(len(e)))
    return y


@pytest.mark.parametrize("implementation", ["shift", "unfold"])
@pytest.mark.parametrize("kind", ["squared_difference", "absolute_difference", "product"])
@pytest.mark.parametrize("in_ch, out_ch, k, stride, shape", [
    (8, 8, 3, 1, (2, 8, 5, 7)),
    (8, 8, 7, 1, (1, 8, 5, 7)),          # window larger than the image: heavy masking
    (6, 8, 5, 2, (1, 6, 5, 7)),          # channel change (value projection) and stride
    (8, 4, 3, 3, (1, 8, 4, 7)),
])
def test_matches_per_pixel_loop(kind, in_ch, out_ch, k, stride, shape, implementation):
    layer = randomize_(LocalRelation2d(in_ch, out_ch, kernel_size=k, stride=stride, m=2, composability=kind,
                                       implementation=implementation))
    x = torch.randn(shape, dtype=torch.float64) * 0.5
    y = layer(x)
    assert y.shape == (shape[0], out_ch, (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1)
    torch.testing.assert_close(y, ref_local_relation(x, layer, kind))


def test_structure():
    layer = LocalRelation2d(64, 64)
    assert layer.groups == 8 and layer.query.out_channels == layer.key.out_channels == 8
    assert layer.value is None and layer.geometry[-1].out_channels == 8
    assert LocalRelation2d(32, 64).value.weight.shape == (64, 32, 1, 1)
    assert layer.offsets.shape == (1, 2, 7, 7) and "offsets" in dict(layer.named_buffers())
    torch.testing.assert_close(layer.offsets[0, :, 0, 0], torch.tensor([-3.0, -3.0]))    # (Δy, Δx) of top-left
    torch.testing.assert_close(layer.offsets[0, :, 2, 5], torch.tensor([-1.0, 2.0]))
    assert LocalRelation2d(16, 16, m=8, composability="dot").composability == "product"
    w = layer.attention(torch.randn(1, 64, 5, 7))
    assert w.shape == (1, 8, 49, 35)
    torch.testing.assert_close(w.sum(2), torch.ones(1, 8, 35))


def test_outside_neighbours_are_masked_not_zero():
    """Weights are a softmax over real pixels only, so a constant image stays constant at the border."""
    layer = LocalRelation2d(8, 8, kernel_size=5, m=4).double()
    x = torch.full((1, 8, 5, 7), 3.0, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x)
    w = layer.attention(x).view(1, 2, 5, 5, 5, 7)               # (B, G, kh, kw, H, W)
    assert torch.all(w[..., 0, 0, 0, 0] == 0) and torch.all(w[..., 0, :, 0, :] == 0)


def test_gradcheck():
    for kind in ("squared_difference", "product"):
        layer = randomize_(LocalRelation2d(4, 4, kernel_size=3, stride=2, m=2, composability=kind))
        x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))


def test_backward_and_bf16_autocast():
    layer = LocalRelation2d(16, 16, kernel_size=7, m=8).train()
    x = torch.randn(1, 16, 5, 7, requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in layer.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(torch.randn(2, 16, 5, 7))
    assert torch.isfinite(y).all() and y.shape == (2, 16, 5, 7)


@pytest.mark.parametrize("in_ch, out_ch, stride, shape", [(16, 32, 2, (1, 16, 5, 7)), (32, 32, 1, (2, 32, 5, 7))])
def test_bottleneck(in_ch, out_ch, stride, shape):
    block = randomize_(LRBottleneck(in_ch, out_ch, stride=stride, m=4))
    x = torch.randn(shape, dtype=torch.float64)
    y = block(x)
    assert y.shape == (shape[0], out_ch, (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1)
    main = block.bn3(block.conv3(torch.relu(block.bn2(block.lr(torch.relu(block.bn1(block.conv1(x))))))))
    torch.testing.assert_close(y, torch.relu(main + block.shortcut(x)))
    assert isinstance(block.shortcut, nn.Identity) == (in_ch == out_ch and stride == 1)
    assert block.lr.kernel_size == 7 and block.width == out_ch // 4


def test_bottleneck_zero_init_and_training():
    block = LRBottleneck(32, 32, m=4, zero_init_last=True).eval()
    x = torch.randn(1, 32, 5, 7)
    torch.testing.assert_close(block(x), torch.relu(x))          # main branch is 0 at init
    stage = lr_resnet_stage(16, 32, blocks=3, stride=2, m=4).train()
    assert len(stage) == 3 and stage[0].lr.stride == 2 and stage[1].lr.stride == 1
    assert stage[1].in_channels == 32
    x = torch.randn(2, 16, 5, 7, requires_grad=True)
    y = stage(x)
    assert y.shape == (2, 32, 3, 4)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("factory, arg", [
    (lambda: LocalRelation2d(16, 16, kernel_size=6), "kernel_size"),
    (lambda: LocalRelation2d(16, 12, m=8), "m"),                # 12 channels not divisible by m = 8
    (lambda: LocalRelation2d(16, 16, stride=0), "stride"),
    (lambda: LocalRelation2d(16, 16, m=0), "m"),
    (lambda: LocalRelation2d(0, 16), "in_channels"),
    (lambda: LocalRelation2d(16, 16, composability="cosine"), "composability"),
    (lambda: LocalRelation2d(16, 16, geometry_channels=0), "geometry_channels"),
    (lambda: LocalRelation2d(16, 16, implementation="loop"), "implementation"),
    (lambda: LRBottleneck(64, 64, m=8, width=12), "width"),
    (lambda: LRBottleneck(64, 16, m=8), "width"),              # default width 16 // 4 = 4 < m
    (lambda: lr_resnet_stage(16, 32, blocks=0), "blocks"),
])
def test_bad_arguments(factory, arg):
    with pytest.raises(ValueError, match=arg):
        factory()


def test_bad_input():
    for block in (LocalRelation2d(16, 16), LRBottleneck(16, 32, m=8)):
        for bad in (torch.randn(16, 5, 5), torch.randn(1, 8, 5, 5)):
            with pytest.raises(ValueError, match="x must"):
                block(bad)


# ---- the two implementations: "shift" (default, loop over offsets, custom backward) and "unfold"

def _outputs_and_grads(layer, x, grad_out, implementation):
    layer.implementation = implementation
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    grads = torch.autograd.grad(y, [x, *layer.parameters()], grad_out)
    return y, grads


@pytest.mark.parametrize("kind", ["squared_difference", "absolute_difference", "product"])
@pytest.mark.parametrize("in_ch, out_ch, k, stride, m, shape", [
    (16, 16, 7, 1, 8, (2, 16, 9, 12)),
    (16, 16, 7, 2, 4, (1, 16, 10, 11)),  # stride 2, even size
    (8, 16, 5, 3, 4, (2, 8, 7, 8)),       # value projection, stride 3
    (8, 8, 9, 1, 2, (1, 8, 3, 2)),        # window far larger than the image
    (4, 4, 3, 2, 1, (1, 4, 1, 1)),        # a single pixel
])
def test_shift_equals_unfold_outputs_and_gradients(kind, in_ch, out_ch, k, stride, m, shape):
    layer = randomize_(LocalRelation2d(in_ch, out_ch, kernel_size=k, stride=stride, m=m, composability=kind))
    assert layer.implementation == "shift"                        # the default
    x = torch.randn(shape, dtype=torch.float64)
    out_shape = (shape[0], out_ch, (shape[2] - 1) // stride + 1, (shape[3] - 1) // stride + 1)
    g = torch.randn(out_shape, dtype=torch.float64)
    y1, grads1 = _outputs_and_grads(layer, x, g, "shift")
    y2, grads2 = _outputs_and_grads(layer, x, g, "unfold")
    assert y1.shape == out_shape
    torch.testing.assert_close(y1, y2)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b)


def test_shift_float32_matches_unfold():
    layer = LocalRelation2d(32, 32, kernel_size=7, stride=2, m=8)
    x = torch.randn(2, 32, 13, 11)
    y1, grads1 = _outputs_and_grads(layer, x, torch.ones(2, 32, 7, 6), "shift")
    y2, grads2 = _outputs_and_grads(layer, x, torch.ones(2, 32, 7, 6), "unfold")
    assert y1.dtype == torch.float32
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["squared_difference", "absolute_difference", "product"])
def test_shift_gradcheck(kind):
    for in_ch, out_ch, stride in ((4, 4, 1), (2, 4, 2)):
        layer = randomize_(LocalRelation2d(in_ch, out_ch, kernel_size=3, stride=stride, m=2, composability=kind))
        x = torch.randn(2, in_ch, 4, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))


def test_implementations_share_parameters_and_state_dict():
    a = LocalRelation2d(16, 32, m=8, implementation="shift")
    b = LocalRelation2d(16, 32, m=8, implementation="unfold")
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 16, 6, 6)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)
    a.implementation = "nope"
    with pytest.raises(ValueError, match="implementation"):
        a(x)


@pytest.mark.parametrize("implementation", ["shift", "unfold"])
def test_bf16_autocast_both(implementation):
    for in_ch in (16, 8):                                          # with and without value projection
        layer = LocalRelation2d(in_ch, 16, kernel_size=7, m=8, implementation=implementation)
        x = torch.randn(2, in_ch, 5, 7, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
        torch.testing.assert_close(y.float(), layer._forward_unfold(x.detach()), rtol=0.05, atol=0.05)
        y.float().square().sum().backward()
        assert torch.isfinite(x.grad).all()


def test_shift_is_memory_light():
    """No k²-sized tensor: peak memory of inference and of a training step well below unfold's."""
    from nltutorial.cost import peak_memory

    C, H = 32, 24
    layer = LocalRelation2d(C, C, kernel_size=7, m=8)
    x = torch.randn(1, C, H, H)
    image = x.numel() * x.element_size()
    peak = {}
    for impl in ("shift", "unfold"):
        layer.implementation = impl
        peak[impl] = peak_memory(layer, x)
    assert peak["shift"] < 3 * image < peak["unfold"] / 10        # unfold: ≥ 49 images

    def train_step(inp):
        layer(inp).sum().backward()

    for impl in ("shift", "unfold"):
        layer.implementation = impl
        layer.zero_grad(set_to_none=True)
        peak[impl] = peak_memory(train_step, x.clone().requires_grad_())
    assert peak["shift"] < 6 * image < peak["unfold"] / 10


def test_shift_flops_count_the_aggregation_like_unfold():
    """count_flops credits the shift operator with the FLOPs of the unfold path's einsum; with a
    stride the shift path also saves the query projection at the skipped positions."""
    from nltutorial.cost import count_flops

    B, C, G, H, W = 2, 16, 4, 9, 8
    x = torch.randn(B, C, H, W)
    for stride in (1, 2):
        layer = LocalRelation2d(C, C, kernel_size=5, stride=stride, m=4)
        flops = {}
        for impl in ("shift", "unfold"):
            layer.implementation = impl
            flops[impl] = count_flops(layer, x)
        Ho, Wo = layer.output_size(H, W)
        assert flops["shift"] > 2 * B * C * 25 * Ho * Wo                        # the aggregation is counted
        assert flops["unfold"] - flops["shift"] == 2 * B * C * G * (H * W - Ho * Wo)


def test_dtype_mismatch_and_batch_of_one_pixel_are_named():
    lr = LocalRelation2d(16, 16, kernel_size=3)
    for implementation in ("shift", "unfold"):
        lr.implementation = implementation
        with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the parameters of "
                                            r"LocalRelation2d have dtype torch.float32"):
            lr(torch.randn(1, 16, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        lr(torch.ones(1, 16, 4, 4, dtype=torch.int32))
    block = LRBottleneck(32, 32, kernel_size=3, stride=2).train()
    with pytest.raises(TypeError, match="torch.float16.*torch.float32"):
        block(torch.randn(2, 32, 4, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"x must give at least 2 values per channel to the BatchNorm after "
                                         r"the LR layer in training mode, got shape \(1, 32, 1, 1\)"):
        block(torch.randn(1, 32, 1, 1))
    assert block(torch.randn(1, 32, 3, 1)).shape == (1, 32, 2, 1)                # 2 values: fine
    assert block.eval()(torch.randn(1, 32, 1, 1)).shape == (1, 32, 1, 1)
