"""CIFAR ResNets of nltutorial.models: sizes, shapes, attention placement, identity at init."""

import pytest
import torch
from torch import nn

from nltutorial.bam import BAM
from nltutorial.cbam import CBAM
from nltutorial.danet import DualAttention
from nltutorial.gcnet import ContextBlock
from nltutorial.models import (AttentionSite, BasicBlock, cifar_resnet, resnet18_cifar, resnet20,
                               resnet56)
from nltutorial.nonlocal_block import NonLocalBlock
from nltutorial.se import SqueezeExcite


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def expected_option_a(n, widths=(16, 32, 64), classes=10):
    """Parameters of the 6n+2 ResNet with option-A shortcuts, from the architecture."""
    total = 3 * widths[0] * 9 + 2 * widths[0]                     # stem conv + BN
    c_in = widths[0]
    for w in widths:
        for _ in range(n):
            total += 9 * c_in * w + 9 * w * w + 2 * (2 * w)       # two 3×3 convs, two BNs
            c_in = w
    return total + c_in * classes + classes                       # fc


def test_parameter_counts_match_paper():
    r20, r56 = n_params(resnet20()), n_params(resnet56())
    assert r20 == expected_option_a(3) == 269_722
    assert r56 == expected_option_a(9) == 853_018
    assert round(r20 / 1e6, 2) == 0.27 and round(r56 / 1e6, 2) == 0.85   # Table 6
    assert n_params(cifar_resnet(32)) == expected_option_a(5)
    assert round(n_params(resnet18_cifar()) / 1e6, 2) == 11.17
    # option B adds a 1×1 conv + BN at the two shape changes
    extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert n_params(resnet20(shortcut="B")) == 269_722 + extra


@pytest.mark.parametrize("factory", [resnet20, resnet56, resnet18_cifar])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(factory, batch):
    model = factory().eval()
    with torch.no_grad():
        assert model(torch.randn(batch, 3, 32, 32)).shape == (batch, 10)
    assert factory(num_classes=100).fc.out_features == 100


def test_names_and_depths():
    assert cifar_resnet("resnet56").stage_blocks == (9, 9, 9)
    assert cifar_resnet(110).stage_blocks == (18, 18, 18)
    assert cifar_resnet("resnet18_cifar").stage_blocks == (2, 2, 2, 2)
    assert cifar_resnet(18).widths == (64, 128, 256, 512)
    assert isinstance(resnet20().layer2[0].shortcut, nn.Module)
    assert isinstance(resnet18_cifar().layer2[0].shortcut, nn.Sequential)   # option B


# attention -> (type, count in ResNet-20, count in ResNet-56, count in ResNet-18, where)
EXPECTED = {
    "se": (SqueezeExcite, 9, 27, 8, "residual"),
    "cbam": (CBAM, 9, 27, 8, "residual"),
    "gc": (ContextBlock, 9, 27, 8, "residual"),
    "bam": (BAM, 2, 2, 3, "after"),
    "nl": (NonLocalBlock, 2, 8, 2, "after"),
    "danet": (DualAttention, 2, 8, 2, "after"),
}


@pytest.mark.parametrize("attention", list(EXPECTED))
def test_default_placement_counts(attention):
    cls, c20, c56, c18, where = EXPECTED[attention]
    for factory, count in ((resnet20, c20), (resnet56, c56), (resnet18_cifar, c18)):
        model = factory(attention=attention)
        mods = model.attention_modules()
        assert len(mods) == count and all(type(m) is cls for m in mods), (factory.__name__, mods)
        names = [n for n, _ in model.named_attention_modules()]
        if where == "residual":
            assert all(n.endswith(".attn") for n in names)
        else:
            assert all(".attn" in n and not n.endswith(".attn") for n in names)
    if attention in ("nl", "danet"):
        names = [n for n, _ in resnet56(attention=attention).named_attention_modules()]
        assert names == [f"layer{s}.attn{b}" for s in (2, 3) for b in (1, 3, 5, 7)]
    if attention == "bam":
        assert [n for n, _ in resnet20(attention="bam").named_attention_modules()] == \
            ["layer1.attn2", "layer2.attn2"]


def test_nl_sub_sample_default_and_kwargs():
    model = resnet20(attention="nl")
    assert all(b.sub_sample for b in model.nl_blocks())
    assert [b.in_channels for b in model.nl_blocks()] == [32, 64]
    model = resnet20(attention="nl", mode="dot", sub_sample=False)
    assert all(b.mode == "dot" and not b.sub_sample for b in model.nl_blocks())


@pytest.mark.parametrize("attention", ["se", "cbam", "bam", "gc", "nl", "danet", "pam", "cam", "sagan"])
def test_forward_backward(attention):
    torch.manual_seed(0)
    model = resnet20(attention=attention).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.attention_modules()[0].parameters() if p.requires_grad)
    assert model.conv1.weight.grad is not None


