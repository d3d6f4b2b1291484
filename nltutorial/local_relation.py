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

Implementation
--------------
Two implementations compute the same function (``implementation=``):

* ``"shift"`` (default): a loop over the k² offsets (Δy, Δx). For one offset the
  neighbour of every query p' is a *shifted view* of the key and value maps, restricted to
  the rectangle of queries whose neighbour lies inside the image (that restriction *is*
  the masking: an outside neighbour never enters the softmax). A two-pass softmax runs
  over the offsets: pass 1 takes the running maximum of the logits Φ(q, k_shifted) +
  prior[offset], pass 2 accumulates exp(logit − max) and exp(logit − max)·v_shifted (the
  (B, G, 1, H', W') weights broadcast over the m channels of a group) and divides. Memory
  is O(B·C·H·W): no tensor has a k² dimension. The loop is a registered operator
  (``torch.library.custom_op`` ``nltutorial::local_relation_shift``) with a hand-written
  backward (a second operator) that recomputes the per-offset weights from the saved
  log-sum-exp (one G-channel map), so training is memory-light too: autograd saves q, k,
  v, the output and the log-sum-exp, never per-offset tensors (a plain Python loop under
  autograd, or the unfold path, keeps k² of them). The backward uses
  Σ_p ω ∂L/∂ω = Σ_c ∂L/∂y_c · y_c for the softmax, like flash attention. Being one operator,
  it carries a FLOP formula, so ``nltutorial.cost.count_flops`` counts the aggregation as
  it counts the unfold path's einsum (and ``peak_memory`` sees its outputs, not its
  scratch, as for any fused kernel). With a stride the query projection is computed only
  at the strided positions. Half-precision inputs (bf16 autocast) are computed in float32;
  under autocast the output has the autocast dtype, like the unfold path. The backward is
  first-order only (no double backward).
* ``"unfold"``: the direct transcription, ``F.unfold`` of all k² neighbours of every pixel
  (a (B, C, k², H'·W') tensor, ~150 MiB at C = 256, 56×56), kept as the reference and
  used by :meth:`LocalRelation2d.attention`, which returns the full weight map.

LR-Net (§4) is a ResNet whose bottleneck 3×3 convolutions are 7×7 LR layers:
:class:`LRBottleneck` and :func:`lr_resnet_stage`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from ._utils import check_batch_norm, check_image, check_odd, check_positive_int

__all__ = ["LRBottleneck", "LocalRelation2d", "lr_resnet_stage"]

COMPOSABILITIES = ("squared_difference", "absolute_difference", "product", "dot")
IMPLEMENTATIONS = ("shift", "unfold")


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


