"""Tests of nltutorial.factory.create_attention and the shared width helpers."""

import importlib

import pytest
import torch
from torch import nn

from nltutorial.bam import BAM
from nltutorial.cbam import CBAM
from nltutorial.danet import ChannelAttention, DualAttention, PositionAttention
from nltutorial.factory import ATTENTION_NAMES, create_attention, make_divisible, reduced_channels
from nltutorial.gcnet import ContextBlock
from nltutorial.sagan import SelfAttention2d
from nltutorial.se import SqueezeExcite

EXPECTED = {"se": SqueezeExcite, "cbam": CBAM, "bam": BAM, "pam": PositionAttention,
            "cam": ChannelAttention, "danet": DualAttention, "sagan": SelfAttention2d, "gc": ContextBlock}


def nonlocal_block_class():
    """NonLocalBlock, or skip: nltutorial.nonlocal_block is written separately."""
    try:
        return importlib.import_module("nltutorial.nonlocal_block").NonLocalBlock
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"nltutorial.nonlocal_block.NonLocalBlock is not importable ({exc!r}); 'nl' untested")


def test_names():
    assert set(ATTENTION_NAMES) == set(EXPECTED) | {"nl"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_each_block(name):
    block = create_attention(name, 32).eval()
    assert type(block) is EXPECTED[name]
    x = torch.randn(1, 32, 5, 7)
    assert block(x).shape == x.shape
    assert type(create_attention(name.upper(), 32)) is EXPECTED[name]


def test_nonlocal():
    cls = nonlocal_block_class()
    block = create_attention("nl", 32).eval()
    assert type(block) is cls and block.inter_channels == 16
    x = torch.randn(1, 32, 5, 7)
    assert block(x).shape == x.shape
    assert create_attention("nl", 32, rd_ratio=1 / 4).inter_channels == 8
    assert create_attention("nl", 32, rd_channels=5, sub_sample=False).inter_channels == 5
    assert create_attention("nl", 32, inter_channels=3, mode="dot").inter_channels == 3
    with pytest.raises(ValueError, match="inter_channels"):
        create_attention("nl", 32, inter_channels=3, rd_ratio=1 / 4)
    with pytest.raises(ValueError, match="act_layer"):
        create_attention("nl", 32, act_layer=nn.GELU)


def test_uniform_kwargs_are_forwarded():
    assert create_attention("se", 64, rd_ratio=1 / 8).rd_channels == 8
    assert create_attention("se", 24, rd_ratio=1 / 4, rd_divisor=8).rd_channels == 8
    assert isinstance(create_attention("se", 64, act_layer=nn.SiLU).act, nn.SiLU)
    assert isinstance(create_attention("cbam", 64, gate_layer=nn.Hardsigmoid).spatial_gate.gate, nn.Hardsigmoid)
    assert create_attention("bam", 64, rd_channels=7).channel.rd_channels == 7
    assert create_attention("gc", 64, rd_ratio=1 / 4, fusion=("mul",)).transform_mul is not None
    assert create_attention("pam", 64, rd_ratio=1).rd_channels == 64
    assert create_attention("cam", 64, cam_energy="official").cam_energy == "official"
    assert create_attention("sagan", 64, pool=True, value_rd_ratio=1 / 2).v is not None


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"name must be one of .*'se'.*'nl'"):
        create_attention("eca", 32)
    with pytest.raises(ValueError, match="name"):
        create_attention(None, 32)


@pytest.mark.parametrize("name, kwargs, arg", [
    ("cam", dict(rd_ratio=1 / 4), "rd_ratio"),                 # CAM has no bottleneck
    ("se", dict(kernel_size=7), "kernel_size"),
    ("pam", dict(act_layer=nn.ReLU), "act_layer"),
])
def test_unknown_kwarg_is_value_error(name, kwargs, arg):
    with pytest.raises(ValueError, match=f"unknown argument.*{arg}.*accepts"):
        create_attention(name, 32, **kwargs)


def test_block_errors_pass_through():
    with pytest.raises(ValueError, match="channels"):
        create_attention("se", 8)                                # 8 < r = 16
    with pytest.raises(ValueError, match="kernel_size"):
        create_attention("cbam", 32, kernel_size=4)


def test_width_helpers():
    assert reduced_channels(64, 1 / 16) == 4
    assert reduced_channels(20, 1 / 16) == 1                   # 1.25 rounds to 1
    assert reduced_channels(24, 1 / 16) == 2                   # 1.5 rounds half up
    assert reduced_channels(64, 1 / 16, rd_divisor=8) == 8     # at least one divisor
    assert reduced_channels(100, 1 / 4, rd_divisor=8) == 24
    assert reduced_channels(8, 1 / 16, rd_channels=3) == 3
    assert make_divisible(10, 8) == 16                          # 8 would lose > 10 %
    for kwargs, arg in [(dict(channels=8, rd_ratio=1 / 16), "channels"),
                        (dict(channels=True, rd_ratio=0.5), "channels"),
                        (dict(channels=8, rd_ratio=0.5, rd_divisor=2.5), "rd_divisor")]:
        with pytest.raises(ValueError, match=arg):
            reduced_channels(**kwargs)


