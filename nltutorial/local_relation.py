r"""Local relation layer, Hu, Zhang, Xie & Lin, *Local Relation Networks for Image
Recognition* (ICCV 2019).

A local relation (LR) layer replaces a k×k convolution. Its aggregation weights are not
fixed filters: they are computed, per output position p', from the appearance of the
pixel pairs (p', p) of the k×k window Ω_{p'} and from their relative position (§3)::

    ω(p', p) = softmax_{p ∈ Ω_{p'}}( Φ(f_θq(x_{p'}), f_θk(x_p)) + f_θg(p − p') )
    y_{p'}   = Σ_{p ∈ Ω_{p'}} ω(p', p) x_p

* keys and queries f_θk, f_θq: 1×1 convolutions to G = C/m channels;
* channel sharing: the C channels of x are split into G contiguous groups of m channels
  (m = 8 in the paper); group g uses the scalar query/key channel g, so all m channels
  of a group share one k×k weight map;
* appearance composability Φ, per group (``composability``)::

      "squared_difference"   Φ(q, k) = −(q − k)²        (default)
      "absolute_difference"  Φ(q, k) = −|q − k|
      "product" (or "dot")   Φ(q, k) = q · k

* geometry prior f_θg: a small network 1×1 conv (2 → hidden) – ReLU – 1×1 conv
  (hidden → G) applied to the fixed k×k map of relative offsets p − p' = (Δy, Δx), a
  registered buffer (integers −r … r, r = (k − 1)/2); one k×k prior per group. The
  hidden width (``geometry_channels``, default max(1, G // 2)) is a choice of this
  implementation;
* the softmax runs over the k×k window. Neighbours outside the image are *masked out*
  (their score is −∞ before the softmax), not treated as zero features, so every
  output is a convex combination of real pixels;
* ``stride`` s subsamples the query positions: p' runs over (s·i, s·j), output size
  ⌊(H − 1)/s⌋ + 1 × ⌊(W − 1)/s⌋ + 1, the size of a k×k convolution with padding r;
* in the paper the layer keeps the channel count. Here ``out_channels`` may differ from
  ``in_channels``: the aggregated values are then a 1×1 projection x ↦ W_v x (no bias)
  to ``out_channels`` channels (W_v = identity, absent, when they are equal), and
  G = out_channels / m.

LR-Net (§4) is a ResNet whose bottleneck 3×3 convolutions are 7×7 LR layers:
:class:`LRBottleneck` and :func:`lr_resnet_stage`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_image, check_odd, check_positive_int

__all__ = ["LRBottleneck", "LocalRelation2d", "lr_resnet_stage"]

COMPOSABILITIES = ("squared_difference", "absolute_difference", "product", "dot")


def composability(q: Tensor, k: Tensor, kind: str) -> Tensor:
    """Φ(q, k), elementwise with broadcasting."""
    if kind == "squared_difference":
        return -(q - k) ** 2
    if kind == "absolute_difference":
        return -(q - k).abs()
    return q * k                                                   # "product" / "dot"


def relative_offsets(kernel_size: int) -> Tensor:
    """Offsets p − p' = (Δy, Δx), Δ ∈ {−r … r}: a (2, k, k) float tensor, row-major like ``F.unfold``."""
    r = kernel_size // 2
    d = torch.arange(-r, r + 1, dtype=torch.float32)
    dy, dx = torch.meshgrid(d, d, indexing="ij")                   # (k, k) each
    return torch.stack([dy, dx])                                   # (2, k, k)


