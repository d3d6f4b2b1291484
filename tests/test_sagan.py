"""Tests of nltutorial.sagan.SelfAttention2d against the equations of Zhang et al., SAGAN (ICML 2019)."""

import math

import pytest
import torch

from nltutorial.nonlocal_block import IMPLEMENTATIONS
from nltutorial.sagan import SelfAttention2d

from conftest import assert_every_path_matches, largest_saved_tensor, randomize_




def conv1x1(x, conv):
    """(C, H, W) -> (C', H, W)."""
    return torch.einsum("oc,chw->ohw", conv.weight[:, :, 0, 0], x) + conv.bias[:, None, None]


def maxpool2(x):
    """2×2, stride-2 max-pooling of (C, H, W), odd last row/column dropped, by loops."""
    H2, W2 = x.shape[1] // 2, x.shape[2] // 2
    out = torch.empty(x.shape[0], H2, W2, dtype=x.dtype)
    for i in range(H2):
        for j in range(W2):
            out[:, i, j] = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].flatten(1).max(dim=1).values
    return out


def ref_sagan(x, layer):
    """s_ij = f(x_i)ᵀ g(x_j); β_j,i = softmax_i(s_ij); o_j = Σ_i β_j,i h(x_i) [v(·)]; y = γ o + x."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        f, g, h = conv1x1(x[n], layer.f), conv1x1(x[n], layer.g), conv1x1(x[n], layer.h)
        if layer.pool:
            f, h = maxpool2(f), maxpool2(h)
        f, g, h = f.flatten(1), g.flatten(1), h.flatten(1)            # (C̄, N_k), (C̄, N), (C_v, N_k)
        o = torch.empty(h.shape[0], g.shape[1], dtype=x.dtype)
        for j in range(g.shape[1]):
            s = torch.stack([f[:, i] @ g[:, j] for i in range(f.shape[1])])
            beta = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            o[:, j] = sum(beta[i] * h[:, i] for i in range(f.shape[1]))
        o = o.view(-1, *x.shape[2:])
        if layer.v is not None:
            o = conv1x1(o, layer.v)
        out[n] = layer.gamma * o + x[n]
    return out


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kwargs", [dict(), dict(value_rd_ratio=1 / 2), dict(pool=True),
                                    dict(pool=True, value_rd_ratio=1 / 2)])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 8, 2, 3)])
def test_matches_paper_equation(kwargs, shape, implementation):
    layer = randomize_(SelfAttention2d(8, rd_ratio=1 / 4, implementation=implementation, **kwargs))
    x = torch.randn(shape, dtype=torch.float64) * 0.5
    y = layer(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_sagan(x, layer))


def test_widths_and_attention_map():
    layer = SelfAttention2d(64)
    assert layer.f.out_channels == layer.g.out_channels == 8 and layer.h.out_channels == 64 and layer.v is None
    official = SelfAttention2d(64, value_rd_ratio=1 / 2, pool=True)
    assert official.h.out_channels == 32 and official.v.in_channels == 32 and official.v.out_channels == 64
    x = torch.randn(2, 64, 5, 7)
    assert layer.attention(x).shape == (2, 35, 35) and official.attention(x).shape == (2, 35, 6)
    torch.testing.assert_close(official.attention(x).sum(-1), torch.ones(2, 35))


def test_identity_at_init():
    x = torch.randn(1, 16, 5, 7)
    for kwargs in (dict(), dict(value_rd_ratio=1 / 2, pool=True)):
        layer = SelfAttention2d(16, **kwargs)
        assert layer.gamma.item() == 0 and torch.equal(layer(x), x)


def test_gradcheck():
    for kwargs in (dict(), dict(value_rd_ratio=1 / 2, pool=True)):
        layer = randomize_(SelfAttention2d(4, rd_ratio=1 / 2, **kwargs))
        x = torch.randn(1, 4, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(layer, (x,))


def test_backward_bf16_autocast_and_spectral_norm():
    layer = SelfAttention2d(16, value_rd_ratio=1 / 2, pool=True, spectral_norm=True).train()
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    x = torch.randn(1, 16, 5, 7, requires_grad=True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and layer.gamma.grad is not None
    assert hasattr(layer.f, "parametrizations")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = SelfAttention2d(16)(torch.randn(2, 16, 5, 7))
    assert torch.isfinite(y).all() and y.shape == (2, 16, 5, 7)


@pytest.mark.parametrize("kwargs, arg", [
    (dict(channels=4), "channels"),
    (dict(channels=16, rd_ratio=1.5), "rd_ratio"),
    (dict(channels=16, value_rd_ratio=0), "rd_ratio"),
    (dict(channels=16, rd_channels=-2), "rd_channels"),
])
def test_bad_arguments(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        SelfAttention2d(**kwargs)


def test_bad_input():
    for bad in (torch.randn(16, 5, 5), torch.randn(1, 8, 5, 5)):
        with pytest.raises(ValueError, match="x must"):
            SelfAttention2d(16)(bad)
    with pytest.raises(ValueError, match="pool=True"):
        SelfAttention2d(16, pool=True)(torch.randn(1, 16, 1, 5))


def plain_official_sagan(x, wf, wg, wh, wv, gamma):
    """The official TensorFlow attention written out: bias-free 1×1 convolutions (matrices on the
    channels), keys and values max-pooled 2×2, softmax over the pooled key positions."""
    B, C, H, W = x.shape
    conv = lambda w, t: torch.einsum("oc,bchw->bohw", w, t)            # noqa: E731, 1×1, no bias
    pool = lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).amax(dim=(-2, -1))  # noqa: E731, 2×2 / 2
    f, g, h = pool(conv(wf, x)), conv(wg, x), pool(conv(wh, x))
    s = torch.einsum("bcn,bcm->bnm", g.flatten(2), f.flatten(2))        # (B, N, N/4) = g fᵀ
    beta = torch.softmax(s, dim=-1)
    o = torch.einsum("bnm,bcm->bcn", beta, h.flatten(2)).reshape(B, -1, H, W)
    return gamma * conv(wv, o) + x


def test_official_form_is_bias_free_and_matches_a_plain_implementation():
    C = 20
    sa = randomize_(SelfAttention2d(C, value_rd_ratio=1 / 2, pool=True, bias=False, rd_rounding="floor"))
    assert all(m.bias is None for m in (sa.f, sa.g, sa.h, sa.v))
    assert (sa.rd_channels, sa.value_channels) == (2, 10) and "bias=False" in repr(sa)
    x = torch.randn(2, C, 6, 4, dtype=torch.float64)
    w = [m.weight[:, :, 0, 0] for m in (sa.f, sa.g, sa.h, sa.v)]
    torch.testing.assert_close(sa(x), plain_official_sagan(x, *w, sa.gamma))
    biased = randomize_(SelfAttention2d(C, value_rd_ratio=1 / 2, pool=True, rd_rounding="floor"))
    assert (biased(x) - plain_official_sagan(x, *[m.weight[:, :, 0, 0] for m in (biased.f, biased.g, biased.h,
                                                                                    biased.v)],
                                              biased.gamma)).abs().max() > 1e-3   # with biases it differs


# ---- how o is computed: "naive" (explicit β), "fast" (SDPA, scale 1), "auto" -----------------------


def plain_sagan(x, layer):
    """y = γ o + x with o_j = Σ_i softmax_i(f(x_i)ᵀ g(x_j)) h(x_i) [then v], einsum and biases, batched."""
    conv = lambda c, t: torch.einsum("oc,bchw->bohw", c.weight[:, :, 0, 0], t) + c.bias[:, None, None]  # noqa
    pool = lambda t: t.unfold(2, 2, 2).unfold(3, 2, 2).amax(dim=(-2, -1)) if layer.pool else t  # noqa: E731
    f, g, h = pool(conv(layer.f, x)).flatten(2), conv(layer.g, x).flatten(2), pool(conv(layer.h, x)).flatten(2)
    beta = torch.softmax(torch.einsum("bcj,bci->bji", g, f), dim=-1)    # (B, N, N_k), unscaled
    o = torch.einsum("bji,bci->bcj", beta, h).unflatten(2, x.shape[2:])
    return layer.gamma * (conv(layer.v, o) if layer.v is not None else o) + x


@pytest.mark.parametrize("kwargs", [dict(), dict(value_rd_ratio=1 / 8), dict(value_rd_ratio=1 / 2, pool=True)])
@pytest.mark.parametrize("channels, side", [(16, 5), (64, 18)])
def test_implementations_agree_outputs_and_gradients(kwargs, channels, side):
    """Small and large maps, the widths of the arXiv, ICML and official forms: the fast path,
    the explicit β and "auto" against the einsum formula, values and every gradient."""
    layer = randomize_(SelfAttention2d(channels, **kwargs))
    x = (torch.randn(2, channels, side, side + 2, dtype=torch.float64) * 0.3).requires_grad_()
    beta = layer.attention(x)
    assert (torch.softmax(beta.log() / math.sqrt(layer.rd_channels), -1) - beta).abs().max() > 1e-2  # scale matters
    assert_every_path_matches(layer, x, plain_sagan, IMPLEMENTATIONS)


@pytest.mark.parametrize("implementation", ["fast", "naive"])
def test_fast_path_keeps_no_map_for_backward(implementation):
    layer = SelfAttention2d(16, implementation=implementation)
    with torch.no_grad():
        layer.gamma.fill_(1.0)
    x = torch.randn(1, 16, 16, 16, requires_grad=True)
    assert (largest_saved_tensor(layer, x) < 256 * 256 // 4) == (implementation == "fast")


def test_implementation_is_validated_and_not_part_of_the_state():
    with pytest.raises(ValueError, match="implementation"):
        SelfAttention2d(16, implementation="slow")
    layer = SelfAttention2d(16, value_rd_ratio=1 / 2, pool=True)
    assert layer.implementation == "auto" and "implementation" not in repr(layer)
    fast = SelfAttention2d(16, value_rd_ratio=1 / 2, pool=True, implementation="fast")
    fast.load_state_dict(layer.state_dict(), strict=True)
    assert list(fast.state_dict()) == list(layer.state_dict()) and "implementation='fast'" in repr(fast)
    del layer.implementation                               # as a module pickled before the option existed
    x = torch.randn(1, 16, 4, 4)
    assert layer.implementation == "naive" and torch.equal(layer(x), x)
