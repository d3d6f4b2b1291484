r"""The non-local block of Wang, Girshick, Gupta & He, *Non-local Neural Networks* (CVPR 2018).

The non-local operation (eq. 1 of the paper) computes the response at position i as a
weighted sum of a transform of the features at *all* positions j::

    y_i = 1 / C(x) · Σ_j f(x_i, x_j) g(x_j)                                        (1)

and the non-local *block* (eq. 6) wraps it in a residual connection::

    z_i = W_z y_i + x_i                                                            (6)

x has C channels and N positions (T, H·W or T·H·W for ``dimension`` 1, 2 or 3). g, θ and
φ are 1×1(×1) convolutions C → d, with d = ``inter_channels`` (C/2 by default); W_z is a
1×1(×1) convolution d → C followed by BatchNorm. The pairwise function f (§3.2):

    mode              f(x_i, x_j)                       C(x)
    ----------------  --------------------------------  ---------------------------
    "gaussian"        exp(x_iᵀ x_j)                     Σ_j f(x_i, x_j)  (softmax over j)
    "embedded"        exp(θ(x_i)ᵀ φ(x_j))               Σ_j f(x_i, x_j)  (softmax over j)
    "dot"             θ(x_i)ᵀ φ(x_j)                    N_s
    "concatenation"   ReLU(w_fᵀ [θ(x_i), φ(x_j)])       N_s

N_s is the number of positions j. With ``sub_sample=True`` (§3.3) φ and g are followed by
a max-pooling (kernel 2 in 1D, 2×2 in 2D, 1×2×2 in 3D), so j runs over a coarser grid:
N_s ≈ N/2 in 1D and N/4 in 2D and 3D. Pooling floors odd sizes (an odd last row or
column is dropped from the j positions, never from the i positions), exactly as
``nn.MaxPool`` does, so checkpoints behave the same as in the popular implementation.

Initialisation (§4.1): the BatchNorm after W_z has weight and bias set to zero (or, with
``bn_layer=False``, W_z itself is zero), so W_z y = 0 and the block is the identity
z = x when it is inserted into a pre-trained network.

Four implementations
--------------------
Write q_i = θ(x_i), k_j = φ(x_j), v_j = g(x_j) (for "gaussian", q_i = x_i and k_j = x_j).
``implementation="naive"`` builds the N×N_s matrix [f(x_i, x_j)] explicitly, as the
paper's Fig. 2 draws it. ``implementation="fast"`` gives the same numbers, to float
rounding, without ever storing that matrix:

    mode             fast path                                           memory
    ---------------  --------------------------------------------------  ----------------
    gaussian,        ``F.scaled_dot_product_attention`` (fused kernel,    O(N·d)
    embedded         softmax computed block by block); ``scale=1``
    dot              y = q (kᵀ v) / N_s: associativity, O(N·d²) time      O(d²)
    concatenation    f_ij = ReLU(a_i + b_j) with a = q·w_θ, b = k·w_φ     O(N·d)
                     (the two halves of w_f). "sorted" (default): sort
                     the b_j, the active j (b_j > -a_i) are a suffix:
                     suffix sums, O(N log N + N·d) time. "chunked":
                     broadcast over chunks of queries, O(N·N_s·d) time    O(chunk·N_s)

The ReLU of "concatenation" forbids the matrix reordering used for "dot" (hence the sort).
When no fused attention kernel accepts the head dimension (CUDA kernels stop at 256;
d = 512 or 1024 happens with C = 1024 or 2048), the softmax modes run over chunks of
queries. Chunks are recomputed in the backward pass (activation checkpointing), so
training also keeps only one chunk×N_s block alive at a time.

``implementation="auto"`` (the default) takes, call by call, whichever path is cheaper
for the shapes at hand (:func:`choose_implementation`), the "blocked" one below included;
all of them agree to float rounding. FLOP counts do not depend on this choice: under :func:`explicit_auto`, which
``nltutorial.cost.count_flops`` enters, "auto" takes the explicit path, so a block is
counted by its formula (the fused kernel may do more multiply-adds, see below). The fused kernel is not free on a CPU: it recomputes q·k in the backward pass, and
it needs one width for q, k and v, so for "gaussian" (dq = C, dv = d = C/2) v is padded to
C. With gradients it does 14·max(dq, dv) float operations per (i, j) pair against
6·(dq + dv) for the explicit products: 7/6 of them for equal widths, 14/9 for "gaussian"
(this is why "gaussian" on its fast path is slower than the explicit map; a Python
flash-style loop without the padding, 11/9, and checkpointed chunks of the explicit map,
12/9, both measured slower than the padded C++ kernel; the "blocked" path below, 9/9, is
faster). The explicit map pays instead for
its memory traffic, m(p) per pair, which grows once the B·N·N_s map leaves the caches.
Fused time / explicit time of the attention alone, forward + backward, by the number of
pairs p = B·N·N_s (one thread of a 2-core AMD EPYC, 1 MiB L2, 16 MiB L3, torch 2.13, B = 2,
q, k, v in the block's layout, the minimum of 5 to 11 interleaved runs):

    dq : dv, where it occurs         2^15  2^17  2^19  2^21  2^23  2^25
    ------------------------------   ----  ----  ----  ----  ----  ----
    128 : 128  embedded, C = 256     1.24  1.16  1.11  1.11  0.86  0.89
    256 : 128  gaussian, C = 256     1.76  1.70  1.49  1.61  1.30  1.23
    8 : 64     PAM, SAGAN; C = 64    1.53  1.56  1.53  1.21  0.90  0.85
    64 : 512   PAM, C = 512          2.00  2.03  2.05  2.00  1.90  1.83
    32 : 32                          1.16  0.99  0.99  0.76  0.56  0.56
    8 : 8      SAGAN ICML, C = 64    1.04  1.54  0.91  0.59  0.27  0.22
    no gradients, 128 : 128          1.13  1.01  0.95  1.04  0.73  0.70
    no gradients, 256 : 128          1.61  1.55  1.46  1.28  1.10  0.97

:func:`choose_implementation` turns this into a cost per pair (its docstring has the
formula; the constants ``MAP_TRAFFIC`` and ``COPY_COST`` are fitted to these runs) and
picks the cheaper path; it agrees with every entry of the table above 1.05 or below 0.95
(and with 104 of the 109 such runs, with and without gradients, at 16²..64²; the other 5
are 8- and 32-wide embeddings at 2^17..2^19 pairs, 1 to 6 ms a call). Two bounds: below
``AUTO_MIN_PAIRS`` (2^18) pairs per-call overheads decide and it builds the softmax map;
above ``AUTO_MAX_PAIRS`` (2^26, a 256 MiB float32 map; the benchmark measured a training
peak of about three maps, 460 MiB at 3.9·10^7 pairs) it takes the fast path to bound
memory, even where the explicit map would still be faster ("gaussian", values wider than
the keys). "dot" compares the
explicit products with the reordered ones, 2(N + N_s)·dq·dv per call instead of
2N·N_s·(dq + dv); "concatenation" always takes the fast path (its explicit form builds a
(B, 2d, N, N_s) tensor and was 4 to 300 times slower wherever it was measured, at 16² and
32²). Off the CPU "auto" takes the fast path (not measured there). The rule was measured
in float32 on one thread of one machine; ``"fast"`` and ``"naive"`` force a path, and
``benchmarks/bench_nonlocal.py`` measures the three, and the "Non-local_pytorch" layout,
on the machine at hand.

``implementation="blocked"`` (softmax modes only, :func:`blocked_softmax_attention`) keeps
the explicit map, and so its memory when training, but builds it in blocks of rows of about
``BLOCK_PAIRS`` pairs per batch element: each block is multiplied, normalised and used while
it is in the cache, and the backward pass is written out by hand (dv += Pᵀdy, dS = P ∘ (dy vᵀ
− D), dq = dS k, dk += dSᵀq, no recomputation and no padding). The map crosses memory twice
instead of about ten times. Its time, forward + backward, against the other two (one thread
of the same CPU, 32 MiB L3, medians of 5 interleaved runs, 2026-12-03, training paused)::

    dq : dv     B × N × N_s        where it occurs              /naive  /fast
    ---------   -----------------  ---------------------------  ------  -----
    256 : 128   2 × 1024 × 1024    gaussian, C = 256, 32²         0.89   0.73
    256 : 128   2 × 4096 × 1024    gaussian, 64², sub-sampled     0.78   0.67
    256 : 128   2 × 4096 × 4096    gaussian, 64²                  0.80   0.72
    256 : 128   1 × 6272 × 6272    gaussian, 8×28² video          0.81   0.70
    128 : 128   2 × 1024 × 1024    embedded, C = 256, 32²         1.00   0.93
    128 : 128   2 × 4096 × 4096    embedded, 64²                  0.76   0.98
    64 : 512    1 × 4096 × 4096    PAM, C = 512, 64²              0.84   0.50
    32 : 256    1 × 4096 × 4096    SAGAN, C = 256, 64²            0.81   0.62
    64 : 32     2 × 4096 × 1024    gaussian, C = 64, sub-sampled  0.60   0.89
    32 : 32     2 × 4096 × 4096    embedded, C = 64, 64²          0.71   1.54
    8 : 64      1 × 4096 × 4096    PAM, C = 64, 64²               0.79   1.17
    8 : 64      1 × 4096 × 1024    PAM, C = 64, 64²/2 keys        1.28   1.16

"auto" takes it with gradients, for maps of 2^21 to 2^27 pairs (``BLOCKED_MIN_PAIRS``,
``BLOCKED_MAX_PAIRS``: below, the whole map is in the caches anyway; above, memory), wherever
it would have built the explicit map, and instead of the fused kernel where a cost per pair
says it is cheaper (``BLOCKED_TRAFFIC``; the fused kernel, whose memory is O(N), stays where
the two are level, for equal widths at 64², and wins for narrow equal widths), but not for
8-wide keys (the last two rows: ``BLOCKED_MIN_WIDTH``). Above 2^27 pairs "blocked" keeps only
each row's log-sum-exp L_i and rebuilds the blocks in the backward pass, P_r = exp(S_r − L_r):
one more product per pair, O(N) memory like the fused kernel, but no padding, so "auto"
takes it where the kernel pads much (``RECOMPUTE_TRAFFIC``; "gaussian" at 8 × 56² sub-sampled)
and the keys are few enough for a block to hold many rows (``REBUILD_MAX_KEYS``).

Checkpoint layout
-----------------
Submodule names and parameter shapes follow the widely used "Non-local_pytorch" layout,
so its state dicts load with ``strict=True``:

    g               Conv{d}d(C, d, 1)            or Sequential(conv, MaxPool) if sub_sample
    theta           Conv{d}d(C, d, 1)            (absent for "gaussian")
    phi             Conv{d}d(C, d, 1)            or Sequential(conv, MaxPool) if sub_sample;
                                                 "gaussian": bare MaxPool, or absent
    W               Sequential(Conv{d}d(d, C, 1), BatchNorm{d}d(C))   or Conv{d}d(d, C, 1)
    concat_project  Sequential(Conv2d(2d, 1, 1, bias=False), ReLU)    ("concatenation")

``concat_project`` is a ``Conv2d`` for every ``dimension``: it acts on the *pair grid*
(i, j) of shape N × N_s, which is two-dimensional whatever the dimension of x is, so the
2D convolution is the natural choice and not a quirk (its weight has shape (1, 2d, 1, 1)
in every case). A weight saved with a ``Conv{d}d`` shape, (1, 2d, 1) or (1, 2d, 1, 1, 1),
is reshaped on loading.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_batch_norm, check_dtype, check_positive_int

__all__ = ["NonLocalBlock", "MODES", "IMPLEMENTATIONS", "CONCAT_ALGORITHMS", "choose_implementation",
           "explicit_auto", "blocked_softmax_attention",
           "softmax_nonlocal", "wake"]

MODES = ("gaussian", "embedded", "dot", "concatenation")
IMPLEMENTATIONS = ("auto", "fast", "naive", "blocked")
#: the modes with a softmax, the only ones with a "blocked" path
SOFTMAX_MODES = ("gaussian", "embedded")

#: chunked paths process at most this many (batch × query × key) pairs at once
#: (2**22 pairs: 16 MiB per float32 intermediate).
CHUNK_PAIRS = 2**22

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL_KERNEL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}
_SPATIAL = {1: "T", 2: "H, W", 3: "T, H, W"}


# --------------------------------------------------------------------------------------
# The non-local operation on flattened features.
# Shapes: q (B, N, dq), k (B, Ns, dq), v (B, Ns, dv)  ->  y (B, N, dv).
# --------------------------------------------------------------------------------------


def attention_map(q: Tensor, k: Tensor, mode: str, scale: float = 1.0, w_f: Optional[Tensor] = None) -> Tensor:
    """The explicit N×N_s matrix A_ij = f(x_i, x_j) / C(x), of shape (B, N, Ns).

    softmax modes: A = softmax_j(scale · q_i·k_j);  "dot": A = q_i·k_j / Ns;
    "concatenation": A = ReLU(w_θ·q_i + w_φ·k_j) / Ns with w_f = [w_θ, w_φ] of shape (2dq,).
    """
    Ns = k.shape[1]
    if mode == "concatenation":
        w_theta, w_phi = w_f.split(q.shape[-1])                 # (dq,), (dq,)
        a = (q @ w_theta.unsqueeze(-1))                         # (B, N, 1)
        b = (k @ w_phi.unsqueeze(-1)).transpose(1, 2)           # (B, 1, Ns)
        return F.relu(a + b) / Ns                               # (B, N, Ns)
    f = q @ k.transpose(1, 2)                                   # (B, N, Ns)
    if mode == "dot":
        return f / Ns
    if scale != 1.0:
        f = f * scale
    return torch.softmax(f, dim=-1)                             # stable: subtracts the row max


def _query_chunks(fn, chunked: Sequence[Tensor], shared: Sequence[Tensor], chunk_size: int) -> Tensor:
    """Apply ``fn(*chunked[:, rows], *shared)`` to consecutive blocks of ``chunk_size`` query rows.

    Each block is checkpointed when gradients are needed: the backward pass recomputes the
    block's chunk×Ns intermediate instead of keeping all N×Ns of them alive.
    """
    from torch.utils.checkpoint import checkpoint  # first use imports much of torch: only here

    N = chunked[0].shape[1]
    track = torch.is_grad_enabled() and any(t.requires_grad for t in (*chunked, *shared))
    outs = []
    for start in range(0, N, chunk_size):
        args = [t[:, start:start + chunk_size] for t in chunked] + list(shared)
        outs.append(checkpoint(fn, *args, use_reentrant=False) if track else fn(*args))
    return torch.cat(outs, dim=1)


def _auto_chunk(batch: int, keys: int) -> int:
    return max(1, CHUNK_PAIRS // max(1, batch * keys))


#: CPU training with fewer batch elements than threads: least query rows per "head" split.
MIN_ROWS_PER_SPLIT = 256


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """SDPA on (B, L, E) tensors: (B, N, dq), (B, Ns, dq), (B, Ns, dv) -> (B, N, dv).

    SDPA takes (batch, heads, L, E) with a stride-1 last dim; we use one head. Except on
    CPU when training with B below the thread count: PyTorch's CPU flash-attention backward
    runs in parallel over batch × heads only, so a single long sequence (B = 1, video) would
    use one core. There the queries are cut into ``split`` heads sharing k and v (an expanded
    view, no copy). Exact: the softmax is over keys, separately for every query.
    """
    B, N, _ = q.shape
    split = 1
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        split = max(1, min(torch.get_num_threads() // B, N // MIN_ROWS_PER_SPLIT))
    if split == 1:
        q, k, v = (t.unsqueeze(1).contiguous() for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=scale).squeeze(1)
    rows = -(-N // split)
    q = F.pad(q, (0, 0, 0, rows * split - N)).reshape(B, split, rows, -1).contiguous()  # zero rows: dropped
    k, v = (t.contiguous().unsqueeze(1).expand(B, split, *t.shape[1:]) for t in (k, v))  # (B, split, Ns, E)
    y = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, split, rows, dv)
    return y.reshape(B, split * rows, -1)[:, :N]


def _fused_only():
    """Context manager allowing only SDPA's fused (O(N)-memory) CUDA kernels, not the math one."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    return sdpa_kernel([getattr(SDPBackend, n) for n in names if hasattr(SDPBackend, n)])


def softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float = 1.0,
                      chunk_size: Optional[int] = None) -> Tensor:
    """y_i = Σ_j softmax_j(scale · q_i·k_j) v_j without storing the N×Ns matrix.

    Uses ``F.scaled_dot_product_attention`` with an explicit ``scale`` (the paper has no
    1/√d). The fused kernels need one head dim for q, k and v; "gaussian" has dq = C but
    dv = d, so the narrower side is zero-padded (this changes neither q_i·k_j nor the first
    dv outputs). On CUDA, if no fused kernel accepts the shapes (head dims above 256, say),
    or whenever ``chunk_size`` is given, the queries are processed in chunks.
    """
    dq, dv = q.shape[-1], v.shape[-1]
    if chunk_size is None:
        d = max(dq, dv)
        qp, kp = (F.pad(t, (0, d - dq)) for t in (q, k)) if dq < d else (q, k)
        vp = F.pad(v, (0, d - dv)) if dv < d else v
        if not q.is_cuda:
            # CPU: the fused flash kernel handles every head dim in O(N·d) memory.
            return _sdpa(qp, kp, vp, scale)[..., :dv]
        try:
            with _fused_only(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SDPA warns about each kernel it rules out
                return _sdpa(qp, kp, vp, scale)[..., :dv]
        except (RuntimeError, ImportError):
            chunk_size = _auto_chunk(q.shape[0], k.shape[1])  # no fused kernel: chunk below
    return _query_chunks(lambda qc, kk, vv: _sdpa(qc, kk, vv, scale), [q], [k, v], chunk_size)


def dot_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """y_i = Σ_j (q_i·k_j) v_j / Ns computed as y = q (kᵀ v) / Ns: O(N·d²), no N×Ns matrix."""
    kv = k.transpose(1, 2) @ v                                  # (B, dq, dv)
    return (q @ kv) / k.shape[1]                                # (B, N, dv)


class _ReluPairs(torch.autograd.Function):
    r"""y = ReLU(a + b) v over chunks of query rows, never holding more than one chunk×Ns block.

    a (B, N, 1), b (B, 1, Ns), v (B, Ns, dv) -> y (B, N, dv). The backward pass recomputes
    each chunk's S = a + b and F = ReLU(S) (activation checkpointing by hand) and applies

        ∂L/∂v = Σ_chunks Fᵀ ∂L/∂y,     ∂L/∂S = (∂L/∂y vᵀ) ⊙ [S > 0],
        ∂L/∂a_i = Σ_j ∂L/∂S_ij,         ∂L/∂b_j = Σ_i ∂L/∂S_ij.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, v: Tensor, chunk_size: int) -> Tensor:
        ctx.save_for_backward(a, b, v)
        ctx.chunk_size = chunk_size
        N = a.shape[1]
        return torch.cat([F.relu(a[:, i:i + chunk_size] + b) @ v for i in range(0, N, chunk_size)], dim=1)

    @staticmethod
    def backward(ctx, dy: Tensor):
        a, b, v = ctx.saved_tensors
        c, N = ctx.chunk_size, a.shape[1]
        acc = torch.promote_types(v.dtype, torch.float32)       # accumulate sums over chunks in >= fp32
        dy = dy.to(v.dtype)
        da = torch.empty(a.shape, dtype=acc, device=a.device)
        db = torch.zeros(b.shape, dtype=acc, device=b.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        for i in range(0, N, c):
            s = a[:, i:i + c] + b                               # (B, c, Ns)
            dy_c = dy[:, i:i + c]                               # (B, c, dv)
            if ctx.needs_input_grad[2]:
                dv += F.relu(s).transpose(1, 2) @ dy_c          # (B, Ns, dv)
            ds = (dy_c @ v.transpose(1, 2)).masked_fill_(s <= 0, 0)  # (B, c, Ns)
            da[:, i:i + c] = ds.sum(dim=-1, keepdim=True, dtype=acc)
            db += ds.sum(dim=1, keepdim=True, dtype=acc)
        return da.to(a.dtype), db.to(b.dtype), dv.to(v.dtype), None


def relu_pairs_sorted(a: Tensor, b: Tensor, v: Tensor) -> Tensor:
    r"""y_i = Σ_j ReLU(a_i + b_j) v_j exactly, in O(Ns log Ns + (N + Ns)·dv) time and memory.

    a (B, N, 1), b (B, 1, Ns), v (B, Ns, dv) -> y (B, N, dv). For query i only the keys with
    b_j > -a_i contribute, each with (a_i + b_j) v_j. Sort the keys by b: the active keys
    are then a *suffix* of the sorted order, starting at p_i = #{j : b_j <= -a_i}, so with
    the suffix sums G_p = Σ_{m>=p} v_(m) and H_p = Σ_{m>=p} b_(m) v_(m)::

        y_i = a_i G_{p_i} + H_{p_i}

    The ReLU forbids the matrix reordering of "dot", but not this one: f depends on (i, j)
    only through the scalar a_i + b_j. Sums are accumulated in float64 (fp32 on MPS).
    """
    B, Ns, dv = v.shape
    N = a.shape[1]
    acc = torch.float32 if v.device.type == "mps" else torch.float64
    b_sorted, order = b.squeeze(1).sort(dim=-1)                 # (B, Ns) ascending
    v_sorted = v.gather(1, order.unsqueeze(-1).expand(B, Ns, dv)).to(acc)       # (B, Ns, dv)
    terms = torch.cat([v_sorted, b_sorted.unsqueeze(-1).to(acc) * v_sorted], dim=-1)  # [v, b·v]
    suffix = terms.flip(1).cumsum(1).flip(1)                    # (B, Ns, 2dv): Σ_{m>=p}
    suffix = F.pad(suffix, (0, 0, 0, 1))                        # (B, Ns+1, 2dv): empty suffix = 0
    p = torch.searchsorted(b_sorted.detach().contiguous(),      # (B, N): first j with b_j > -a_i
                           a.squeeze(-1).detach().neg().contiguous(), right=True)
    G, H = suffix.gather(1, p.unsqueeze(-1).expand(B, N, 2 * dv)).split(dv, dim=-1)  # (B, N, dv) each
    return (a.to(acc) * G + H).to(v.dtype)


CONCAT_ALGORITHMS = ("sorted", "chunked")


def concat_attention(q: Tensor, k: Tensor, v: Tensor, w_f: Tensor, chunk_size: Optional[int] = None,
                     algorithm: str = "sorted") -> Tensor:
    """y_i = Σ_j ReLU(w_θ·q_i + w_φ·k_j) v_j / Ns without the concatenated (N, Ns, 2d) tensor.

    w_fᵀ[q_i, k_j] = w_θ·q_i + w_φ·k_j splits into a query term a_i and a key term b_j.
    ``algorithm="chunked"`` then broadcasts ReLU(a_i + b_j) over chunks of queries, holding
    one (chunk, Ns) block at a time in forward and backward (``_ReluPairs``), O(N·Ns·d) time;
    ``"sorted"`` sorts the b_j and uses suffix sums (``relu_pairs_sorted``), O(N log N + N·d).
    """
    w_theta, w_phi = w_f.split(q.shape[-1])                     # (dq,), (dq,)
    a = q @ w_theta.unsqueeze(-1)                               # (B, N, 1)
    b = (k @ w_phi.unsqueeze(-1)).transpose(1, 2)               # (B, 1, Ns)
    Ns = k.shape[1]
    a, b, v = (t.to(v.dtype) for t in (a, b, v))                # one dtype under autocast too
    if algorithm == "sorted":
        return relu_pairs_sorted(a, b, v) / Ns
    if chunk_size is None:
        chunk_size = _auto_chunk(q.shape[0], Ns)
    return _ReluPairs.apply(a, b, v, chunk_size) / Ns


# --------------------------------------------------------------------------------------
# implementation="auto": the explicit map or the fast path, whichever is cheaper here.
# --------------------------------------------------------------------------------------

#: "auto" never builds an explicit map of more than this many (B·N·N_s) elements: 2**26,
#: 256 MiB in float32 (a training step holds about three such N×N_s tensors at its peak) ...
AUTO_MAX_PAIRS = 2**26
#: ... and always builds it below this many, where per-call overheads decide, not the pairs.
AUTO_MIN_PAIRS = 2**18

#: The cost model of "auto" on a CPU, in float operations at GEMM speed per (i, j) pair (see
#: the module docstring). m(p), the explicit map's memory traffic and elementwise passes, grows
#: as the map leaves the caches: (m up to 2**start pairs, increase per doubling of p, start,
#: largest m), for a call with gradients (True) and without (False) ...
MAP_TRAFFIC = {True: (60.0, 65.0, 21, 200.0), False: (70.0, 60.0, 20, 270.0)}
#: ... and the cost per element of the fused path's copies to and from the kernel's layout.
COPY_COST = 64.0
#: "blocked" only where q and v are both at least this wide: with 8-wide keys (PAM, SAGAN)
#: its products are too thin to pay for the loop over blocks (measured up to 1.28x naive)
BLOCKED_MIN_WIDTH = 32
#: ... and its cost per pair beyond the products (two passes of the map through memory, the
#: in-cache softmax): 130-510 when fitted to each blocked/fast ratio of the module docstring's
#: runs; 300 taken, which keeps the fused kernel (O(N) memory) for equal widths at 64², where
#: the two are level (0.98), and agrees with every other decision of those runs
BLOCKED_TRAFFIC = 300.0
#: ... and only for maps of this many pairs or more: below, the map sits in the caches and
#: the loop over blocks does not pay (2 × 32² sub-sampled and 4 × 14², 2^19 pairs: 1.01-1.08x
#: the explicit map in bench_nonlocal_blocked_cpu.txt and bench_nonlocal_dispatch_cpu.txt);
#: at 2 × 32² (2^21) it was 0.87x and 1.03x, 0.96x and 0.99x (gaussian, embedded) ...
BLOCKED_MIN_PAIRS = 2**21
#: ... and up to this many: it keeps one map (and one block) where the explicit path keeps
#: about three at its peak, so twice AUTO_MAX_PAIRS stays within the memory the explicit map
#: may take (at 2 × 128² sub-sampled, 2^27 pairs, a training step peaked at 696 MiB blocked,
#: 1620 MiB explicit); beyond it "fast" (O(N) memory)
BLOCKED_MAX_PAIRS = 2**27
#: ... beyond which "blocked" keeps only each row's log-sum-exp and rebuilds the blocks in the
#: backward pass (one more product, 2·dq per pair): its cost per pair beyond the products,
#: fitted to gaussian-width runs (dq = 256, dv = 128: 0.79-0.98x the fused kernel at 2^24 to
#: 2^28 pairs, which pads v to 256; measured while training ran, see REBUILD_MAX_KEYS) and PAM's (64 : 512, 0.53x); with equal widths (128 : 128,
#: 1.26x) the kernel stays
RECOMPUTE_TRAFFIC = 500.0
#: ... and only up to this many keys N_s: a block of BLOCK_PAIRS holds BLOCK_PAIRS / N_s rows,
#: and with few rows its products run slowly. Quiet grid of 2026-12-04 (bench_nonlocal_cpu.txt),
#: gaussian, rebuilt map against the fused kernel: 0.85x at 6272 keys (8 × 56² sub-sampled, 334
#: rows), 1.12x at 16384 (2 × 128², 128 rows) and 1.19x at 25088 (8 × 56², 83 rows)
REBUILD_MAX_KEYS = 8192


#: the blocked explicit path fills the map in blocks of rows of about this many (query × key)
#: pairs per batch element (2**21: 8 MiB of float32, inside this CPU's 32 MiB L3)
BLOCK_PAIRS = 2**21


def _block_rows(keys: int, block_pairs: int) -> int:
    return max(1, block_pairs // max(1, keys))


class _BlockedSoftmax(torch.autograd.Function):
    """y = softmax(scale · q kᵀ) v, the map built and used in row blocks: stored, or recomputed.

    Forward, for each batch element and block of rows r: S_r = scale · q_r kᵀ,
    P_r = softmax(S_r) in place (one fused pass per row), y_r = P_r v, all while P_r is still
    in the cache. Backward, with D_i = Σ_c dy_ic y_ic: dv += P_rᵀ dy_r,
    dS_r = P_r ∘ (dy_r vᵀ − D_r), dq_r = scale · dS_r k, dk += scale · dS_rᵀ q_r.
    ``keep_map=True``: the whole map P is saved for the backward pass (the products of the
    explicit map, no recomputation and no padding; two passes of P through memory instead of
    about ten). ``keep_map=False``: only the log-sum-exp of every row, L_i = log Σ_j exp S_ij,
    is saved and the backward pass rebuilds each block, P_r = exp(S_r − L_r): one more product
    (2·dq per pair), O(N) memory, and still no padding. Without gradients one block exists.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, block_pairs: int, keep_map: bool) -> Tensor:
        B, N, _ = q.shape
        Ns, dv = k.shape[1], v.shape[2]
        rows = min(N, _block_rows(Ns, block_pairs))
        grad = any(ctx.needs_input_grad[:3])
        keep = grad and keep_map
        P = q.new_empty(B, N, Ns) if keep else q.new_empty(1, rows, Ns)  # the map, or one block
        lse = q.new_empty(B, N) if grad and not keep else None           # L_i, to rebuild P
        y = q.new_empty(B, N, dv)
        for b in range(B):                                       # a block is contiguous
            kt = k[b].t()                                        # (dq, Ns)
            for s in range(0, N, rows):
                e = min(N, s + rows)
                Pr = P[b, s:e] if keep else P[0, : e - s]        # (r, Ns)
                torch.addmm(Pr, q[b, s:e], kt, beta=0, alpha=scale, out=Pr)
                if lse is not None:                              # row maxima m_r of S_r
                    torch.amax(Pr, -1, out=lse[b, s:e])
                torch.softmax(Pr, -1, out=Pr)                    # over j, in place
                if lse is not None:                              # L = m − log max_j P (exp-free)
                    lse[b, s:e].sub_(Pr.amax(-1).log_())
                torch.mm(Pr, v[b], out=y[b, s:e])
        if keep:
            ctx.save_for_backward(q, k, v, P, y)
        elif grad:
            ctx.save_for_backward(q, k, v, lse, y)
        ctx.scale, ctx.rows, ctx.keep = scale, rows, keep
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        q, k, v, saved, y = ctx.saved_tensors                   # saved: P (B, N, Ns) or L (B, N)
        scale, rows = ctx.scale, ctx.rows
        B, N, _ = q.shape
        dy = dy.contiguous()
        D = (dy * y).sum(-1, keepdim=True)                       # (B, N, 1)
        dq = q.new_empty(q.shape)
        dk, dv = k.new_zeros(k.shape), v.new_zeros(v.shape)
        dS = q.new_empty(min(N, rows), k.shape[1])               # one block
        P = None if ctx.keep else q.new_empty(min(N, rows), k.shape[1])
        for b in range(B):
            vt, kt = v[b].t(), k[b].t()                          # (dv, Ns), (dq, Ns)
            for s in range(0, N, rows):
                e = min(N, s + rows)
                dSr, dyr = dS[: e - s], dy[b, s:e]
                if ctx.keep:
                    Pr = saved[b, s:e]
                else:                                            # P_r = exp(scale · q_r kᵀ − L_r)
                    Pr = P[: e - s]
                    torch.addmm(Pr, q[b, s:e], kt, beta=0, alpha=scale, out=Pr)
                    Pr.sub_(saved[b, s:e, None]).exp_()
                dv[b].addmm_(Pr.t(), dyr)                        # dv += P_rᵀ dy_r
                torch.mm(dyr, vt, out=dSr)                       # dP_r = dy_r vᵀ
                dSr.sub_(D[b, s:e]).mul_(Pr)                     # dS_r = P_r ∘ (dP_r − D_r)
                torch.mm(dSr, k[b], out=dq[b, s:e])
                dk[b].addmm_(dSr.t(), q[b, s:e])                 # dk += dS_rᵀ q_r
        if scale != 1:
            dq.mul_(scale)
            dk.mul_(scale)
        return dq, dk, dv, None, None, None


