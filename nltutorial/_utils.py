"""Small helpers shared by the attention blocks: argument checks and reduced widths.

Every block of the package validates its arguments the same way, so that a bad
argument raises ``ValueError`` naming the argument and what was expected:

    >>> reduced_channels(64, rd_ratio=1 / 16)          # C / r
    4
    >>> reduced_channels(8, rd_ratio=1 / 16)           # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: channels=8 is smaller than the reduction 1/rd_ratio=16 ...
"""

from __future__ import annotations

import numbers
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["check_image", "check_int", "check_odd", "check_positive_int", "check_ratio", "create_layer",
           "make_divisible", "reduced_channels"]

LayerSpec = Union[Callable[[], nn.Module], nn.Module]


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is an int ≥ 1 (bools refused), else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_int(name: str, value, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer ≥ ``minimum`` (bools refused), else raise
    ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_odd(name: str, value) -> int:
    """Return ``value`` if it is an odd positive int (a window with a centre), else raise ValueError."""
    check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd so that the window has a centre pixel, got {value!r}")
    return int(value)


def check_ratio(name: str, value) -> float:
    """Return ``value`` as a float if 0 < value ≤ 1, else raise ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a float in (0, 1] (e.g. 1/16 for r = 16), got {value!r}")
    return float(value)


def make_divisible(v: float, divisor: int = 1, min_value: Optional[int] = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``, default ``divisor``).

    With ``divisor > 1``, if the rounding lost more than 10 % of ``v`` one more ``divisor``
    is added (the rule used by the MobileNet family).  With ``divisor=1`` this is ordinary
    rounding of v, halves up (C/r itself whenever r divides C).
    """
    check_positive_int("divisor", divisor)
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if divisor > 1 and new_v < 0.9 * v:
        new_v += divisor
    return new_v


def reduced_channels(channels: int, rd_ratio: float, rd_divisor: int = 1,
                     rd_channels: Optional[int] = None) -> int:
    """Width C' of a bottleneck: ``rd_channels`` if given, else C·rd_ratio rounded by :func:`make_divisible`.

    This is the C/r of the papers (r = 1/rd_ratio).  Raises ValueError when C·rd_ratio < 1,
    i.e. when ``channels`` is smaller than the reduction r: the bottleneck would be empty.
    Pass ``rd_channels`` (or a larger ``rd_ratio``) to build a block on so few channels.
    """
    check_positive_int("channels", channels)
    check_positive_int("rd_divisor", rd_divisor)
    if rd_channels is not None:
        return check_positive_int("rd_channels", rd_channels)
    rd_ratio = check_ratio("rd_ratio", rd_ratio)
    if channels * rd_ratio < 1:
        raise ValueError(f"channels={channels} is smaller than the reduction 1/rd_ratio={1 / rd_ratio:g}: "
                         f"the bottleneck would have {channels * rd_ratio:g} < 1 channels; pass a "
                         f"larger rd_ratio or an explicit rd_channels")
    return make_divisible(channels * rd_ratio, rd_divisor)


def create_layer(name: str, layer: LayerSpec) -> nn.Module:
    """Instantiate an activation/gate argument: a module class or factory (called with no
    arguments, e.g. ``nn.ReLU`` or ``functools.partial(nn.LeakyReLU, 0.1)``), or a module instance."""
    if isinstance(layer, nn.Module):
        return layer
    if callable(layer):
        module = layer()
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{name} must be an nn.Module class (e.g. nn.ReLU), a factory returning a module, "
                     f"or a module instance, got {layer!r}")


def check_image(x, channels: Optional[int], name: str = "x") -> None:
    """Raise ValueError unless ``x`` is a float tensor (B, channels, H, W), B, H, W ≥ 1 (any C if None)."""
    expected = f"(B, {'C' if channels is None else channels}, H, W)"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels) or min(x.shape) < 1:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