def test_forward_backward_resnet18_nl():
    model = resnet18_cifar(attention="nl").train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    blocks = model.nl_blocks()
    assert blocks, "resnet18_cifar(attention='nl') placed no non-local block"
    for block in blocks:  # the zero-initialised BN after W gets a gradient at the first step
        grads = [p.grad for p in block.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("attention", ["nl", "danet", "gc", "pam", "cam"])
@pytest.mark.parametrize("factory", [resnet20, resnet18_cifar])
def test_identity_at_init(attention, factory):
    torch.manual_seed(0)
    plain = factory().eval()
    with torch.no_grad():                                   # non-trivial BN statistics
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model = factory(attention=attention).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".attn" in k for k in missing) and missing
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=1e-5, atol=1e-5)


def test_return_attention_maps():
    model = resnet20(attention="nl").eval()
    x = torch.randn(2, 3, 32, 32)
    logits, maps = model(x, return_attention=True)
    assert list(maps) == ["layer2.attn1", "layer3.attn1"]
    assert maps["layer2.attn1"].shape == (2, 16 * 16, 8 * 8)   # sub-sampled keys
    assert maps["layer3.attn1"].shape == (2, 8 * 8, 4 * 4)
    torch.testing.assert_close(maps["layer2.attn1"].sum(-1), torch.ones(2, 256))
    torch.testing.assert_close(logits, model(x))
    assert all(site._store is None for site in model.modules() if isinstance(site, AttentionSite))
    # a block fetched from the model can be run on its own
    nl = model.nl_blocks()[0]
    z, attn = nl(torch.randn(1, 32, 16, 16), return_attention=True)
    assert attn.shape == (1, 256, 64)


def test_placement_overrides():
    m = resnet20(attention="nl", placement=[(1, 0), (3, 2)])
    assert [n for n, _ in m.named_attention_modules()] == ["layer1.attn0", "layer3.attn2"]
    m = resnet20(attention="nl", placement={"stages": (3,), "every": 1})
    assert [n for n, _ in m.named_attention_modules()] == ["layer3.attn0", "layer3.attn1", "layer3.attn2"]
    m = resnet20(attention="se", placement={"stages": (2, 3)})
    assert len(m.attention_modules()) == 6 and m.layer1[0].attn is None
    m = resnet20(attention="se", placement={"where": "after", "stages": (3,), "every": 3})
    assert [n for n, _ in m.named_attention_modules()] == ["layer3.attn2"]
    m = resnet20(attention="nl", placement={"where": "residual", "blocks": [(2, 1)]})
    assert isinstance(m.layer2[1].attn.attn, NonLocalBlock)
    m(torch.randn(2, 3, 32, 32)).sum().backward()


def test_init():
    model = resnet20(attention="nl", zero_init_residual=True)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.all(b.bn2.weight == 0) for b in blocks)
    assert all(torch.all(b.bn1.weight == 1) for b in blocks)
    # the NL block keeps its zero-initialised W_z BatchNorm
    assert all(torch.all(b.W[1].weight == 0) for b in model.nl_blocks())
    std = resnet56().layer3[0].conv2.weight.std().item()
    assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.01                # Kaiming, fan_out


@pytest.mark.parametrize("kwargs, name", [
    (dict(depth_or_name=21), "depth_or_name"),
    (dict(depth_or_name=2), "depth_or_name"),
    (dict(depth_or_name="resnet51"), "depth_or_name"),
    (dict(depth_or_name="vgg16"), "depth_or_name"),
    (dict(depth_or_name=20.0), "depth_or_name"),
    (dict(depth_or_name=20, attention="transformer"), "attention"),
    (dict(depth_or_name=20, attention="nl", placement=[(4, 0)]), "placement"),
    (dict(depth_or_name=20, attention="nl", placement=[(2, 3)]), "placement"),
    (dict(depth_or_name=20, attention="nl", placement={"where": "inside"}), "placement"),
    (dict(depth_or_name=20, attention="nl", placement={"stages": (0,)}), "placement"),
    (dict(depth_or_name=20, attention="nl", placement={"every": 0}), "placement"),
    (dict(depth_or_name=20, attention="nl", placement={"foo": 1}), "placement"),
    (dict(depth_or_name=20, placement=[(2, 1)]), "placement"),
    (dict(depth_or_name=20, shortcut="C"), "shortcut"),
    (dict(depth_or_name=20, num_classes=0), "num_classes"),
])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        cifar_resnet(**kwargs)


def test_bad_attention_kwarg():
    with pytest.raises(ValueError, match="unknown argument"):
        resnet20(attention="se", bogus=1)