class LocalRelation2d(nn.Module):
    r"""Local relation layer: y_{p'} = Σ_{p ∈ Ω_{p'}} softmax_p(Φ(q_{p'}, k_p) + f_θg(p − p')) v_p.

    Args:
        in_channels: C_in.
        out_channels: C_out, a multiple of ``m``; v = x if C_out = C_in, else v = W_v x.
        kernel_size: k, odd (7 in LR-Net).
        stride: s, subsampling of the query positions.
        m: channels sharing one aggregation map (paper: 8); G = C_out / m groups.
        composability: Φ, "squared_difference" (default), "absolute_difference", "product"/"dot".
        geometry_channels: hidden width of the geometry-prior network (default max(1, G // 2)).

    Shapes: (B, C_in, H, W) -> (B, C_out, ⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 m: int = 8, composability: str = "squared_difference",
                 geometry_channels: Optional[int] = None) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_odd("kernel_size", kernel_size)
        check_positive_int("stride", stride)
        check_positive_int("m", m)
        if out_channels % m:
            raise ValueError(f"out_channels={out_channels} must be divisible by m={m} "
                             f"(m channels share one aggregation map)")
        if composability not in COMPOSABILITIES:
            raise ValueError(f"composability must be one of {COMPOSABILITIES}, got {composability!r}")
        groups = out_channels // m
        if geometry_channels is None:
            geometry_channels = max(1, groups // 2)
        check_positive_int("geometry_channels", geometry_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.m, self.groups = kernel_size, stride, m, groups
        self.composability = "product" if composability == "dot" else composability

        self.query = nn.Conv2d(in_channels, groups, kernel_size=1)              # f_θq: C_in -> G
        self.key = nn.Conv2d(in_channels, groups, kernel_size=1)                # f_θk: C_in -> G
        self.value = (None if in_channels == out_channels
                      else nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False))  # W_v
        self.geometry = nn.Sequential(                                           # f_θg: 2 -> G
            nn.Conv2d(2, geometry_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(geometry_channels, groups, kernel_size=1),
        )
        self.register_buffer("offsets", relative_offsets(kernel_size).unsqueeze(0))  # (1, 2, k, k)

    def output_size(self, height: int, width: int):
        """(H_out, W_out) = (⌊(H − 1)/s⌋ + 1, ⌊(W − 1)/s⌋ + 1)."""
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def geometry_prior(self) -> Tensor:
        """f_θg(p − p') for the k×k window, shape (G, k, k)."""
        return self.geometry(self.offsets.to(self.geometry[0].weight.dtype))[0]

    def attention(self, x: Tensor) -> Tensor:
        """ω, shape (B, G, k·k, H_out·W_out); window index row-major (Δy, Δx), out-of-image entries 0."""
        check_image(x, self.in_channels)
        B, _, H, W = x.shape
        k, r, s, G = self.kernel_size, self.kernel_size // 2, self.stride, self.groups
        q = self.query(x)[:, :, ::s, ::s].flatten(2)                            # (B, G, L)
        L = q.shape[-1]
        keys = F.unfold(self.key(x), k, padding=r, stride=s).view(B, G, k * k, L)
        inside = F.unfold(x.new_ones(1, 1, H, W), k, padding=r, stride=s) > 0.5  # (1, k·k, L)
        logits = composability(q.unsqueeze(2), keys, self.composability)       # (B, G, k·k, L)
        logits = logits + self.geometry_prior().reshape(1, G, k * k, 1)
        logits = logits.masked_fill(~inside.view(1, 1, k * k, L), float("-inf"))
        return torch.softmax(logits, dim=2)                                    # over the window

    def forward(self, x: Tensor) -> Tensor:
        w = self.attention(x)                                                  # (B, G, k·k, L)
        B, _, H, W = x.shape
        k, r, s = self.kernel_size, self.kernel_size // 2, self.stride
        v = x if self.value is None else self.value(x)                        # (B, C_out, H, W)
        v = F.unfold(v, k, padding=r, stride=s)                               # (B, C_out·k·k, L)
        v = v.view(B, self.groups, self.m, k * k, -1)                         # (B, G, m, k·k, L)
        y = torch.einsum("bgnl,bgcnl->bgcl", w.to(v.dtype), v)                 # (B, G, m, L)
        return y.reshape(B, self.out_channels, *self.output_size(H, W))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, m={self.m}, composability={self.composability!r}")


class LRBottleneck(nn.Module):
    r"""ResNet bottleneck with a local relation layer in place of the 3×3 convolution (LR-Net).

        y = ReLU( BN(W_3 ReLU(BN(LR_{k×k, s}(ReLU(BN(W_1 x)))))) + shortcut(x) )

    W_1: 1×1, C_in → width; LR: width → width, stride s; W_3: 1×1, width → C_out; shortcut
    = x, or BN(1×1 conv with stride s) when s ≠ 1 or C_in ≠ C_out.

    Args:
        in_channels, out_channels: C_in, C_out.
        stride: s of the LR layer (and of the shortcut projection).
        kernel_size, m, composability: of the LR layer (7, 8, "squared_difference").
        width: channels of the LR layer, default C_out // 4 (bottleneck expansion 4);
            must be a multiple of m.
        zero_init_last: zero the last BN weight, so the block starts as the shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 7,
                 m: int = 8, composability: str = "squared_difference", width: Optional[int] = None,
                 zero_init_last: bool = False) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("m", m)
        width = out_channels // 4 if width is None else width
        check_positive_int("width", width)
        if width % m:
            raise ValueError(f"width={width} (default out_channels // 4) must be divisible by m={m}")
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.lr = LocalRelation2d(width, width, kernel_size, stride, m, composability)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()
        if zero_init_last:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.in_channels)
        y = self.act(self.bn1(self.conv1(x)))          # (B, width, H, W)
        y = self.act(self.bn2(self.lr(y)))             # (B, width, H', W')
        y = self.bn3(self.conv3(y))                    # (B, C_out, H', W')
        return self.act(y + self.shortcut(x))


def lr_resnet_stage(in_channels: int, out_channels: int, blocks: int, stride: int = 1,
                    **kwargs) -> nn.Sequential:
    """A stage of LR-Net: ``blocks`` :class:`LRBottleneck` s, the first with ``stride`` and
    C_in → C_out, the others C_out → C_out with stride 1. ``kwargs`` go to every block."""
    check_positive_int("blocks", blocks)
    layers = [LRBottleneck(in_channels, out_channels, stride=stride, **kwargs)]
    layers += [LRBottleneck(out_channels, out_channels, stride=1, **kwargs) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)
