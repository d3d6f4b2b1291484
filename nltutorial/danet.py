r"""DANet attention, Fu, Liu, Tian, Li, Bao, Fang & Lu, *Dual Attention Network for Scene
Segmentation* (CVPR 2019).

Two self-attention modules over a feature map A ∈ R^{C×H×W}, N = H·W, each added
residually with a learnable scale initialised to 0 (so each module is the identity at
initialisation, §3.2–3.3).

Position attention module (PAM). B, C', D are 1×1 convolutions of A (C' is the paper's
"C"; renamed here so as not to clash with the channel count). Reshaped to (C_k, N),
(C_k, N), (C, N)::

    S = softmax_j(Bᵀ C')          S_ij = exp(B_i · C'_j) / Σ_j exp(B_i · C'_j)      (N × N)
    E = γ D Sᵀ + A                E_i = γ Σ_j S_ij D_j + A_i

This is eq. (1)–(2) of the paper; the paper's s_ji normalises over the index of B with B
and C in the other roles, which is the same map up to the naming of the two learned
convolutions. We name them as the official code does (B = query, C' = key).

PAM is the embedded-Gaussian non-local operation with an unscaled softmax (scale 1, no
1/√C_k). ``implementation`` picks how S D is computed: "naive" builds S, "fast" calls
``F.scaled_dot_product_attention`` (``scale=1.0``, no N×N matrix), "auto" takes
whichever the cost model of :func:`nltutorial.nonlocal_block.choose_implementation` finds
cheaper for the shapes at hand; the three agree to float rounding. ``attention(x)`` always
builds S. The default is "auto"; FLOP counts (``nltutorial.cost.count_flops``) take the
explicit path for it, the formula's count.

Channel attention module (CAM), no convolution, A reshaped to (C, N)::

    X = softmax(A Aᵀ)             X_ij = exp(A_i · A_j) / Σ_j exp(A_i · A_j)        (C × C)
    E = β X A + A                 E_i = β Σ_j X_ij A_j + A_i

Paper versus official code (``junfu1115/DANet``)
------------------------------------------------
* ``PositionAttention(rd_ratio=...)``: the width C_k of B and C'. The paper says
  B, C ∈ R^{C×H×W} (``rd_ratio=1``); the official code uses C/8. Default 1/8 (official).
* ``ChannelAttention(cam_energy=...)``: "paper" (default) uses softmax(A Aᵀ).
  "official" uses softmax(max_j(A Aᵀ) − A Aᵀ), row-wise. A softmax does not change when a
  constant is added to a row, so this equals softmax(−A Aᵀ): the official code attends
  most to the channels *least* similar to channel i; it is not a numerical-stability
  rewrite of the paper's formula.
* The DANet head also wraps each module in 3×3 conv–BN–ReLU layers and classifiers;
  :class:`DualAttention` is only the attention part: PAM(A) + CAM(A).

A temperature for CAM (``cam_energy="mean"``, in neither the paper nor the official code)
------------------------------------------------------------------------------------------
The energy A_i · A_j = Σ_p A_i(p) A_j(p) sums over the N = H·W positions, so it grows like
N: for unit-variance features A_i · A_i ≈ N while A_i · A_j (i ≠ j) is O(√N), and on a 32×32
map the softmax is all but one-hot (X ≈ I, each channel attends to itself). In ResNet-20 on
the CIFAR-10 subset (``results/danet_subset``) the mean largest weight of X is 0.95 from the
first epoch on and β ends negative (−0.41): CAM alone and the dual block collapse. The
book's remedy divides the energy by N, i.e. uses the mean over positions instead of the
sum::

    X = softmax(A Aᵀ / N)         X_ij = exp(A_i · A_j / N) / Σ_j exp(A_i · A_j / N)

The energies are then O(1) whatever the map size (a Gram matrix of per-position means,
like a second moment of the channels, uncentred); E = β X A + A is unchanged. It is the
``cam_energy`` option rather than a new class so that DualAttention, ``create_attention`` and
the CIFAR ResNets take it as they take the other two.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._utils import check_image, reduced_channels
from .nonlocal_block import IMPLEMENTATIONS, softmax_nonlocal

__all__ = ["ChannelAttention", "DualAttention", "PositionAttention"]

#: ChannelAttention's energies: A Aᵀ, max(A Aᵀ) − A Aᵀ (official code), A Aᵀ / N (not in the paper).
CAM_ENERGIES = ("paper", "official", "mean")


class PositionAttention(nn.Module):
    r"""Position attention module (PAM): E = γ D softmax_j(Bᵀ C')ᵀ + A, γ = 0 at initialisation.

    Args:
        channels: C.
        rd_ratio: width of B and C' is C·rd_ratio (default 1/8, official code; paper: 1).
        rd_divisor, rd_channels: see :func:`nltutorial._utils.reduced_channels`.
        rd_rounding: "nearest" (default) or "floor" (⌊C/8⌋, the official ``in_dim // 8``).
        implementation: "auto" (default), "naive" (the explicit S) or "fast" (SDPA, no N×N map);
            see the module docstring. An attribute: it can be changed on the instance.

    Shapes: (B, C, H, W) -> (B, C, H, W); the attention map is (B, N, N), N = H·W. x must
    have the parameters' dtype (see ``_utils.check_dtype``), as for every DANet module.
    """

    implementation = "naive"  # class default: instances pickled before the option existed

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, rd_rounding: str = "nearest", *,
                 implementation: str = "auto") -> None:
        super().__init__()
        rd = reduced_channels(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.channels, self.rd_channels, self.implementation = channels, rd, implementation
        self.query = nn.Conv2d(channels, rd, kernel_size=1)       # B
        self.key = nn.Conv2d(channels, rd, kernel_size=1)         # C'
        self.value = nn.Conv2d(channels, channels, kernel_size=1)  # D
        self.gamma = nn.Parameter(torch.zeros(1))                 # α in the paper

    def attention(self, x: Tensor) -> Tensor:
        """S, shape (B, N, N): S[b, i, j] = softmax over j of B_i · C'_j."""
        b = self.query(x).flatten(2)                              # (B, C_k, N)
        c = self.key(x).flatten(2)                                # (B, C_k, N)
        return torch.softmax(b.transpose(1, 2) @ c, dim=-1)       # (B, N, N)

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.channels, module=self)
        q, k, v = (conv(x).flatten(2).transpose(1, 2) for conv in (self.query, self.key, self.value))
        # q = B (B, N, C_k), k = C' (B, N, C_k), v = D (B, N, C): y_i = Σ_j S_ij D_j, (B, N, C)
        y = softmax_nonlocal(q, k, v, scale=1.0, implementation=self.implementation)
        out = y.transpose(1, 2).contiguous().view_as(x)          # (B, C, H, W): D Sᵀ
        return self.gamma * out + x

    def extra_repr(self) -> str:
        impl = "" if self.implementation == "auto" else f", implementation={self.implementation!r}"
        return f"channels={self.channels}, rd_channels={self.rd_channels}" + impl


class ChannelAttention(nn.Module):
    r"""Channel attention module (CAM): E = β softmax(A Aᵀ) A + A, β = 0 at initialisation.

    Args:
        channels: C (checked against the input; CAM has no convolution).
        cam_energy: "paper" (default): X = softmax(A Aᵀ); "official": X =
            softmax(max(A Aᵀ) − A Aᵀ) = softmax(−A Aᵀ), as in the official code; "mean":
            X = softmax(A Aᵀ / N), N = H·W, the mean over positions of A_i(p) A_j(p) instead
            of the sum. Not in the paper: the book's remedy for the one-hot map that the O(N)
            energies give on large maps (see the module docstring).

    Shapes: (B, C, H, W) -> (B, C, H, W); the attention map is (B, C, C).
    """

    def __init__(self, channels: int, cam_energy: str = "paper") -> None:
        super().__init__()
        reduced_channels(channels, 1.0)                           # validates channels
        if cam_energy not in CAM_ENERGIES:
            raise ValueError(f"cam_energy must be one of {CAM_ENERGIES}, got {cam_energy!r}")
        self.channels, self.cam_energy = channels, cam_energy
        self.gamma = nn.Parameter(torch.zeros(1))                 # β in the paper

    def attention(self, x: Tensor) -> Tensor:
        """X, shape (B, C, C), each row a softmax over channels j."""
        a = x.flatten(2)                                          # (B, C, N)
        energy = a @ a.transpose(1, 2)                            # (B, C, C)
        if self.cam_energy == "official":
            energy = energy.amax(dim=-1, keepdim=True) - energy
        elif self.cam_energy == "mean":
            energy = energy / a.shape[-1]                         # A Aᵀ / N
        return torch.softmax(energy, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        check_image(x, self.channels, module=self)
        out = (self.attention(x) @ x.flatten(2)).view_as(x)       # (B, C, H, W): X A
        return self.gamma * out + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, cam_energy={self.cam_energy!r}"


class DualAttention(nn.Module):
    r"""The two DANet modules in parallel, summed: E = PAM(A) + CAM(A).

    At initialisation (γ = β = 0) this is 2A, the sum of two identities, as in the paper's
    element-wise sum fusion. Args as :class:`PositionAttention` and :class:`ChannelAttention`.
    """

    def __init__(self, channels: int, rd_ratio: float = 1 / 8, rd_divisor: int = 1,
                 rd_channels: Optional[int] = None, cam_energy: str = "paper",
                 rd_rounding: str = "nearest") -> None:
        super().__init__()
        self.channels = channels
        self.pam = PositionAttention(channels, rd_ratio, rd_divisor, rd_channels, rd_rounding)
        self.cam = ChannelAttention(channels, cam_energy)

    def forward(self, x: Tensor) -> Tensor:
        return self.pam(x) + self.cam(x)
