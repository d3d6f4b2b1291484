r"""Squeeze-and-Excitation, Hu, Shen & Sun, *Squeeze-and-Excitation Networks* (CVPR 2018).

The SE block recalibrates the channels of a feature map x ∈ R^{C×H×W} with a gate that
depends on the whole image (§3 of the paper)::

    z_c   = 1/(H·W) Σ_{i,j} x_c(i, j)                 squeeze: global average pooling  (2)
    s     = σ(W_2 δ(W_1 z))                           excitation, W_1: C/r × C, W_2: C × C/r  (3)
    x̃_c   = s_c · x_c                                 scale  (4)

δ is the ReLU and σ the sigmoid; r is the reduction ratio (r = 16 in the paper). The two
fully connected layers W_1, W_2 (with biases) are written here as 1×1 convolutions on the
(B, C, 1, 1) descriptor, which is the same map.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ._utils import LayerSpec, check_image, create_layer, reduced_channels

__all__ = ["SqueezeExcite"]


class SqueezeExcite(nn.Module):
    r"""Squeeze-and-Excitation block: x̃ = x ⊗ σ(W_2 δ(W_1 GAP(x))).

    Args:
        channels: C, the channels of x.
        rd_ratio: 1/r; the hidden width is C/r (default 1/16, the paper's r = 16).
        rd_divisor: round the hidden width to a multiple of this (default 1: plain C/r).
        rd_channels: explicit hidden width, overrides ``rd_ratio``.
        act_layer: δ, default ``nn.ReLU`` (paper).
        gate_layer: σ, default ``nn.Sigmoid`` (paper).
        rd_rounding: "nearest" (default) or "floor" (⌊C/r⌋, the official code's ``C // r``).

    Shapes: (B, C, H, W) -> (B, C, H, W); x of the parameters' dtype (see ``_utils.check_dtype``).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, act_layer: LayerSpec = nn.ReLU,
                 gate_layer: LayerSpec = nn.Sigmoid, rd_rounding: str = "nearest") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        self.channels, self.rd_channels = channels, rd
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1, bias=True)   # W_1
        self.act = create_layer("act_layer", act_layer)                  # δ
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1, bias=True)   # W_2
        self.gate = create_layer("gate_layer", gate_layer)               # σ

    def mlp(self, z: Tensor) -> Tensor:
        """The bottleneck W_2 δ(W_1 z): (B, C, 1, 1) -> (B, C, 1, 1)."""
        return self.fc2(self.act(self.fc1(z)))

    def attention(self, x: Tensor) -> Tensor:
        """The channel gate s of eq. (3), shape (B, C, 1, 1)."""
        z = x.mean(dim=(2, 3), keepdim=True)                  # (B, C, 1, 1) squeeze
        return self.gate(self.mlp(z))                         # (B, C, 1, 1) excitation

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.channels, module=self)
        return x * self.attention(x)                          # (B, C, H, W) scale

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}"
