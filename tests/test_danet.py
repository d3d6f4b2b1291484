"""Tests of nltutorial.danet against the equations of Fu et al., DANet (CVPR 2019)."""

import math

import pytest
import torch

from nltutorial.danet import ChannelAttention, DualAttention, PositionAttention
from nltutorial.nonlocal_block import IMPLEMENTATIONS

from conftest import assert_every_path_matches, largest_saved_tensor, randomize_




def conv1x1(x, conv):
    """(C, N) -> (C', N) with the conv's weight and bias."""
    return conv.weight[:, :, 0, 0] @ x + conv.bias[:, None]


@torch.no_grad()
def ref_pam(x, pam):
    """E_i = γ Σ_j S_ij D_j + A_i, S_ij = exp(B_i · C_j) / Σ_j' exp(B_i · C_j'), loops over i and j."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        a = x[n].flatten(1)                                            # (C, N)
        B, C, D = conv1x1(a, pam.query), conv1x1(a, pam.key), conv1x1(a, pam.value)
        N = a.shape[1]
        e = torch.empty_like(a)
        for i in range(N):
            scores = [math.exp(float(B[:, i] @ C[:, j])) for j in range(N)]
            total = sum(scores)
            e[:, i] = pam.gamma * sum(scores[j] / total * D[:, j] for j in range(N)) + a[:, i]
        out[n] = e.view_as(x[n])
    return out


def ref_cam(x, cam, energy):
    """E_i = β Σ_j X_ij A_j + A_i with X_ij = softmax_j(A_i · A_j) (paper), softmax_j(max − A_i · A_j)
    (official) or softmax_j(A_i · A_j / N) (mean)."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        a = x[n].flatten(1)                                            # (C, N)
        C = a.shape[0]
        e = torch.empty_like(a)
        for i in range(C):
            s = torch.stack([a[i] @ a[j] for j in range(C)])
            if energy == "official":
                s = s.max() - s
            elif energy == "mean":
                s = s / a.shape[1]
            w = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
            e[i] = cam.gamma * sum(w[j] * a[j] for j in range(C)) + a[i]
        out[n] = e.view_as(x[n])
    return out


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 8, 1, 1), (1, 8, 4, 3)])
def test_pam_matches_paper_equation(shape):
    pam = randomize_(PositionAttention(8, rd_ratio=1 / 4))
    x = torch.randn(shape, dtype=torch.float64) * 0.5
    y = pam(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_pam(x, pam))


@pytest.mark.parametrize("energy", ["paper", "official", "mean"])
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 6, 1, 1)])
def test_cam_matches_paper_equation(energy, shape):
    cam = randomize_(ChannelAttention(6, cam_energy=energy))
    x = torch.randn(shape, dtype=torch.float64) * 0.3
    y = cam(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref_cam(x, cam, energy))


def test_official_energy_is_softmax_of_minus_energy():
    cam = ChannelAttention(6, cam_energy="official")
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    a = x.flatten(2)
    torch.testing.assert_close(cam.attention(x), torch.softmax(-(a @ a.transpose(1, 2)), dim=-1))


def plain_cam_mean(x, beta):
    """E_i = β Σ_j X_ij A_j + A_i, X_ij = exp(s_ij) / Σ_k exp(s_ik), s_ij = (1/N) Σ_p A_i(p) A_j(p):
    one sample at a time, every sum written out over positions p and channels j, differentiable."""
    out = []
    for n in range(x.shape[0]):
        a = x[n].reshape(x.shape[1], -1)                               # (C, N)
        C, N = a.shape
        s = [[sum(a[i, p] * a[j, p] for p in range(N)) / N for j in range(C)] for i in range(C)]
        rows = []
        for i in range(C):
            top = max(float(v.detach()) for v in s[i])                 # subtracted for exp's range only
            e = [torch.exp(s[i][j] - top) for j in range(C)]
            total = sum(e)
            rows.append(beta * sum(e[j] / total * a[j] for j in range(C)) + a[i])
        out.append(torch.stack(rows).reshape(x.shape[1:]))
    return torch.stack(out)


