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
