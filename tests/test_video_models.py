"""Video ResNets of nltutorial.video_models: C2D = frame-wise 2-D network, I3D inflation, NL3D blocks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import randomize_
from nltutorial.models import AttentionSite
from nltutorial.video_models import SpaceTimeConv, VideoResNet, inflate_state_dict, video_resnet


def clip(b=2, t=4, h=16, w=16, c=3, seed=0, dtype=torch.float64):
    return torch.randn(b, c, t, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# A plain frame-by-frame 2-D implementation, written from the architecture, for C2D.
# ---------------------------------------------------------------------------------------------


def bn2d(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def conv2d(x, conv, stride=1):
    w = conv.weight[:, :, 0]                                     # (out, in, 1, k, k) -> (out, in, k, k)
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2)


def block2d(x, blk, stride):
    out = F.relu(bn2d(conv2d(x, blk.conv1, stride), blk.bn1))
    out = bn2d(conv2d(out, blk.conv2), blk.bn2)
    if isinstance(blk.shortcut, nn.Identity):
        sc = x
    else:
        sc = bn2d(F.conv2d(x, blk.shortcut[0].weight[:, :, 0], stride=stride), blk.shortcut[1])
    return F.relu(out + sc)


def c2d_by_frames(model, x):
    """logits = fc(mean over frames of the 2-D network's spatially pooled features)."""
    feats = []
    for t in range(x.shape[2]):
        f = F.relu(bn2d(conv2d(x[:, :, t], model.conv1, 2), model.bn1))
        for s, stage in enumerate([model.layer1, model.layer2, model.layer3], start=1):
            for name, blk in stage.named_children():
                if name.isdigit():
                    f = block2d(f, blk, 2 if (name == "0" and s > 1) else 1)
        feats.append(f.mean(dim=(2, 3)))
    return F.linear(torch.stack(feats).mean(0), model.fc.weight, model.fc.bias)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c2d", "i3d"])
@pytest.mark.parametrize("attention", [None, "nl3d"])
def test_output_shapes(name, attention):
    model = video_resnet(name, 5, attention).eval()
    with torch.no_grad():
        for shape in [(1, 3, 4, 32, 32), (3, 3, 2, 16, 24), (2, 3, 1, 16, 16)]:
            assert model(torch.randn(shape)).shape == (shape[0], 5)
    grey = video_resnet(name, 2, attention, in_channels=1, width=4, stage_blocks=(2, 1, 3))
    assert grey.eval()(torch.randn(2, 1, 3, 16, 16)).shape == (2, 2)


def test_parameter_count_of_default_c2d():
    w, c = 16, 3
    stem = 9 * c * w + 2 * w
    total, c_in = stem, w
    for width in (w, 2 * w, 4 * w):
        total += 9 * c_in * width + 9 * width * width + 4 * width          # two 3×3 convs + two BNs
        if width != w:                                                     # stages 2, 3: stride 2
            total += c_in * width + 2 * width                              # 1×1×1 projection + BN
        c_in = width
    total += 4 * w * 2 + 2                                                 # fc
    assert n_params(video_resnet("c2d")) == total == 77_522
    # I3D: the stem and the first conv of each stage have 3 taps in time
    extra = 2 * (9 * c * w) + 2 * (9 * w * w + 9 * w * 2 * w + 9 * 2 * w * 4 * w)
    assert n_params(video_resnet("i3d")) == total + extra


def test_c2d_is_the_2d_network_applied_frame_by_frame():
    model = randomize_(video_resnet("c2d", 3, stage_blocks=(2, 1, 2)), seed=1)
    x = clip(b=2, t=5, h=16, w=20)
    with torch.no_grad():
        expected = c2d_by_frames(model, x)
        got = model(x)
        assert (got - expected).abs().max() < 1e-10
        # so it cannot see the order of the frames ...
        perm = torch.tensor([3, 0, 4, 1, 2])
        assert (model(x[:, :, perm]) - got).abs().max() < 1e-10
        # ... and neither can C2D + NL3D (the NL block is equivariant to any reordering of positions)
        nl = randomize_(video_resnet("c2d", 3, "nl3d"), seed=2)
        assert (nl(x[:, :, perm]) - nl(x)).abs().max() < 1e-10
        # I3D can
        i3d = randomize_(video_resnet("i3d", 3), seed=3)
        assert (i3d(x[:, :, perm]) - i3d(x)).abs().max() > 1e-3


@pytest.mark.parametrize("padding", ["replicate", "zeros"])
def test_inflation_identity(padding):
    c2d = randomize_(video_resnet("c2d", 4, stage_blocks=(2, 2, 1)), seed=4)
    i3d = video_resnet("i3d", 4, stage_blocks=(2, 2, 1), temporal_padding=padding).double().eval()
    inflated = [k for k, v in i3d.state_dict().items() if v.dim() == 5 and v.shape[2] == 3]
    assert set(inflated) == {"conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight",
                             "layer3.0.conv1.weight"}
    static = clip(b=2, t=1, h=16, w=16).expand(-1, -1, 6, -1, -1)          # every frame the same image
    moving = clip(b=2, t=6, h=16, w=16, seed=9)
    with torch.no_grad():
        i3d.load_state_dict(inflate_state_dict(c2d.state_dict(), i3d, "center"))
        for x in (static, moving):                                          # centre tap: C2D on any clip
            assert (i3d(x) - c2d(x)).abs().max() < 1e-10
        i3d.load_state_dict(inflate_state_dict(c2d.state_dict(), i3d, "mean"))
        gap = (i3d(static) - c2d(static)).abs().max()
        if padding == "replicate":                                          # w/3 three times: C2D on a static clip
            assert gap < 1e-10
        else:                                                               # zero padding: the edge frames differ
            assert gap > 1e-3
        assert (i3d(moving) - c2d(moving)).abs().max() > 1e-3               # but not on a moving one


def test_space_time_conv_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 6, 6, generator=g, dtype=torch.float64)
    for mode in ("replicate", "zeros"):
        conv = SpaceTimeConv(2, 3, 3, 3, stride=2, temporal_padding=mode).double()
        if mode == "replicate":
            padded = torch.cat([x[:, :, :1], x, x[:, :, -1:]], dim=2)
        else:
            padded = F.pad(x, (0, 0, 0, 0, 1, 1))
        ref = F.conv3d(padded, conv.weight, stride=(1, 2, 2), padding=(0, 1, 1))
        assert conv(x).shape == (1, 3, 5, 3, 3) and (conv(x) - ref).abs().max() < 1e-12
        assert set(conv.state_dict()) == {"weight"}


