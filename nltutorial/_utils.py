"""Small helpers shared by the attention blocks: argument checks and reduced widths.

Every block of the package validates its arguments the same way, so that a bad
argument raises ``ValueError`` naming the argument and what was expected:

    >>> reduced_channels(64, rd_ratio=1 / 16)          # C / r
    4
    >>> reduced_channels(8, rd_ratio=1 / 16)           # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ValueError: channels=8 is smaller than the reduction 1/rd_ratio=16 ...
    >>> reduced_channels(20, rd_ratio=1 / 8), reduced_channels(20, 1 / 8, rounding="floor")
    (3, 2)

The dtype rule of every block (:func:`check_dtype`): x must be a floating-point tensor of
the dtype of the block's parameters (float64 x needs ``block.double()``); under
``torch.autocast`` for x's device any floating dtype is accepted, since autocast casts the
operands itself. Otherwise a :class:`DtypeError` (a TypeError and a ValueError) names both.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["DtypeError", "ROUNDINGS", "check_batch_norm", "check_dtype", "check_image", "check_int", "check_odd",
           "check_positive_int", "check_ratio", "create_layer", "make_divisible", "reduced_channels"]

LayerSpec = Union[Callable[[], nn.Module], nn.Module]

#: Rules for the bottleneck width C·rd_ratio: "nearest" (halves up, the default) or "floor"
#: (⌊C/r⌋, the ``channels // reduction`` of the official SE, CBAM, BAM, DANet, SAGAN, GCNet codes).
ROUNDINGS = ("nearest", "floor")


class DtypeError(TypeError, ValueError):
    """x has the wrong dtype for a block (a TypeError; also a ValueError, like the other input checks)."""


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
                     rd_channels: Optional[int] = None, rounding: str = "nearest") -> int:
    """Width C' of a bottleneck: ``rd_channels`` if given, else C·rd_ratio rounded.

    This is the C/r of the papers (r = 1/rd_ratio). ``rounding="nearest"`` (default) rounds
    with :func:`make_divisible`; ``"floor"`` takes ⌊C·rd_ratio⌋ (then down to a multiple of
    ``rd_divisor``, at least ``rd_divisor``), the ``C // r`` of the official codes, whose
    checkpoints need it when r does not divide C (C = 20, r = 8: floor 2, nearest 3).
    Raises ValueError when C·rd_ratio < 1, i.e. when ``channels`` is smaller than the
    reduction r: the bottleneck would be empty. Pass ``rd_channels`` (or a larger
    ``rd_ratio``) to build a block on so few channels.
    """
    check_positive_int("channels", channels)
    check_positive_int("rd_divisor", rd_divisor)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rd_channels is not None:
        return check_positive_int("rd_channels", rd_channels)
    rd_ratio = check_ratio("rd_ratio", rd_ratio)
    if channels * rd_ratio < 1:
        raise ValueError(f"channels={channels} is smaller than the reduction 1/rd_ratio={1 / rd_ratio:g}: "
                         f"the bottleneck would have {channels * rd_ratio:g} < 1 channels; pass a "
                         f"larger rd_ratio or an explicit rd_channels")
    if rounding == "floor":
        floor = math.floor(round(channels * rd_ratio, 9))      # 49 · (1/49) = 0.999…: still 1
        return max(rd_divisor, floor // rd_divisor * rd_divisor)
    return make_divisible(channels * rd_ratio, rd_divisor)


def create_layer(name: str, layer: LayerSpec) -> nn.Module:
    """Instantiate an activation/gate argument: a module class or factory (called with no
    arguments, e.g. ``nn.ReLU`` or ``functools.partial(nn.LeakyReLU, 0.1)``), or a module instance."""
    if isinstance(layer, nn.Module):
        return layer
    expected = (f"{name} must be an nn.Module class such as nn.ReLU (not a function such as torch.relu), "
                f"a factory called with no arguments that returns a module, or a module instance")
    if callable(layer):
        try:
            module = layer()
        except TypeError as err:             # torch.relu(), F.gelu(): a tensor function, not a factory
            raise ValueError(f"{expected}; got {layer!r}, which cannot be called without arguments "
                             f"({err})") from None
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"{expected}, got {layer!r}")


def check_image(x, channels: Optional[int], name: str = "x", module: Optional[nn.Module] = None) -> None:
    """Raise ValueError unless ``x`` is a float tensor (B, channels, H, W), B, H, W ≥ 1 (any C if None).

    With ``module``, x's dtype must also be the dtype of its parameters (:func:`check_dtype`).
    """
    expected = f"(B, {'C' if channels is None else channels}, H, W)"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a tensor of shape {expected}, got {type(x).__name__}")
    if x.dim() != 4 or (channels is not None and x.shape[1] != channels) or min(x.shape) < 1:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    check_dtype(x, module, name)


def check_dtype(x: Tensor, module: Optional[nn.Module], name: str = "x") -> None:
    """Raise DtypeError unless x is floating point and, outside autocast, of ``module``'s parameter dtype.

    The block's parameters fix the dtype (they are all of one dtype after ``.double()`` or
    ``.half()``); under ``torch.autocast`` for x's device any floating x is accepted.
    """
    if not torch.is_floating_point(x):
        raise DtypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    param = next((p for p in module.parameters() if p.is_floating_point()), None) if module is not None else None
    if param is None or param.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
        return
    raise DtypeError(f"{name} has dtype {x.dtype} but the parameters of {type(module).__name__} have dtype "
                     f"{param.dtype}; convert one of them (x.to({param.dtype}) or block.to({x.dtype}))")


def check_batch_norm(x: Tensor, norm: nn.Module, values: int, what: str, name: str = "x") -> None:
    """Raise ValueError when the BatchNorm ``norm``, in training mode, would see fewer than 2 values
    per channel (``values``: B times the positions it normalises over); ``what`` says which one."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and values < 2:
        raise ValueError(f"{name} must give at least 2 values per channel to {what} in training mode, got "
                         f"shape {tuple(x.shape)} (1 value); use a batch of at least 2, or .eval() for a "
                         f"batch of one")