def test_cam_mean_energy_matches_plain_sums_values_and_gradients():
    cam = randomize_(ChannelAttention(5, cam_energy="mean"))
    x = (torch.randn(2, 5, 3, 4, dtype=torch.float64) * 1.5).requires_grad_()
    g = torch.randn(x.shape, dtype=torch.float64)
    y, expected = cam(x), plain_cam_mean(x, cam.gamma)
    torch.testing.assert_close(y, expected)
    got = torch.autograd.grad(y, (x, cam.gamma), g)
    want = torch.autograd.grad(expected, (x, cam.gamma), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    a = x.detach().flatten(2)                                          # (B, C, N), N = 12
    torch.testing.assert_close(cam.attention(x.detach()), torch.softmax(a @ a.transpose(1, 2) / 12, dim=-1))


def test_cam_mean_energy_is_not_one_hot_on_a_32x32_map():
    """Unit-variance features, N = 1024: A_i · A_i ≈ N against O(√N) off the diagonal makes the
    paper's rows one-hot; divided by N the diagonal is ≈ 1 and the largest weight ≈ e / (e + C − 1)."""
    torch.manual_seed(0)
    x = torch.randn(4, 16, 32, 32, dtype=torch.float64)
    largest = {e: ChannelAttention(16, cam_energy=e).attention(x).amax(-1).mean().item()
               for e in ("paper", "mean")}
    assert largest["paper"] > 0.99
    assert largest["mean"] < 0.25 and largest["mean"] < largest["paper"] / 4
    assert largest["mean"] > 1 / 16                                   # still peaked on the diagonal


def test_cam_mean_energy_does_not_depend_on_the_map_size():
    """Repeating every position 2×2 (N → 4N) leaves the mean over positions, hence X, unchanged;
    the paper's sum grows 4 times."""
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64) * 0.3
    big = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    mean, paper = ChannelAttention(6, cam_energy="mean"), ChannelAttention(6)
    torch.testing.assert_close(mean.attention(big), mean.attention(x))
    assert (paper.attention(big) - paper.attention(x)).abs().max() > 1e-2


def test_cam_energy_reaches_the_dual_block_and_the_factory():
    from nltutorial.factory import create_attention
    assert DualAttention(16, cam_energy="mean").cam.cam_energy == "mean"
    assert create_attention("danet", 16, cam_energy="mean").cam.cam_energy == "mean"
    assert "cam_energy='mean'" in repr(create_attention("cam", 16, cam_energy="mean"))
    with pytest.raises(ValueError, match="'paper', 'official', 'mean'"):
        ChannelAttention(8, cam_energy="sum")


def test_identity_at_init_and_dual():
    x = torch.randn(2, 16, 5, 7)
    pam, cam, dual = PositionAttention(16), ChannelAttention(16), DualAttention(16)
    assert pam.gamma.item() == 0 and cam.gamma.item() == 0
    assert torch.equal(pam(x), x) and torch.equal(cam(x), x)
    torch.testing.assert_close(dual(x), 2 * x)                          # PAM(A) + CAM(A), γ = β = 0
    dual = randomize_(DualAttention(16, rd_ratio=1 / 2, cam_energy="official"))
    xd = x.double() * 0.2
    torch.testing.assert_close(dual(xd), dual.pam(xd) + dual.cam(xd))
    assert PositionAttention(64).rd_channels == 8 and PositionAttention(64, rd_ratio=1).rd_channels == 64


def test_gradcheck():
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    for block in (PositionAttention(4, rd_ratio=1 / 2), ChannelAttention(4), ChannelAttention(4, "official"),
                  ChannelAttention(4, "mean")):
        assert torch.autograd.gradcheck(randomize_(block), (x,))


