r"""CBAM, Woo, Park, Lee & Kweon, *CBAM: Convolutional Block Attention Module* (ECCV 2018).

CBAM applies a channel gate and then a spatial gate, in series (§3, eq. 1)::

    F'  = M_c(F) ⊗ F                                            M_c(F) ∈ R^{C×1×1}
    F'' = M_s(F') ⊗ F'                                          M_s(F') ∈ R^{1×H×W}

Channel attention (eq. 2): both the average- and the max-pooled descriptors go through one
shared MLP (hidden width C/r, ReLU), the two outputs are summed, then a sigmoid::

    M_c(F) = σ(MLP(AvgPool(F)) + MLP(MaxPool(F))) = σ(W_1 δ(W_0 F^c_avg) + W_1 δ(W_0 F^c_max))

Spatial attention (eq. 3): average and max over the channels, concatenated, a k×k
convolution (k = 7, padding 3, one output channel), then a sigmoid::

    M_s(F) = σ(f^{7×7}([AvgPool(F); MaxPool(F)]))

Paper versus official code (``Jongchan/attention-module``)
---------------------------------------------------------
Both differences are options; the defaults follow the paper.

* ``spatial_bn`` (default False, paper): the official code follows f^{7×7} by a
  BatchNorm2d(1) (its convolution then has no bias, and the BN momentum is 0.01).
  ``spatial_bn=True`` reproduces that.
* ``spatial_order`` (default "avg_max", paper's [AvgPool; MaxPool]): the official code
  concatenates [max; mean]. ``"max_avg"`` reproduces that order (it only permutes the
  two input channels of the 7×7 convolution, which matters when loading weights).

The MLP layers are 1×1 convolutions with bias on the (B, C, 1, 1) descriptors (the
official code uses ``nn.Linear`` on the flattened descriptor: the same map).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._utils import LayerSpec, check_batch_norm, check_image, check_odd, create_layer
from .se import SqueezeExcite

__all__ = ["CBAM", "ChannelGate", "SpatialGate"]

SPATIAL_ORDERS = ("avg_max", "max_avg")


class ChannelGate(SqueezeExcite):
    r"""Channel attention of CBAM (eq. 2): F' = σ(MLP(AvgPool(F)) + MLP(MaxPool(F))) ⊗ F.

    The same shared MLP as SE (fc1 = W_0, fc2 = W_1, hidden width C/r, r = 16), fed with the
    max-pooled descriptor as well as the average-pooled one; arguments as for
    :class:`~nltutorial.se.SqueezeExcite`.
    """

    def attention(self, x: Tensor) -> Tensor:
        """M_c(x), shape (B, C, 1, 1)."""
        avg = x.mean(dim=(2, 3), keepdim=True)      # (B, C, 1, 1) F^c_avg
        mx = x.amax(dim=(2, 3), keepdim=True)       # (B, C, 1, 1) F^c_max
        return self.gate(self.mlp(avg) + self.mlp(mx))



class SpatialGate(nn.Module):
    r"""Spatial attention of CBAM (eq. 3): F'' = σ(f^{k×k}([AvgPool_c(F); MaxPool_c(F)])) ⊗ F.

    Args:
        kernel_size: k, odd (7 in the paper); padding (k − 1)/2 keeps H×W.
        spatial_bn: BatchNorm2d(1) after the convolution, as in the official code
            (default False: paper, no BN, convolution with bias).
        spatial_order: "avg_max" ([avg; max], paper, default) or "max_avg" (official code).
        gate_layer: σ (sigmoid).
    """

    def __init__(self, kernel_size: int = 7, spatial_bn: bool = False, spatial_order: str = "avg_max",
                 gate_layer: LayerSpec = nn.Sigmoid) -> None:
        super().__init__()
        check_odd("kernel_size", kernel_size)
        if spatial_order not in SPATIAL_ORDERS:
            raise ValueError(f"spatial_order must be one of {SPATIAL_ORDERS}, got {spatial_order!r}")
        self.kernel_size, self.spatial_bn, self.spatial_order = kernel_size, bool(spatial_bn), spatial_order
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=not spatial_bn)
        self.bn = nn.BatchNorm2d(1, momentum=0.01) if spatial_bn else nn.Identity()
        self.gate = create_layer("gate_layer", gate_layer)

    def attention(self, x: Tensor) -> Tensor:
        """M_s(x), shape (B, 1, H, W)."""
        check_batch_norm(x, self.bn, x.shape[0] * x.shape[2] * x.shape[3],
                         "the BatchNorm of the (B, 1, H, W) spatial map (spatial_bn=True)")
        avg = x.mean(dim=1, keepdim=True)           # (B, 1, H, W) F^s_avg
        mx = x.amax(dim=1, keepdim=True)            # (B, 1, H, W) F^s_max
        pooled = torch.cat([avg, mx] if self.spatial_order == "avg_max" else [mx, avg], dim=1)  # (B, 2, H, W)
        return self.gate(self.bn(self.conv(pooled)))

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, None, module=self)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, spatial_bn={self.spatial_bn}, "
                f"spatial_order={self.spatial_order!r}")


class CBAM(nn.Module):
    r"""Convolutional Block Attention Module: F' = M_c(F) ⊗ F, F'' = M_s(F') ⊗ F'.

    Args:
        channels: C.
        rd_ratio, rd_divisor, rd_channels: hidden width C/r of the channel MLP (r = 16).
        kernel_size: k of the spatial convolution (odd, default 7).
        spatial_bn: official-code BatchNorm after the spatial convolution (default False, paper).
        spatial_order: "avg_max" (paper, default) or "max_avg" (official code).
        act_layer: hidden activation of the channel MLP (ReLU).
        gate_layer: σ of both gates (sigmoid).
        rd_rounding: "nearest" (default) or "floor" (⌊C/r⌋, as the official code).

    Shapes: (B, C, H, W) -> (B, C, H, W); x of the parameters' dtype (see ``_utils.check_dtype``).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, kernel_size: int = 7,
                 rd_divisor: int = 1, rd_channels: Optional[int] = None, spatial_bn: bool = False,
                 spatial_order: str = "avg_max", act_layer: LayerSpec = nn.ReLU,
                 gate_layer: LayerSpec = nn.Sigmoid, rd_rounding: str = "nearest") -> None:
        super().__init__()
        self.channels = channels
        self.channel_gate = ChannelGate(channels, rd_ratio, rd_divisor, rd_channels, act_layer, gate_layer,
                                        rd_rounding=rd_rounding)
        self.spatial_gate = SpatialGate(kernel_size, spatial_bn, spatial_order, gate_layer)

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.channels, module=self)
        x = x * self.channel_gate.attention(x)         # F'  = M_c(F) ⊗ F
        return x * self.spatial_gate.attention(x)      # F'' = M_s(F') ⊗ F'