def blocked_softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: float = 1.0,
                              block_pairs: int = BLOCK_PAIRS, keep_map: Optional[bool] = None) -> Tensor:
    """y_i = Σ_j softmax_j(scale · q_i·k_j) v_j through the explicit map, in cache-sized blocks.

    q (B, N, dq), k (B, Ns, dq), v (B, Ns, dv) -> (B, N, dv). The numbers of the explicit map
    (``implementation="naive"``) to float rounding, but faster on a CPU: each block of rows of
    about ``block_pairs`` pairs per batch element is built, normalised and used while it sits
    in the cache, and the backward pass is written out by hand. No padding, so q and v may
    differ in width ("gaussian"). ``keep_map``: when differentiated, keep the B × N × Ns map
    for the backward pass (True), or keep each row's log-sum-exp and rebuild the blocks there
    (False: one more product per pair, O(N) memory); None: keep it up to
    ``BLOCKED_MAX_PAIRS`` pairs. Without gradients only one block exists either way.
    """
    check_positive_int("block_pairs", block_pairs)
    if keep_map is None:
        keep_map = q.shape[0] * q.shape[1] * k.shape[1] <= BLOCKED_MAX_PAIRS
    elif not isinstance(keep_map, bool):
        raise TypeError(f"keep_map must be True, False or None, got {keep_map!r}")
    return _BlockedSoftmax.apply(q, k, v, scale, block_pairs, keep_map)