def test_nl3d_blocks_where_specified():
    model = video_resnet("c2d", attention="nl3d")
    names = [n for n, _ in model.named_attention_modules()]
    assert names == ["layer2.attn0", "layer3.attn0"]
    blocks = model.nl_blocks()
    assert [b.in_channels for b in blocks] == [32, 64] and all(b.dimension == 3 for b in blocks)
    assert all(isinstance(getattr(model, n.split(".")[0])._modules[n.split(".")[1]], AttentionSite) for n in names)
    deep = video_resnet("i3d", attention="nl3d", stage_blocks=(2, 4, 3))
    assert [n for n, _ in deep.named_attention_modules()] == ["layer2.attn1", "layer2.attn3", "layer3.attn1"]
    only3 = video_resnet("c2d", attention="nl3d", nl_stages=(3,), mode="dot", sub_sample=False)
    assert [n for n, _ in only3.named_attention_modules()] == ["layer3.attn0"]
    assert only3.nl_blocks()[0].mode == "dot" and not only3.nl_blocks()[0].sub_sample
    assert video_resnet("c2d").nl_blocks() == [] and video_resnet("c2d", attention="none").nl_blocks() == []


@pytest.mark.parametrize("name", ["c2d", "i3d"])
def test_fresh_nl_model_equals_baseline(name):
    base = randomize_(video_resnet(name, 3), seed=5)
    nl = video_resnet(name, 3, "nl3d").double().eval()
    missing, unexpected = nl.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(".attn0." in k for k in missing)
    for block in nl.nl_blocks():                                            # everything but W_z random
        with torch.no_grad():
            for m in (block.g, block.theta, block.phi, block.W[0]):
                conv = m[0] if isinstance(m, nn.Sequential) else m
                conv.weight.normal_()
    x = clip(b=2, t=4, h=16, w=16)
    with torch.no_grad():
        assert torch.equal(nl(x), base(x))                                  # z = x + BN_0(W y) = x exactly