# --------------------------------------------------------------------------------------
# dtype rule, layer arguments, official widths (issue 15, items 8 and 10)
# --------------------------------------------------------------------------------------

from nltutorial._utils import DtypeError  # noqa: E402


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_every_block_names_a_dtype_mismatch(name):
    block = create_attention(name, 32).eval()
    x = torch.randn(2, 32, 6, 6)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the parameters .* torch.float32"):
        block(x.double())
    with pytest.raises(ValueError, match="torch.float64.*torch.float32"):      # DtypeError is both
        block(x.double())
    with pytest.raises(DtypeError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        block(x.long())
    assert block.double()(x.double()).dtype == torch.float64                      # matching dtypes: fine
    with torch.autocast("cpu", dtype=torch.bfloat16):                             # autocast casts itself
        assert block.float()(x.bfloat16()).shape == x.shape


@pytest.mark.parametrize("name, arg", [("se", "act_layer"), ("cbam", "gate_layer"), ("gc", "act_layer")])
def test_a_tensor_function_as_layer_asks_for_a_module_class(name, arg):
    for fn in (torch.relu, torch.sigmoid, nn.functional.gelu):
        with pytest.raises(ValueError, match=rf"{arg} must be an nn.Module class such as nn.ReLU") as info:
            create_attention(name, 32, **{arg: fn})
        assert repr(fn) in str(info.value)


def _official(**children):
    """A bare module with the given children (and parameters) at the given names."""
    m = nn.Module()
    for key, value in children.items():
        if isinstance(value, nn.Parameter):
            m.register_parameter(key, value)
        else:
            m.add_module(key, value)
    return m


def _official_modules(C, r):
    """Official-style modules of width C // r (the official codes' integer division), named
    as this package names them (their nn.Linear layers written as the same 1×1 convolutions)."""
    p = C // r
    conv = lambda i, o, k=1, **kw: nn.Conv2d(i, o, k, **kw)  # noqa: E731
    se = _official(fc1=conv(C, p), fc2=conv(p, C))
    bam = _official(
        channel=_official(fc1=conv(C, p), bn1=nn.BatchNorm2d(p), fc2=conv(p, C)),
        spatial=_official(convs=nn.ModuleList([conv(C, p), conv(p, p, 3, padding=4, dilation=4),
                                               conv(p, p, 3, padding=4, dilation=4)]),
                          norms=nn.ModuleList([nn.BatchNorm2d(p) for _ in range(3)]), conv_final=conv(p, 1)))
    return {
        "se": (se, {}),
        "cbam": (_official(channel_gate=se, spatial_gate=_official(conv=conv(2, 1, 7, padding=3))), {}),
        "bam": (bam, {"bn_layout": "official"}),
        "pam": (_official(query=conv(C, C // 8), key=conv(C, C // 8), value=conv(C, C),
                          gamma=nn.Parameter(torch.zeros(1))), {"rd_ratio": 1 / 8}),
        "sagan": (_official(f=conv(C, C // 8, bias=False), g=conv(C, C // 8, bias=False),
                            h=conv(C, C // 2, bias=False), v=conv(C // 2, C, bias=False),
                            gamma=nn.Parameter(torch.zeros(1))),
                  {"rd_ratio": 1 / 8, "value_rd_ratio": 1 / 2, "pool": True, "bias": False}),
        "gc": (_official(conv_mask=conv(C, 1), transform_add=nn.Sequential(
            conv(C, p), nn.LayerNorm([p, 1, 1]), nn.ReLU(), conv(p, C))), {}),
    }


@pytest.mark.parametrize("name", ["se", "cbam", "bam", "pam", "sagan", "gc"])
def test_floor_rounding_loads_official_checkpoints_at_c20(name):
    C, r = 20, 8                                    # 20 / 8 = 2.5: floor 2, nearest 3
    official, kwargs = _official_modules(C, r)[name]
    kwargs = {"rd_ratio": 1 / r, **kwargs}
    state = official.state_dict()
    ours = create_attention(name, C, rd_rounding="floor", **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in state.items()}
    ours.load_state_dict(state)                     # strict
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_attention(name, C, **kwargs).load_state_dict(state)    # the default rule: width 3


def test_rounding_rule_of_reduced_channels():
    assert reduced_channels(20, 1 / 8) == 3 and reduced_channels(20, 1 / 8, rounding="floor") == 2
    assert reduced_channels(48, 1 / 3, rounding="floor") == 16        # 48 · (1/3) is not exactly 16
    assert reduced_channels(40, 1 / 8, 4, rounding="floor") == 4              # 5 down to a multiple of 4
    assert reduced_channels(44, 1 / 4, 8, rounding="floor") == 8              # 11 down to 8
    with pytest.raises(ValueError, match="rounding must be one of"):
        reduced_channels(20, 1 / 8, rounding="ceil")
    nl = nonlocal_block_class()
    assert isinstance(create_attention("nl", 20, rd_ratio=1 / 8, rd_rounding="floor"), nl)
    assert create_attention("nl", 20, rd_ratio=1 / 8, rd_rounding="floor").inter_channels == 2