def _kernel_cost(positions: int, keys: int, w: int, g: int) -> float:
    """The fused kernel's cost per pair: (2 + 5g) · 2w + (1 + g) · COPY_COST · (N + 2Ns) w / (N Ns)."""
    return (2 + 5 * g) * 2 * w + (1 + g) * COPY_COST * (positions + 2 * keys) * w / (positions * keys)


def _map_traffic(pairs: int, grad: bool) -> float:
    """m(p) of the cost model, from ``MAP_TRAFFIC``."""
    low, slope, start, high = MAP_TRAFFIC[bool(grad)]
    return min(high, low + slope * max(0.0, math.log2(max(pairs, 1)) - start))


def choose_implementation(mode: str, batch: int, positions: int, keys: int, dq: int, dv: int, *,
                          grad: bool = True, device: str = "cpu") -> str:
    r"""The path ``implementation="auto"`` takes for these shapes: "naive", "fast" or "blocked".

    q (B, N, dq), k (B, Ns, dq), v (B, Ns, dv); ``grad``: the call is differentiated;
    ``device``: a device type. Off the CPU, for "concatenation" and for maps of more than
    ``AUTO_MAX_PAIRS`` elements it is "fast" ("blocked" apart, below); in the softmax modes,
    for fewer than ``AUTO_MIN_PAIRS`` "naive". Otherwise the cheaper of two costs per (i, j) pair, in float
    operations (measurements in the module docstring)::

        explicit map                     (1 + 2g) · (2 (dq + dv) + m(p))
        softmax modes, fused kernel      (2 + 5g) · 2w + (1 + g) · COPY_COST · (N + 2 Ns) w / (N Ns)
        "dot", reordered y = q (kᵀv)/Ns  (1 + 2g) · 2 (N + Ns) dq dv / (N Ns)

    g = 1 with gradients (a backward pass costs twice the forward; the fused kernel also
    recomputes q·k), w = max(dq, dv) (the CPU kernel pads q, k and v to one width),
    p = B·N·Ns and m(p) = ``_map_traffic(p, grad)``.

    With gradients, in the softmax modes, on the CPU, for ``BLOCKED_MIN_PAIRS`` to
    ``BLOCKED_MAX_PAIRS`` pairs and where both widths are at least ``BLOCKED_MIN_WIDTH``,
    "blocked" (:func:`blocked_softmax_attention`: the explicit products, built and used in
    cache-sized blocks) replaces the explicit map wherever the rule picks that, and the fused
    kernel where it is cheaper than the kernel::

        blocked explicit map             3 · 2 (dq + dv) + BLOCKED_TRAFFIC

    (so where the kernel pads v or q and k a lot: "gaussian", PAM and SAGAN with wide values).
    Above ``BLOCKED_MAX_PAIRS`` (with gradients, softmax modes, the same widths) "blocked"
    rebuilds the map's blocks in the backward pass instead of keeping it (O(N) memory, like
    the kernel), and is taken for at most ``REBUILD_MAX_KEYS`` keys where it is cheaper than
    the kernel::

        blocked, map rebuilt             8 dq + 6 dv + RECOMPUTE_TRAFFIC
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    pairs = batch * positions * keys
    if device != "cpu" or mode == "concatenation":
        return "fast"
    if pairs > max(AUTO_MAX_PAIRS, BLOCKED_MAX_PAIRS):
        if grad and mode in SOFTMAX_MODES and min(dq, dv) >= BLOCKED_MIN_WIDTH:
            w = max(dq, dv)
            rebuilt = 8 * dq + 6 * dv + RECOMPUTE_TRAFFIC
            if keys <= REBUILD_MAX_KEYS and rebuilt < _kernel_cost(positions, keys, w, 1):
                return "blocked"                                 # the map rebuilt, O(N) memory
        return "fast"
    g = 1 if grad else 0
    explicit = (1 + 2 * g) * (2 * (dq + dv) + _map_traffic(pairs, grad))
    if mode == "dot":
        fast = (1 + 2 * g) * 2 * (positions + keys) * dq * dv / (positions * keys)
    elif pairs < AUTO_MIN_PAIRS:
        return "naive"
    else:
        w = max(dq, dv)
        fast = _kernel_cost(positions, keys, w, g)
    path = "naive" if explicit <= fast and pairs <= AUTO_MAX_PAIRS else "fast"
    if (grad and mode in SOFTMAX_MODES and min(dq, dv) >= BLOCKED_MIN_WIDTH
            and BLOCKED_MIN_PAIRS <= pairs <= BLOCKED_MAX_PAIRS):
        blocked = 3 * 2 * (dq + dv) + BLOCKED_TRAFFIC
        if path == "naive" or blocked < fast:
            return "blocked"
    return path


_EXPLICIT_AUTO = contextvars.ContextVar("nltutorial_explicit_auto", default=False)


@contextlib.contextmanager
def explicit_auto():
    """Inside this context, ``implementation="auto"`` resolves to the explicit path ("naive").

    For counting: ``nltutorial.cost.count_flops`` enters it, so that the FLOPs of a block
    are those of its formula whatever path the dispatch would take for the shapes at hand
    (the fused CPU kernel pads q, k and v to one width and so does more multiply-adds for
    PAM, SAGAN and "gaussian"). Explicit "fast" / "naive" settings, ``chunk_size`` and
    "concatenation" (whose explicit form is a (B, 2d, N, N_s) tensor) are left as they are.
    """
    token = _EXPLICIT_AUTO.set(True)
    try:
        yield
    finally:
        _EXPLICIT_AUTO.reset(token)


def _needs_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def softmax_nonlocal(q: Tensor, k: Tensor, v: Tensor, scale: float = 1.0, implementation: str = "auto",
                     chunk_size: Optional[int] = None) -> Tensor:
    """y_i = Σ_j softmax_j(scale · q_i·k_j) v_j by the explicit map or the fused path.

    q (B, N, dq), k (B, Ns, dq), v (B, Ns, dv) -> y (B, N, dv). ``implementation``: "naive"
    (``attention_map(...) @ v``), "fast" (:func:`softmax_attention`, no N×Ns matrix),
    "blocked" (:func:`blocked_softmax_attention`, the explicit map in cache-sized blocks) or
    "auto" (:func:`choose_implementation`; "fast" whenever ``chunk_size`` is given).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto" and chunk_size is None and _EXPLICIT_AUTO.get():
        implementation = "naive"                                # counting: the formula
    if implementation == "auto":
        implementation = "fast" if chunk_size is not None else choose_implementation(
            "embedded", q.shape[0], q.shape[1], k.shape[1], q.shape[2], v.shape[2],
            grad=_needs_grad(q, k, v), device=q.device.type)
    if implementation == "naive":
        return attention_map(q, k, "embedded", scale) @ v       # (B, N, dv)
    if implementation == "blocked":
        return blocked_softmax_attention(q, k, v, scale)
    return softmax_attention(q, k, v, scale, chunk_size)