def test_return_attention_maps():
    model = randomize_(video_resnet("c2d", 2, "nl3d"), seed=6)
    x = clip(b=2, t=4, h=32, w=16)
    with torch.no_grad():
        logits, maps = model(x, return_attention=True)
        assert (logits - model(x)).abs().max() < 1e-10                     # explicit map vs fused kernel
    assert list(maps) == ["layer2.attn0", "layer3.attn0"]
    # stage 2: (T, H/4, W/4) = (4, 8, 4) queries, keys max-pooled 1×2×2: (4, 4, 2)
    assert maps["layer2.attn0"].shape == (2, 4 * 8 * 4, 4 * 4 * 2)
    assert maps["layer3.attn0"].shape == (2, 4 * 4 * 2, 4 * 2 * 1)
    for a in maps.values():
        assert (a >= 0).all() and (a.sum(-1) - 1).abs().max() < 1e-12
    assert all(site._store is None for site in model.modules() if isinstance(site, AttentionSite))


def test_backward_reaches_the_nl_weights():
    torch.manual_seed(0)
    model = video_resnet("c2d", 2, "nl3d", width=4)
    x, y = torch.randn(4, 3, 3, 16, 16), torch.tensor([0, 1, 1, 0])
    F.cross_entropy(model(x), y).backward()
    for block in model.nl_blocks():
        assert block.W[1].weight.grad.abs().sum() > 0                       # zero-initialised gate learns
        assert block.theta.weight.grad.abs().sum() == 0                     # nothing reaches θ while W_z = 0
    # with W_z open, the gradient of θ matches finite differences (float64, one NL block)
    model = randomize_(video_resnet("c2d", 2, "nl3d", width=2, nl_stages=(3,)), seed=7)
    theta = model.nl_blocks()[0].theta.weight                               # (d, C, 1, 1, 1)
    x = clip(b=1, t=2, h=16, w=16, seed=3)

    def score():
        out = model(x)
        return out[0, 1] - out[0, 0]

    score().backward()
    grad = theta.grad.clone()
    assert grad.abs().sum() > 0
    eps = 1e-6
    for idx in [(0, 0, 0, 0, 0), (1, 3, 0, 0, 0), (3, 7, 0, 0, 0)]:
        with torch.no_grad():
            theta[idx] += eps
            up = float(score())
            theta[idx] -= 2 * eps
            down = float(score())
            theta[idx] += eps
        fd = (up - down) / (2 * eps)
        assert abs(fd - float(grad[idx])) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("make, match", [
    (lambda: video_resnet("c3d"), "name"),
    (lambda: video_resnet("c2d", attention="se"), "attention"),
    (lambda: video_resnet("c2d", width=0), "width"),
    (lambda: video_resnet("c2d", num_classes=0), "num_classes"),
    (lambda: video_resnet("c2d", stage_blocks=(1, 1)), "stage_blocks"),
    (lambda: video_resnet("i3d", temporal_padding="circular"), "temporal_padding"),
    (lambda: video_resnet("c2d", mode="dot"), "attention"),
    (lambda: video_resnet("c2d", attention="nl3d", nl_stages=(4,)), "nl_stages"),
    (lambda: VideoResNet([(1,), (2,), (1,)]), "temporal_kernels"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_x_and_the_shape():
    model = video_resnet("c2d")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, T, H, W\).*unsqueeze"):
        model(torch.randn(2, 3, 32, 32))                                    # a batch of images
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(2, 1, 8, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(2, 3, 8, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="H, W >= 8"):
        model(torch.randn(1, 3, 8, 4, 4))
    with pytest.raises(ValueError, match="tensor"):
        model([[1.0]])
    with pytest.raises(ValueError, match="inflation"):
        inflate_state_dict(model.state_dict(), video_resnet("i3d"), "sum")
    with pytest.raises(ValueError, match="cannot inflate"):
        inflate_state_dict(video_resnet("i3d").state_dict(), model)
