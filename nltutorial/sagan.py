r"""Self-attention layer of SAGAN, Zhang, Goodfellow, Metaxas & Odena, *Self-Attention
Generative Adversarial Networks* (ICML 2019).

For x ∈ R^{C×N} (N = H·W positions) and 1×1 convolutions f, g (C → C̄ = C/8) and h (§3)::

    s_ij  = f(x_i)ᵀ g(x_j)
    β_j,i = exp(s_ij) / Σ_i exp(s_ij)             how much position j attends to position i
    o_j   = Σ_i β_j,i h(x_i)                       (or v(Σ_i β_j,i h(x_i)), see below)
    y_i   = γ o_i + x_i                            γ a learnable scalar initialised to 0

so g gives the queries, f the keys and h the values, and the layer is the identity at
initialisation (γ = 0).

Options (defaults: the arXiv v1 form, h: C → C, no pooling)
-----------------------------------------------------------
* ``value_rd_ratio`` (default None): h maps C → C and o = Σ β h. Given a ratio ρ, h maps
  C → ρ·C and an output 1×1 convolution v maps it back to C: o = v(Σ β h), the form of
  the ICML paper (with ρ = 1/8) and of the official TensorFlow code (ρ = 1/2).
* ``pool`` (default False, paper): the official code max-pools the keys f(x) and values
  h(x) with a 2×2 window, stride 2 (N/4 key positions; odd sizes are floored, so the
  input needs H, W ≥ 2). ``pool=True`` reproduces that; queries stay at full resolution.
* ``spectral_norm`` (default False): the paper applies spectral normalisation to the
  layers of both networks; ``True`` wraps every convolution of this layer with
  ``torch.nn.utils.parametrizations.spectral_norm``.
* ``bias`` (default True): the 1×1 convolutions f, g, h (and v) have biases. The official
  code's ``sn_conv1x1`` has none: its form is
  ``SelfAttention2d(C, value_rd_ratio=1/2, pool=True, spectral_norm=True, bias=False,
  rd_rounding="floor")``.
* ``implementation`` (default "auto"): how o = Σ β h is computed: "naive" builds β,
  "fast" calls ``F.scaled_dot_product_attention`` with ``scale=1.0`` (the softmax is
  unscaled) and never stores β, "auto" takes whichever the cost model of
  :func:`nltutorial.nonlocal_block.choose_implementation` finds cheaper for the shapes at
  hand. They agree to float rounding; ``attention(x)`` always builds β.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_image, reduced_channels
from .nonlocal_block import IMPLEMENTATIONS, softmax_nonlocal

__all__ = ["SelfAttention2d"]


class SelfAttention2d(nn.Module):
    r"""SAGAN self-attention: y = γ o + x, o_j = Σ_i softmax_i(f(x_i)ᵀ g(x_j)) h(x_i) [then v].

    Args:
        channels: C.
        rd_ratio: width of f and g is C̄ = C·rd_ratio (default 1/8, the paper's k = 8).
        rd_divisor, rd_channels: see :func:`nltutorial._utils.reduced_channels`.
        value_rd_ratio: None (default): h: C → C, no v. A ratio ρ: h: C → ρC, v: ρC → C.
        pool: 2×2 max-pool the keys and values (official code; default False).
        spectral_norm: spectral normalisation on every convolution (default False).
        bias: biases on the 1×1 convolutions (default True; the official code has none).
        rd_rounding: "nearest" (default) or "floor" (⌊C/8⌋, the official ``C // 8``), for the
            widths of f, g and h.
        implementation: "auto" (default), "naive" (the explicit β) or "fast" (SDPA, no N×N_k map);
            an attribute, it can be changed on the instance.

    Shapes: (B, C, H, W) -> (B, C, H, W); attention map (B, N, N_k), N_k = N or ⌊H/2⌋⌊W/2⌋.
    x of the parameters' dtype (see ``_utils.check_dtype``).
    """

    implementation = "naive"  # class default: instances pickled before the option existed

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, value_rd_ratio: Optional[float] = None,
                 pool: bool = False, spectral_norm: bool = False, bias: bool = True,
                 rd_rounding: str = "nearest", *, implementation: str = "auto") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.implementation = implementation
        self.channels, self.rd_channels, self.pool, self.bias = channels, rd, bool(pool), bool(bias)
        if value_rd_ratio is None:
            self.value_channels = channels
        else:
            self.value_channels = reduced_channels(channels, value_rd_ratio, rd_divisor, rounding=rd_rounding)
        self.f = nn.Conv2d(channels, rd, kernel_size=1, bias=self.bias)                     # keys
        self.g = nn.Conv2d(channels, rd, kernel_size=1, bias=self.bias)                     # queries
        self.h = nn.Conv2d(channels, self.value_channels, kernel_size=1, bias=self.bias)    # values
        self.v = (None if value_rd_ratio is None
                  else nn.Conv2d(self.value_channels, channels, kernel_size=1, bias=self.bias))
        self.gamma = nn.Parameter(torch.zeros(1))
        self.spectral_norm = bool(spectral_norm)
        if spectral_norm:
            sn = nn.utils.parametrizations.spectral_norm
            for name in ("f", "g", "h", "v"):
                if getattr(self, name) is not None:
                    setattr(self, name, sn(getattr(self, name)))

    def _keys_values(self, x: Tensor):
        k, v = self.f(x), self.h(x)                                         # (B, C̄, H, W), (B, C_v, H, W)
        if self.pool:
            k, v = F.max_pool2d(k, 2), F.max_pool2d(v, 2)                   # (B, ·, ⌊H/2⌋, ⌊W/2⌋)
        return k.flatten(2), v.flatten(2)                                   # (B, C̄, N_k), (B, C_v, N_k)

    def _check(self, x: Tensor) -> None:
        check_image(x, self.channels, module=self)
        if self.pool and min(x.shape[2:]) < 2:
            raise ValueError(f"x must have H, W >= 2 with pool=True (2×2 max-pooling of keys and values), "
                             f"got shape {tuple(x.shape)}")

    def attention(self, x: Tensor) -> Tensor:
        """β as a (B, N, N_k) tensor: row j is the softmax over key positions i of f(x_i)ᵀ g(x_j)."""
        self._check(x)
        k, _ = self._keys_values(x)
        q = self.g(x).flatten(2)                                            # (B, C̄, N)
        return torch.softmax(q.transpose(1, 2) @ k, dim=-1)                 # (B, N, N_k)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        k, v = self._keys_values(x)
        q = self.g(x).flatten(2)                                            # (B, C̄, N)
        # o_j = Σ_i β_j,i h(x_i) with β = softmax(g(x)ᵀ f(x)), unscaled: (B, N, C_v)
        o = softmax_nonlocal(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0,
                             implementation=self.implementation)
        o = o.transpose(1, 2).contiguous().unflatten(2, x.shape[2:])        # (B, C_v, H, W)
        if self.v is not None:
            o = self.v(o)                                                   # (B, C, H, W)
        return self.gamma * o + x

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, rd_channels={self.rd_channels}, "
                f"value_channels={self.value_channels}, pool={self.pool}"
                + ("" if self.bias else ", bias=False")
                + ("" if self.implementation == "auto" else f", implementation={self.implementation!r}"))