# --------------------------------------------------------------------------------------
# The block.
# --------------------------------------------------------------------------------------


def _memory_format(x: Tensor) -> torch.memory_format:
    """The memory format of x: channels-last (2D, 3D) when x is stored so, else contiguous."""
    for dim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == dim and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


class NonLocalBlock(nn.Module):
    r"""Non-local block z = W_z y + x, with y_i = 1/C(x) Σ_j f(x_i, x_j) g(x_j).

    Args:
        in_channels: C, the channels of x.
        inter_channels: d, the channels of θ, φ and g; default ``max(1, C // 2)``.
        dimension: 1, 2 or 3, for x of shape (B, C, T), (B, C, H, W) or (B, C, T, H, W).
        mode: the pairwise function f: "gaussian", "embedded", "dot" or "concatenation".
        sub_sample: max-pool after φ and g (kernel 2, 2×2, 1×2×2), N_s ≈ N/2 or N/4.
        bn_layer: W_z = Conv + BatchNorm with zero-initialised BN weight and bias;
            otherwise W_z = Conv with zero-initialised weight and bias.
        attention_scale: the softmax modes compute softmax_j(s · θ_iᵀφ_j). The paper's
            s = 1 is the default; ``None`` uses the Transformer's 1/√(dq) (dq = d, or C for
            "gaussian"). Must stay 1 for "dot" and "concatenation".
        implementation: "auto" (default: per call, the explicit map where it is cheaper
            and small, else the fused path; see :func:`choose_implementation`), "fast"
            (never the N×N_s matrix) or "naive" (the explicit N×N_s matrix, the
            reference).
        chunk_size: query rows per chunk for the chunked paths; ``None`` chooses so that a
            chunk holds at most ``CHUNK_PAIRS`` pairs. Giving it forces chunking in the
            softmax modes (otherwise used only when no fused kernel fits), and "auto" then
            takes the fast path there.
        concat_algorithm: fast path of "concatenation": "sorted" (default; sort the key
            terms, suffix sums, O(N log N + N·d)) or "chunked" (broadcast ReLU(a_i + b_j)
            over chunks of queries, O(N·N_s·d) time, chunk×N_s memory).
        max_attention_elements: ``forward(x, return_attention=True)`` raises ValueError
            when the map would have more than this many (B·N·N_s) elements; default 2**24
            (64 MiB in float32). An attribute: change it on the instance if needed.

    The int arguments accept any integer type (numpy ints too). x must have the dtype of
    the block's parameters (outside autocast, see ``_utils.check_dtype``); an empty batch
    (B = 0) gives an empty z. z is stored in x's memory format (contiguous or channels-last).

    Example:
        >>> block = NonLocalBlock(64, dimension=2, mode="embedded").eval()
        >>> x = torch.randn(2, 64, 16, 16)
        >>> z, attn = block(x, return_attention=True)   # attn: (2, 256, 64)
        >>> torch.equal(z, x)                             # identity at initialisation
        True
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: Optional[int] = None,
        dimension: int = 2,
        mode: str = "embedded",
        sub_sample: bool = True,
        bn_layer: bool = True,
        *,
        attention_scale: Optional[float] = 1.0,
        implementation: str = "auto",
        chunk_size: Optional[int] = None,
        max_attention_elements: int = 2**24,
        concat_algorithm: str = "sorted",
    ) -> None:
        super().__init__()
        in_channels = check_positive_int("in_channels", in_channels)
        if inter_channels is None:
            inter_channels = max(1, in_channels // 2)
        inter_channels = check_positive_int("inter_channels", inter_channels)
        if isinstance(dimension, bool) or not isinstance(dimension, numbers.Integral) or dimension not in (1, 2, 3):
            raise ValueError(f"dimension must be 1, 2 or 3, got {dimension!r}")
        dimension = int(dimension)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if attention_scale is not None:
            if isinstance(attention_scale, bool) or not isinstance(attention_scale, (int, float)) \
                    or not math.isfinite(attention_scale) or attention_scale <= 0:
                raise ValueError(f"attention_scale must be a positive float or None, got {attention_scale!r}")
            attention_scale = float(attention_scale)
        if mode in ("dot", "concatenation") and attention_scale != 1.0:
            raise ValueError(f"attention_scale applies to the softmax modes only; mode={mode!r} "
                             f"needs attention_scale=1.0, got {attention_scale!r}")
        if chunk_size is not None:
            chunk_size = check_positive_int("chunk_size", chunk_size)
        max_attention_elements = check_positive_int("max_attention_elements", max_attention_elements)
        if concat_algorithm not in CONCAT_ALGORITHMS:
            raise ValueError(f"concat_algorithm must be one of {CONCAT_ALGORITHMS}, got {concat_algorithm!r}")

        self.in_channels = in_channels
        self.inter_channels = inter_channels
        self.dimension = dimension
        self.mode = mode
        self.sub_sample = bool(sub_sample)
        self.bn_layer = bool(bn_layer)
        self.attention_scale = attention_scale
        self.implementation = implementation
        self.chunk_size = chunk_size
        self.max_attention_elements = max_attention_elements
        self.concat_algorithm = concat_algorithm

        conv, C, d = _CONV[dimension], in_channels, inter_channels
        pool = _MAX_POOL[dimension](kernel_size=_POOL_KERNEL[dimension])

        # g, θ, φ: 1×1(×1) convolutions C -> d; max-pooling after g and φ when sub-sampling.
        self.g = conv(C, d, kernel_size=1)
        if mode == "gaussian":
            self.theta = None                                   # θ(x) = x
            self.phi = pool if sub_sample else None             # φ(x) = x, or its max-pool
        else:
            self.theta = conv(C, d, kernel_size=1)
            self.phi = conv(C, d, kernel_size=1)
            if sub_sample:
                self.phi = nn.Sequential(self.phi, pool)
        if sub_sample:
            self.g = nn.Sequential(self.g, pool)

        # w_f of "concatenation": a 1×1 Conv2d on the (i, j) pair grid, see the module docstring.
        if mode == "concatenation":
            self.concat_project = nn.Sequential(nn.Conv2d(2 * d, 1, kernel_size=1, bias=False), nn.ReLU())

        # W_z: d -> C, zero at initialisation so that z = x.
        if bn_layer:
            self.W = nn.Sequential(conv(d, C, kernel_size=1), _BATCH_NORM[dimension](C))
            nn.init.zeros_(self.W[1].weight)
            nn.init.zeros_(self.W[1].bias)
        else:
            self.W = conv(d, C, kernel_size=1)
            nn.init.zeros_(self.W.weight)
            nn.init.zeros_(self.W.bias)

    # ---- options --------------------------------------------------------------------

    @property
    def implementation(self) -> str:
        return self._implementation

    @implementation.setter
    def implementation(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {value!r}")
        if value == "blocked" and self.mode not in SOFTMAX_MODES:
            raise ValueError(f"implementation='blocked' is for the softmax modes {SOFTMAX_MODES}, "
                             f"not mode={self.mode!r}; use 'naive', 'fast' or 'auto'")
        self._implementation = value

    def softmax_scale(self) -> float:
        """The s of softmax_j(s · q_i·k_j): ``attention_scale``, or 1/√dq when it is None."""
        if self.attention_scale is not None:
            return self.attention_scale
        dq = self.in_channels if self.mode == "gaussian" else self.inter_channels
        return 1.0 / math.sqrt(dq)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, inter_channels={self.inter_channels}, "
                f"dimension={self.dimension}, mode={self.mode!r}, sub_sample={self.sub_sample}, "
                f"bn_layer={self.bn_layer}, implementation={self.implementation!r}"
                + (f", concat_algorithm={self.concat_algorithm!r}" if self.mode == "concatenation" else ""))

    # ---- forward --------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        expected = f"(B, {self.in_channels}, {_SPATIAL[self.dimension]})"
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() != self.dimension + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape {expected} for dimension={self.dimension}, "
                             f"got {tuple(x.shape)}")
        spatial = tuple(x.shape[2:])
        if min(spatial) < 1:
            raise ValueError(f"x must have shape {expected} with non-empty {_SPATIAL[self.dimension]}, "
                             f"got {tuple(x.shape)}")
        kernel = _POOL_KERNEL[self.dimension]
        if self.sub_sample and any(s < k for s, k in zip(spatial, kernel)):
            raise ValueError(f"x of shape {tuple(x.shape)} is too small for sub_sample=True: the "
                             f"max-pooling kernel {kernel} needs ({_SPATIAL[self.dimension]}) >= {kernel}")
        check_dtype(x, self)
        if self.bn_layer and x.shape[0] > 0:
            check_batch_norm(x, self.W[1], x.shape[0] * math.prod(spatial), "the BatchNorm of W_z")

    def _key_positions(self, spatial) -> int:
        """N_s: the positions j, after the max-pooling of sub_sample (floored)."""
        if not self.sub_sample:
            return math.prod(spatial)
        return math.prod(s // k for s, k in zip(spatial, _POOL_KERNEL[self.dimension]))

    def _embed(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q = θ(x) (B, N, dq), k = φ(x) (B, Ns, dq), v = g(x) (B, Ns, d): positions first."""
        v = self.g(x).flatten(2).transpose(1, 2)                # (B, Ns, d)
        if self.mode == "gaussian":
            q = x.flatten(2).transpose(1, 2)                    # (B, N, C)
            k = x if self.phi is None else self.phi(x)
            k = k.flatten(2).transpose(1, 2)                    # (B, Ns, C)
            # Under autocast the convolution g ran in low precision but x did not: match v.
            q, k = q.to(v.dtype), k.to(v.dtype)
        else:
            q = self.theta(x).flatten(2).transpose(1, 2)        # (B, N, d)
            k = self.phi(x).flatten(2).transpose(1, 2)          # (B, Ns, d)
        return q, k, v

    def _w_f(self) -> Optional[Tensor]:
        return self.concat_project[0].weight.flatten() if self.mode == "concatenation" else None  # (2d,)

    def _naive(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The explicit form: build the (B, N, Ns) matrix f/C(x), then multiply by v."""
        if self.mode != "concatenation":
            return attention_map(q, k, self.mode, self.softmax_scale()) @ v
        # concatenation exactly as drawn: the (B, 2d, N, Ns) tensor [θ_i, φ_j] through w_f.
        B, N, d = q.shape
        Ns = k.shape[1]
        theta_ij = q.transpose(1, 2).unsqueeze(3).expand(B, d, N, Ns)
        phi_ij = k.transpose(1, 2).unsqueeze(2).expand(B, d, N, Ns)
        f = self.concat_project(torch.cat([theta_ij, phi_ij], dim=1)).squeeze(1)  # (B, N, Ns)
        return (f / Ns) @ v

    def _choose(self, batch: int, positions: int, keys: int, grad: bool, device: str) -> str:
        """"naive", "fast" or "blocked": the path of this call ("auto" resolved)."""
        if self.implementation != "auto":
            return self.implementation
        if self.chunk_size is not None and self.mode in ("gaussian", "embedded"):
            return "fast"                                       # chunks were asked for
        if _EXPLICIT_AUTO.get() and self.mode != "concatenation":
            return "naive"                                      # counting: the formula
        dq = self.in_channels if self.mode == "gaussian" else self.inter_channels
        return choose_implementation(self.mode, batch, positions, keys, dq, self.inter_channels,
                                     grad=grad, device=device)

    def implementation_for(self, x: Tensor) -> str:
        """The path, "naive", "fast" or "blocked", that ``forward(x)`` takes now (grad mode included)."""
        self._check_input(x)
        grad = _needs_grad(x, *self.parameters())
        spatial = x.shape[2:]
        return self._choose(x.shape[0], math.prod(spatial), self._key_positions(spatial), grad, x.device.type)

    def _blocked(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The explicit softmax map, built and used in cache-sized blocks of rows."""
        return blocked_softmax_attention(q, k, v, self.softmax_scale())

    def _fast(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.mode == "dot":
            return dot_attention(q, k, v)
        if self.mode == "concatenation":
            return concat_attention(q, k, v, self._w_f(), self.chunk_size, self.concat_algorithm)
        return softmax_attention(q, k, v, self.softmax_scale(), self.chunk_size)

    def forward(self, x: Tensor, return_attention: bool = False) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """z = W_z y + x for x of shape (B, C, *spatial); z has the same shape.

        With ``return_attention=True`` returns ``(z, attn)``, attn of shape (B, N, N_s) the
        matrix f(x_i, x_j)/C(x) (rows sum to 1 in the softmax modes), with i over the N
        positions of x and j over the N_s (sub-sampled) positions, both flattened row-major.
        """
        self._check_input(x)
        B, spatial = x.shape[0], x.shape[2:]
        if B == 0:                                              # empty batch: z = x, shape kept
            attn = x.new_zeros(0, math.prod(spatial), self._key_positions(spatial))
            return (x.clone(), attn) if return_attention else x.clone()
        q, k, v = self._embed(x)                                # (B, N, dq), (B, Ns, dq), (B, Ns, d)
        attn = None
        if return_attention:
            size = B * q.shape[1] * k.shape[1]
            if size > self.max_attention_elements:
                raise ValueError(
                    f"return_attention=True would build a (B, N, N_s) = {(B, q.shape[1], k.shape[1])} "
                    f"attention map, {size} elements > max_attention_elements={self.max_attention_elements}; "
                    f"raise max_attention_elements or use a smaller input")
            attn = attention_map(q, k, self.mode, self.softmax_scale(), self._w_f())
            y = attn @ v
        else:
            path = self._choose(B, q.shape[1], k.shape[1], _needs_grad(q, k, v), q.device.type)
            y = {"naive": self._naive, "blocked": self._blocked, "fast": self._fast}[path](q, k, v)
        y = y.transpose(1, 2).reshape(B, self.inter_channels, *spatial)  # (B, d, *spatial)
        fmt = _memory_format(x)
        y = y.contiguous(memory_format=fmt)                     # x's layout ...
        z = self.W(y).contiguous(memory_format=fmt) + x         # ... so z = W_z y + x keeps it: (B, C, *spatial)
        return (z, attn) if return_attention else z

    # ---- checkpoints ----------------------------------------------------------------

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept w_f saved from a Conv1d/Conv3d variant: (1, 2d, 1) or (1, 2d, 1, 1, 1).
        key = prefix + "concat_project.0.weight"
        w = state_dict.get(key)
        if self.mode == "concatenation" and w is not None and w.dim() != 4 \
                and w.shape[:2] == (1, 2 * self.inter_channels) and w.numel() == 2 * self.inter_channels:
            state_dict[key] = w.reshape(1, -1, 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def wake(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every :class:`NonLocalBlock` in ``module`` (or ``module`` itself) a non-zero W_z.

    A fresh block is the identity, z = x, because W_z starts at zero; this gives its last
    layer random values, as training would, so that checks of the block see the attention
    term. With ``bn_layer=True`` the BatchNorm after the W_z convolution gets scale ~ N(0, 1)
    and shift ~ 0.1·N(0, 1); otherwise the W_z convolution gets weight ~ N(0, 1/d) and bias
    ~ 0.1·N(0, 1). Draws come from a generator seeded with ``seed``, block after block in
    ``module.modules()`` order. Returns ``module`` (changed in place).
    """
    blocks = [m for m in module.modules() if isinstance(m, NonLocalBlock)]
    if not blocks:
        raise ValueError(f"module must be or contain a NonLocalBlock, got {type(module).__name__}")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in blocks:
            if block.bn_layer:
                scale, shift = block.W[1].weight, block.W[1].bias
            else:
                scale, shift = block.W.weight, block.W.bias
            std = 1.0 if block.bn_layer else block.inter_channels ** -0.5
            scale.copy_(std * torch.randn(scale.shape, generator=gen))
            shift.copy_(0.1 * torch.randn(shift.shape, generator=gen))
    return module
