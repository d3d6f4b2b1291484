"""``create_attention``: build any attention block of the package by name.

    >>> block = create_attention("cbam", 64, rd_ratio=1 / 8)
    >>> block = create_attention("nl", 64, rd_ratio=1 / 4)      # NonLocalBlock, inter_channels 16

Every block maps (B, C, H, W) to (B, C, H, W). The keyword arguments are the block's own;
the timm-style ones are shared where they apply:

    rd_ratio, rd_divisor, rd_channels   width of the bottleneck / embedding, C·rd_ratio
    rd_rounding                         "nearest" (default) or "floor" (⌊C/r⌋, official codes)
    act_layer                           hidden activation (se, cbam, bam, gc): a module
                                        class such as nn.ReLU, not a function (torch.relu)
    gate_layer                          the sigmoid gate (se, cbam, bam), e.g. nn.Sigmoid

For "nl" (:class:`~nltutorial.nonlocal_block.NonLocalBlock`) the width arguments are
translated to ``inter_channels`` (its default width is C/2, i.e. ``rd_ratio=1/2``).
An argument a block does not take raises ValueError listing those it takes.
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from ._utils import make_divisible, reduced_channels

__all__ = ["ATTENTION_NAMES", "create_attention", "make_divisible", "reduced_channels"]

# name -> (module, class name); imported lazily so that a missing module only breaks its name.
_REGISTRY = {
    "se": ("se", "SqueezeExcite"),
    "cbam": ("cbam", "CBAM"),
    "bam": ("bam", "BAM"),
    "pam": ("danet", "PositionAttention"),
    "cam": ("danet", "ChannelAttention"),
    "danet": ("danet", "DualAttention"),
    "sagan": ("sagan", "SelfAttention2d"),
    "gc": ("gcnet", "ContextBlock"),
    "nl": ("nonlocal_block", "NonLocalBlock"),
}
ATTENTION_NAMES = tuple(_REGISTRY)

_WIDTH_KWARGS = ("rd_ratio", "rd_divisor", "rd_channels", "rd_rounding")


def _block_class(name: str):
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f".{module}", __package__), cls)


def _nonlocal_kwargs(channels: int, kwargs: dict) -> dict:
    """Translate rd_ratio / rd_divisor / rd_channels to NonLocalBlock's inter_channels."""
    width = {k: kwargs.pop(k) for k in _WIDTH_KWARGS if k in kwargs}
    if width:
        if "inter_channels" in kwargs:
            raise ValueError(f"give either inter_channels or {', '.join(width)} for 'nl', not both")
        kwargs["inter_channels"] = reduced_channels(channels, width.get("rd_ratio", 0.5),
                                                    width.get("rd_divisor", 1), width.get("rd_channels"),
                                                    width.get("rd_rounding", "nearest"))
    return kwargs


def create_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention block ``name`` for ``channels`` input channels.

    Args:
        name: one of ``ATTENTION_NAMES``: "se", "cbam", "bam", "pam", "cam", "danet",
            "sagan", "gc", "nl" (case-insensitive).
        channels: C of the (B, C, H, W) input.
        **kwargs: the block's keyword arguments (see the module docstring).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"name must be one of {ATTENTION_NAMES}, got {name!r}")
    cls = _block_class(key)
    if key == "nl":
        kwargs = _nonlocal_kwargs(channels, dict(kwargs))
    params = inspect.signature(cls).parameters
    first = next(iter(params))                                   # channels / in_channels
    accepted = [p for p in params if p != first]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        extra = list(_WIDTH_KWARGS) if key == "nl" else []
        raise ValueError(f"{cls.__name__} ({key!r}) got unknown argument(s) {unknown}; "
                         f"it accepts {accepted + extra}")
    return cls(channels, **kwargs)
