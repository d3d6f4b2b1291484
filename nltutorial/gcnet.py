r"""Global context block, Cao, Xu, Lin, Wei & Hu, *GCNet: Non-local Networks Meet
Squeeze-Excitation Networks and Beyond* (ICCV Workshops 2019).

The GC block (§4.2, eq. 4) keeps the query-independent part of a non-local block and
the bottleneck transform of an SE block::

    z_i = x_i + W_v2 ReLU(LN(W_v1 Σ_j α_j x_j)),      α_j = exp(W_k x_j) / Σ_m exp(W_k x_m)

* context modelling: W_k is a 1×1 convolution C → 1, softmax over the N = H·W positions,
  and the attention-weighted sum of x gives one context vector per image, (B, C, 1, 1);
  ``pooling="avg"`` replaces it with global average pooling (α_j = 1/N, the SE squeeze);
* transform: 1×1 conv C → C/r, LayerNorm over (C/r, 1, 1), ReLU, 1×1 conv C/r → C, the
  last convolution initialised to zero; r = 16 in the paper (mmdetection also ships
  r = 4 configurations);
* fusion: "add" (default, eq. 4) broadcasts the transform over the positions and adds
  it, so the block is the identity at initialisation; "mul" scales x by its sigmoid,
  x ⊗ σ(transform) (SE-style; at initialisation that is x/2). Both can be given, as in
  the official code: then z = x ⊗ σ(t_mul) + t_add, each with its own transform.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ._utils import LayerSpec, check_image, create_layer, reduced_channels

__all__ = ["ContextBlock"]

POOLINGS = ("attention", "avg")
FUSIONS = ("add", "mul")


class ContextBlock(nn.Module):
    r"""Global context (GC) block: z = x + W_v2 δ(LN(W_v1 Σ_j softmax_j(W_k x_j) x_j)).

    Args:
        channels: C.
        rd_ratio: 1/r of the transform bottleneck (default 1/16, the paper's r = 16).
        pooling: "attention" (default, paper) or "avg" (global average pooling).
        fusion: a non-empty sequence of "add" (default) and/or "mul" (a plain string is
            accepted for a single fusion).
        rd_divisor, rd_channels: see :func:`nltutorial._utils.reduced_channels`.
        act_layer: the δ of the transform (ReLU).
        rd_rounding: "nearest" (default) or "floor" (⌊C·ratio⌋, the official ``int(C * ratio)``).

    Shapes: (B, C, H, W) -> (B, C, H, W); x of the parameters' dtype (see ``_utils.check_dtype``).
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, pooling: str = "attention",
                 fusion: Sequence[str] = ("add",), rd_divisor: int = 1, rd_channels: Optional[int] = None,
                 act_layer: LayerSpec = nn.ReLU, rd_rounding: str = "nearest") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if isinstance(fusion, str):
            fusion = (fusion,)
        fusion = tuple(fusion) if isinstance(fusion, (list, tuple)) else fusion
        if not isinstance(fusion, tuple) or not fusion or any(f not in FUSIONS for f in fusion) \
                or len(set(fusion)) != len(fusion):
            raise ValueError(f"fusion must be a non-empty sequence of distinct values from {FUSIONS}, "
                             f"got {fusion!r}")
        self.channels, self.rd_channels, self.pooling, self.fusion = channels, rd, pooling, fusion
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1) if pooling == "attention" else None  # W_k
        self.transform_add = self._transform(rd, act_layer) if "add" in fusion else None
        self.transform_mul = self._transform(rd, act_layer) if "mul" in fusion else None

    def _transform(self, rd: int, act_layer: LayerSpec) -> nn.Sequential:
        t = nn.Sequential(
            nn.Conv2d(self.channels, rd, kernel_size=1),       # W_v1
            nn.LayerNorm([rd, 1, 1]),                          # LN over (C/r, 1, 1)
            create_layer("act_layer", act_layer),              # ReLU
            nn.Conv2d(rd, self.channels, kernel_size=1),       # W_v2, zero-initialised
        )
        nn.init.zeros_(t[-1].weight)
        nn.init.zeros_(t[-1].bias)
        return t

    def attention(self, x: Tensor) -> Tensor:
        """α, shape (B, 1, H, W): softmax over positions of W_k x (uniform 1/N for "avg")."""
        check_image(x, self.channels, module=self)
        if self.conv_mask is None:
            return torch.full_like(x[:, :1], 1.0 / (x.shape[2] * x.shape[3]))
        logits = self.conv_mask(x)                             # (B, 1, H, W)
        return torch.softmax(logits.flatten(2), dim=-1).view_as(logits)

    def context(self, x: Tensor) -> Tensor:
        """Σ_j α_j x_j, shape (B, C, 1, 1)."""
        check_image(x, self.channels, module=self)
        if self.conv_mask is None:
            return x.mean(dim=(2, 3), keepdim=True)
        alpha = torch.softmax(self.conv_mask(x).flatten(2), dim=-1)       # (B, 1, N)
        return (x.flatten(2) @ alpha.transpose(1, 2)).unsqueeze(-1)      # (B, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        ctx = self.context(x)                                  # (B, C, 1, 1)
        out = x
        if self.transform_mul is not None:
            out = out * torch.sigmoid(self.transform_mul(ctx))
        if self.transform_add is not None:
            out = out + self.transform_add(ctx)                # broadcast over H×W
        return out

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"pooling={self.pooling!r}, fusion={self.fusion!r}")
