r"""BAM, Park, Woo, Lee & Kweon, *BAM: Bottleneck Attention Module* (BMVC 2018).

BAM computes a channel map and a spatial map *in parallel*, broadcasts and sums them into
one 3D attention map, and applies it residually (§3, eq. 1 and 4)::

    M(F) = σ(M_c(F) + M_s(F))          M_c(F) ∈ R^{C×1×1}, M_s(F) ∈ R^{1×H×W}, M(F) ∈ R^{C×H×W}
    F'   = F + F ⊗ M(F)  =  F ⊗ (1 + M(F))

Channel branch (eq. 2): global average pooling, an MLP with one hidden layer of C/r
units, and a BatchNorm "to adjust the scale with the spatial branch output"::

    M_c(F) = BN(MLP(AvgPool(F))) = BN(W_1 δ(W_0 AvgPool(F) + b_0) + b_1)

Spatial branch (eq. 3): 1×1 convolution C → C/r, two 3×3 convolutions with dilation
d = 4 at C/r channels, a 1×1 convolution C/r → 1 (BN + ReLU between the convolutions),
and a final BatchNorm::

    M_s(F) = BN(f_3^{1×1}(f_2^{3×3}(f_1^{3×3}(f_0^{1×1}(F)))))

Paper versus official code (``Jongchan/attention-module``)
---------------------------------------------------------
Both differences are options; the defaults follow the paper.

* ``bn_layout`` — "paper" (default): BN after the MLP output (C channels) and after the
  last 1×1 convolution of the spatial branch (1 channel). "official": the BN of the
  channel branch sits on the hidden layer (Linear → BN → ReLU → Linear) and the spatial
  branch ends with the bare 1×1 convolution (no final BN).
* ``combine`` — "sum" (default, paper): M = σ(M_c + M_s). "product" (official code):
  M = σ(M_c ⊗ M_s).

In both, F' = F ⊗ (1 + M). The paper writes δ implicitly in the MLP of eq. (2); the hidden
ReLU is used here (as in the official code). BatchNorm over the (B, C, 1, 1) channel
descriptors needs B ≥ 2 in training mode: a batch of one is refused then (eval() is fine).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ._utils import LayerSpec, check_image, check_positive_int, create_layer, reduced_channels

__all__ = ["BAM", "ChannelBranch", "SpatialBranch"]

BN_LAYOUTS = ("paper", "official")
COMBINES = ("sum", "product")


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class ChannelBranch(nn.Module):
    r"""M_c(F) of BAM (eq. 2), shape (B, C, 1, 1), before the sigmoid.

    "paper":    AvgPool → W_0 (C → C/r) → δ → W_1 (C/r → C) → BN(C)
    "official": AvgPool → W_0 → BN(C/r) → δ → W_1
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, bn_layout: str = "paper",
                 act_layer: LayerSpec = nn.ReLU, rd_rounding: str = "nearest") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        self.bn_layout = _check_choice("bn_layout", bn_layout, BN_LAYOUTS)
        self.channels, self.rd_channels = channels, rd
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1)                                # W_0, b_0
        self.bn1 = nn.BatchNorm2d(rd) if bn_layout == "official" else nn.Identity()
        self.act = create_layer("act_layer", act_layer)                                   # δ
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1)                                # W_1, b_1
        self.bn2 = nn.BatchNorm2d(channels) if bn_layout == "paper" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        z = x.mean(dim=(2, 3), keepdim=True)                     # (B, C, 1, 1)
        return self.bn2(self.fc2(self.act(self.bn1(self.fc1(z)))))  # (B, C, 1, 1)


class SpatialBranch(nn.Module):
    r"""M_s(F) of BAM (eq. 3), shape (B, 1, H, W), before the sigmoid.

    f_0 1×1 (C → C/r) → BN → δ → f_1 3×3 dil d → BN → δ → f_2 3×3 dil d → BN → δ
    → f_3 1×1 (C/r → 1) → BN(1) ("paper"; no final BN with "official").
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, dilation: int = 4, bn_layout: str = "paper",
                 act_layer: LayerSpec = nn.ReLU, rd_rounding: str = "nearest") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        check_positive_int("dilation", dilation)
        self.bn_layout = _check_choice("bn_layout", bn_layout, BN_LAYOUTS)
        self.channels, self.rd_channels, self.dilation = channels, rd, dilation
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, rd, kernel_size=1),                                        # f_0
            nn.Conv2d(rd, rd, kernel_size=3, padding=dilation, dilation=dilation),         # f_1
            nn.Conv2d(rd, rd, kernel_size=3, padding=dilation, dilation=dilation),         # f_2
        ])
        self.norms = nn.ModuleList([nn.BatchNorm2d(rd) for _ in range(3)])
        self.act = create_layer("act_layer", act_layer)
        self.conv_final = nn.Conv2d(rd, 1, kernel_size=1)                                 # f_3
        self.bn_final = nn.BatchNorm2d(1) if bn_layout == "paper" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = self.act(norm(conv(x)))                # (B, C/r, H, W), H×W kept by padding = d
        return self.bn_final(self.conv_final(x))       # (B, 1, H, W)


class BAM(nn.Module):
    r"""Bottleneck Attention Module: F' = F ⊗ (1 + σ(M_c(F) + M_s(F))).

    Args:
        channels: C.
        rd_ratio: 1/r for both branches (paper r = 16).
        dilation: d of the two 3×3 convolutions of the spatial branch (paper d = 4).
        rd_divisor, rd_channels: see :func:`nltutorial._utils.reduced_channels`.
        bn_layout: "paper" (default) or "official", see the module docstring.
        combine: "sum" (default, paper, σ(M_c + M_s)) or "product" (official, σ(M_c ⊗ M_s)).
        act_layer: δ of both branches (ReLU).
        gate_layer: σ (sigmoid).
        rd_rounding: "nearest" (default) or "floor" (⌊C/r⌋, as the official code).

    Shapes: (B, C, H, W) -> (B, C, H, W); x of the parameters' dtype (see ``_utils.check_dtype``).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, dilation: int = 4, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, bn_layout: str = "paper", combine: str = "sum",
                 act_layer: LayerSpec = nn.ReLU, gate_layer: LayerSpec = nn.Sigmoid,
                 rd_rounding: str = "nearest") -> None:
        super().__init__()
        self.channels = channels
        self.combine = _check_choice("combine", combine, COMBINES)
        self.channel = ChannelBranch(channels, rd_ratio, rd_divisor, rd_channels, bn_layout, act_layer,
                                     rd_rounding)
        self.spatial = SpatialBranch(channels, rd_ratio, rd_divisor, rd_channels, dilation, bn_layout,
                                     act_layer, rd_rounding)
        self.gate = create_layer("gate_layer", gate_layer)

    def attention(self, x: Tensor) -> Tensor:
        """M(F), shape (B, C, H, W)."""
        check_image(x, self.channels, module=self)
        if self.training and x.shape[0] < 2:
            raise ValueError(f"x must have a batch of at least 2 in training mode (BatchNorm over the "
                             f"(B, C, 1, 1) channel descriptors), got shape {tuple(x.shape)}; use .eval() "
                             f"for a batch of one")
        mc = self.channel(x)                           # (B, C, 1, 1)
        ms = self.spatial(x)                           # (B, 1, H, W)
        return self.gate(mc + ms if self.combine == "sum" else mc * ms)   # (B, C, H, W) by broadcasting

    def forward(self, x: Tensor) -> Tensor:
        return x * (1 + self.attention(x))             # F + F ⊗ M(F)