def _valid_range(n_out: int, size: int, delta: int, stride: int):
    """Query indices i ∈ [lo, hi) whose neighbour s·i + Δ lies in [0, size), and the slice of
    those neighbours in the key/value map; None when no query has its neighbour inside."""
    lo = max(0, -(delta // stride))                     # ceil(−Δ / s), at least 0
    hi = min(n_out, (size - 1 - delta) // stride + 1)    # floor((size − 1 − Δ) / s) + 1
    if hi <= lo:
        return None
    start = stride * lo + delta
    return slice(lo, hi), slice(start, stride * (hi - 1) + delta + 1, stride)


def _offset_views(k: int, stride: int, H: int, W: int, H_out: int, W_out: int):
    """(n, query rows, query cols, neighbour rows, neighbour cols) for the offsets n = (Δy, Δx)
    (row-major, like ``F.unfold``) that have at least one in-image neighbour."""
    r = k // 2
    views = []
    for n in range(k * k):
        dy, dx = n // k - r, n % k - r
        rows, cols = _valid_range(H_out, H, dy, stride), _valid_range(W_out, W, dx, stride)
        if rows is not None and cols is not None:
            views.append((n, rows[0], cols[0], rows[1], cols[1]))
    return views


def _logits(q: Tensor, kn: Tensor, prior_n: Tensor, kind: str) -> Tensor:
    """Φ(q, k_n) + prior_n, a new tensor; prior_n is (1, G, 1, 1)."""
    if kind == "squared_difference":
        d = q - kn
        return torch.addcmul(prior_n, d, d, value=-1.0)
    if kind == "absolute_difference":
        return torch.sub(prior_n, (q - kn).abs_())
    return torch.addcmul(prior_n, q, kn)                                  # product


def _shift_forward(q: Tensor, key: Tensor, value: Tensor, prior: Tensor, k: int, stride: int, kind: str):
    """y = Σ_n softmax_n(Φ(q, k_n) + prior_n) v_n over the in-image offsets n, by shifted views.

    q: (B, G, H', W') queries at the strided positions; key: (B, G, H, W); value: (B, G, m, H, W);
    prior: (G, k²). Returns y (B, G, m, H', W') and the log-sum-exp of the logits (B, G, H', W').
    """
    B, G, H_out, W_out = q.shape
    H, W = key.shape[-2:]
    views = _offset_views(k, stride, H, W, H_out, W_out)
    priors = prior.t().reshape(k * k, 1, G, 1, 1)

    # pass 1: running maximum of the logits over the offsets (the centre is always inside)
    centre = (k * k) // 2
    mx = _logits(q, key[:, :, ::stride, ::stride], priors[centre], kind)
    for n, qi, qj, ki, kj in views:
        if n != centre:
            m_view = mx[:, :, qi, qj]
            torch.maximum(m_view, _logits(q[:, :, qi, qj], key[:, :, ki, kj], priors[n], kind), out=m_view)

    # pass 2: Σ exp(logit − max) and Σ exp(logit − max) · v, then divide
    den = torch.zeros_like(mx)
    acc = value.new_zeros(B, G, value.shape[2], H_out, W_out)
    for n, qi, qj, ki, kj in views:
        e = _logits(q[:, :, qi, qj], key[:, :, ki, kj], priors[n], kind)
        e.sub_(mx[:, :, qi, qj]).exp_()
        den[:, :, qi, qj] += e
        acc[:, :, :, qi, qj].addcmul_(e.unsqueeze(2), value[:, :, :, ki, kj])
    acc.div_(den.unsqueeze(2))
    return acc, den.log_().add_(mx)                                      # y, log Σ exp(logit)


def _shift_backward(grad_y: Tensor, q: Tensor, key: Tensor, value: Tensor, prior: Tensor, y: Tensor,
                    lse: Tensor, k: int, stride: int, kind: str, need_qkp: bool, need_v: bool):
    """Gradients of :func:`_shift_forward` w.r.t. q, key, value, prior (empty tensors where not
    needed), recomputing the per-offset weights ω_n = exp(logit_n − lse)."""
    B, G, H_out, W_out = q.shape
    H, W = key.shape[-2:]
    priors = prior.t().reshape(k * k, 1, G, 1, 1)
    # softmax backward: ∂L/∂logit_n = ω_n (∂L/∂ω_n − Σ_n' ω_n' ∂L/∂ω_n'), Σ_n' ω_n' ∂L/∂ω_n' = Σ_c ∂L/∂y_c y_c
    dot = (grad_y * y).sum(2) if need_qkp else None                      # (B, G, H', W')
    gq, gk, gp = ((torch.zeros_like(q), torch.zeros_like(key), prior.new_zeros(k * k, G)) if need_qkp
                  else (q.new_empty(0), key.new_empty(0), prior.new_empty(0)))
    gv = torch.zeros_like(value) if need_v else value.new_empty(0)
    for n, qi, qj, ki, kj in _offset_views(k, stride, H, W, H_out, W_out):
        qn, kn = q[:, :, qi, qj], key[:, :, ki, kj]
        w = _logits(qn, kn, priors[n], kind)
        w.sub_(lse[:, :, qi, qj]).exp_()                                 # ω_n
        gy = grad_y[:, :, :, qi, qj]
        if need_v:
            gv[:, :, :, ki, kj].addcmul_(w.unsqueeze(2), gy)
        if not need_qkp:
            continue
        gl = (gy * value[:, :, :, ki, kj]).sum(2)                        # ∂L/∂ω_n
        gl.sub_(dot[:, :, qi, qj]).mul_(w)                               # ∂L/∂logit_n
        gp[n] = gl.sum((0, 2, 3))
        if kind == "squared_difference":                                 # ∂Φ/∂q = −2(q − k) = −∂Φ/∂k
            t = (qn - kn).mul_(gl).mul_(2.0)
            gq[:, :, qi, qj] -= t
            gk[:, :, ki, kj] += t
        elif kind == "absolute_difference":                              # ∂Φ/∂q = −sign(q − k) = −∂Φ/∂k
            t = (qn - kn).sign_().mul_(gl)
            gq[:, :, qi, qj] -= t
            gk[:, :, ki, kj] += t
        else:                                                            # ∂Φ/∂q = k, ∂Φ/∂k = q
            gq[:, :, qi, qj].addcmul_(gl, kn)
            gk[:, :, ki, kj].addcmul_(gl, qn)
    return gq, gk, gv, (gp.t().contiguous() if need_qkp else gp)


# The loop is registered as two operators (forward and backward). To autograd they are one
# node with a hand-written backward, so no per-offset tensor is saved for training; to
# ``FlopCounterMode`` (``nltutorial.cost.count_flops``) they are single operators, credited
# with the FLOPs of the aggregation Σ_n ω_n v_n that the unfold path counts as an einsum.
@torch.library.custom_op("nltutorial::local_relation_shift", mutates_args=())
def _shift_op(q: Tensor, key: Tensor, value: Tensor, prior: Tensor, kernel_size: int, stride: int,
              kind: str) -> tuple[Tensor, Tensor]:
    return _shift_forward(q, key, value, prior, kernel_size, stride, kind)


@_shift_op.register_fake
def _(q, key, value, prior, kernel_size, stride, kind):
    B, G, H_out, W_out = q.shape
    return q.new_empty(B, G, value.shape[2], H_out, W_out), q.new_empty(B, G, H_out, W_out)


@torch.library.custom_op("nltutorial::local_relation_shift_backward", mutates_args=())
def _shift_backward_op(grad_y: Tensor, q: Tensor, key: Tensor, value: Tensor, prior: Tensor, y: Tensor,
                       lse: Tensor, kernel_size: int, stride: int, kind: str, need_qkp: bool,
                       need_v: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _shift_backward(grad_y, q, key, value, prior, y, lse, kernel_size, stride, kind, need_qkp, need_v)


@_shift_backward_op.register_fake
def _(grad_y, q, key, value, prior, y, lse, kernel_size, stride, kind, need_qkp, need_v):
    e = q.new_empty(0)
    return ((torch.empty_like(q), torch.empty_like(key)) if need_qkp else (e, e)) + (
        torch.empty_like(value) if need_v else e, prior.new_empty(prior.shape) if need_qkp else e)


def _shift_setup_context(ctx, inputs, output):
    q, key, value, prior, kernel_size, stride, kind = inputs
    ctx.save_for_backward(q, key, value, prior, *output)
    ctx.mark_non_differentiable(output[1])                               # lse: saved for the backward only
    ctx.args = (kernel_size, stride, kind)


def _shift_autograd_backward(ctx, grad_y, _grad_lse):
    q, key, value, prior, y, lse = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_qkp, need_v = bool(need[0] or need[1] or need[3]), bool(need[2])
    gq, gk, gv, gp = _shift_backward_op(grad_y.to(y.dtype), q, key, value, prior, y, lse, *ctx.args,
                                        need_qkp, need_v)
    return (gq if need_qkp else None, gk if need_qkp else None, gv if need_v else None,
            gp if need_qkp else None, None, None, None)


_shift_op.register_autograd(_shift_autograd_backward, setup_context=_shift_setup_context)


@register_flop_formula(torch.ops.nltutorial.local_relation_shift)
def _shift_flops(q_shape, key_shape, value_shape, prior_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    B, G, H_out, W_out = q_shape
    return 2 * B * G * value_shape[2] * kernel_size ** 2 * H_out * W_out    # = the unfold path's einsum


@register_flop_formula(torch.ops.nltutorial.local_relation_shift_backward)
def _shift_backward_flops(grad_y_shape, q_shape, key_shape, value_shape, prior_shape, y_shape, lse_shape,
                          kernel_size, *args, out_shape=None, **kwargs) -> int:
    return 2 * _shift_flops(q_shape, key_shape, value_shape, prior_shape, kernel_size)  # ∂v and ∂ω, as the einsum's backward

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
        implementation: "shift" (default; loop over the k² offsets with shifted views, memory
            O(B·C·H·W), custom backward) or "unfold" (all k² neighbours unfolded, the reference);
            the same function, see the module docstring. A plain attribute: it may be changed
            on a built layer and is not part of the state dict.

    Shapes: (B, C_in, H, W) -> (B, C_out, ⌊(H−1)/s⌋+1, ⌊(W−1)/s⌋+1); x of the parameters'
    dtype (see ``_utils.check_dtype``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 7, stride: int = 1,
                 m: int = 8, composability: str = "squared_difference",
                 geometry_channels: Optional[int] = None, implementation: str = "shift") -> None:
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
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        groups = out_channels // m
        if geometry_channels is None:
            geometry_channels = max(1, groups // 2)
        check_positive_int("geometry_channels", geometry_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.m, self.groups = kernel_size, stride, m, groups
        self.composability = "product" if composability == "dot" else composability
        self.implementation = implementation

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
        check_image(x, self.in_channels, module=self)
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
        if self.implementation == "unfold":
            return self._forward_unfold(x)
        if self.implementation != "shift":
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}")
        return self._forward_shift(x)

    def _forward_shift(self, x: Tensor) -> Tensor:
        """Loop over the k² offsets with shifted views; memory O(B·C·H·W) (module docstring)."""
        check_image(x, self.in_channels, module=self)
        B, _, H, W = x.shape
        s, G = self.stride, self.groups
        q = self.query(x[:, :, ::s, ::s] if s > 1 else x)                      # (B, G, H', W'): 1×1 conv commutes with subsampling
        key = self.key(x)                                                      # (B, G, H, W)
        v = x if self.value is None else self.value(x)                        # (B, C_out, H, W)
        prior = self.geometry_prior().reshape(G, -1)                          # (G, k·k)
        dtype = v.dtype
        if torch.is_autocast_enabled(x.device.type):                           # like the unfold path's einsum (a bmm)
            dtype = torch.get_autocast_dtype(x.device.type)
        work = torch.float64 if torch.float64 in (q.dtype, key.dtype, v.dtype, prior.dtype) else torch.float32
        y, _ = _shift_op(q.to(work), key.to(work), v.to(work).view(B, G, self.m, H, W),
                         prior.to(work), self.kernel_size, s, self.composability)
        return y.reshape(B, self.out_channels, *y.shape[-2:]).to(dtype)

    def _forward_unfold(self, x: Tensor) -> Tensor:
        """The reference: unfold all k² neighbours of every pixel (memory O(k²·B·C·H·W))."""
        w = self.attention(x)                                                  # (B, G, k·k, L)
        B, _, H, W = x.shape
        k, r, s = self.kernel_size, self.kernel_size // 2, self.stride
        v = x if self.value is None else self.value(x)                        # (B, C_out, H, W)
        v = F.unfold(v, k, padding=r, stride=s)                               # (B, C_out·k·k, L)
        v = v.view(B, self.groups, self.m, k * k, -1)                         # (B, G, m, k·k, L)
        y = torch.einsum("bgnl,bgcnl->bgcl", w.to(v.dtype), v)                 # (B, G, m, L)
        return y.reshape(B, self.out_channels, *self.output_size(H, W))

    def extra_repr(self) -> str:
        extra = "" if self.implementation == "shift" else f", implementation={self.implementation!r}"
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, m={self.m}, composability={self.composability!r}{extra}")


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
        check_image(x, self.in_channels, module=self)
        h_out, w_out = self.lr.output_size(*x.shape[2:])
        check_batch_norm(x, self.bn2, x.shape[0] * h_out * w_out, "the BatchNorm after the LR layer")
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