def test_backward_and_bf16_autocast():
    dual = DualAttention(16).train()
    with torch.no_grad():
        dual.pam.gamma.fill_(0.5)
        dual.cam.gamma.fill_(0.5)
    x = torch.randn(1, 16, 5, 7, requires_grad=True)
    dual(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and dual.pam.query.weight.grad.abs().sum() > 0
    assert dual.cam.gamma.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dual(torch.randn(2, 16, 5, 7))
    assert torch.isfinite(y).all() and y.shape == (2, 16, 5, 7)


@pytest.mark.parametrize("factory, arg", [
    (lambda: PositionAttention(4), "channels"),                         # 4 · 1/8 < 1
    (lambda: PositionAttention(16, rd_ratio=0), "rd_ratio"),
    (lambda: ChannelAttention(0), "channels"),
    (lambda: ChannelAttention(8, cam_energy="max"), "cam_energy"),
    (lambda: DualAttention(8, cam_energy=None), "cam_energy"),
])
def test_bad_arguments(factory, arg):
    with pytest.raises(ValueError, match=arg):
        factory()


def test_bad_input():
    for block in (PositionAttention(16), ChannelAttention(16), DualAttention(16)):
        for bad in (torch.randn(16, 5, 5), torch.randn(1, 8, 5, 5)):
            with pytest.raises(ValueError, match="x must"):
                block(bad)


# ---- how S D is computed: "naive" (explicit S), "fast" (SDPA, scale 1), "auto" ----------------------


def plain_pam(x, pam):
    """E = γ D softmax_j(Bᵀ C')ᵀ + A with einsum, differentiable: the formula, batched."""
    conv = lambda c, t: torch.einsum("oc,bcn->bon", c.weight[:, :, 0, 0], t) + c.bias[:, None]  # noqa: E731
    a = x.flatten(2)                                                   # (B, C, N)
    b, c, d = conv(pam.query, a), conv(pam.key, a), conv(pam.value, a)
    s = torch.softmax(torch.einsum("bki,bkj->bij", b, c), dim=-1)       # (B, N, N), unscaled
    return (pam.gamma * torch.einsum("bij,bcj->bci", s, d) + a).view_as(x)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 8, 9, 8)])
def test_pam_every_implementation_matches_paper_equation(implementation, shape):
    pam = randomize_(PositionAttention(8, rd_ratio=1 / 4, implementation=implementation))
    x = torch.randn(shape, dtype=torch.float64) * 0.5
    torch.testing.assert_close(pam(x), ref_pam(x, pam))


@pytest.mark.parametrize("channels, rd_ratio, side", [(16, 1 / 8, 5), (16, 1 / 8, 20), (64, 1, 18), (64, 1 / 8, 18)])
def test_pam_implementations_agree_outputs_and_gradients(channels, rd_ratio, side):
    """Small and large maps, narrow and wide keys: the fast path (padded to one width), the
    explicit map and "auto" against the einsum formula, values and every gradient."""
    pam = randomize_(PositionAttention(channels, rd_ratio=rd_ratio))
    x = (torch.randn(2, channels, side, side + 1, dtype=torch.float64) * 0.3).requires_grad_()
    s_scaled = torch.softmax(pam.attention(x).log() / math.sqrt(pam.rd_channels), dim=-1)
    assert (s_scaled - pam.attention(x)).abs().max() > 1e-2          # the scale matters for these weights
    assert_every_path_matches(pam, x, plain_pam, IMPLEMENTATIONS)


@pytest.mark.parametrize("implementation", ["fast", "naive"])
def test_pam_fast_path_keeps_no_map_for_backward(implementation):
    pam = PositionAttention(16, implementation=implementation)
    with torch.no_grad():
        pam.gamma.fill_(1.0)
    x = torch.randn(1, 16, 16, 16, requires_grad=True)
    N = 16 * 16
    assert (largest_saved_tensor(pam, x) < N * N // 4) == (implementation == "fast")


def test_pam_implementation_is_validated_and_not_part_of_the_state():
    with pytest.raises(ValueError, match="implementation"):
        PositionAttention(16, implementation="slow")
    pam = PositionAttention(16)
    assert pam.implementation == "auto" and "implementation" not in repr(pam)
    assert sorted(pam.state_dict()) == ["gamma", "key.bias", "key.weight", "query.bias", "query.weight",
                                        "value.bias", "value.weight"]
    fast = PositionAttention(16, implementation="fast")
    fast.load_state_dict(pam.state_dict(), strict=True)
    assert "implementation='fast'" in repr(fast)
    fast.implementation = "other"
    with pytest.raises(ValueError, match="implementation"):
        fast(torch.randn(1, 16, 4, 4))
    del pam.implementation                                 # as a module pickled before the option existed
    x = torch.randn(1, 16, 4, 4)
    assert pam.implementation == "naive" and torch.equal(pam(x), x)
