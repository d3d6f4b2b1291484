"""Tests of nltutorial.nonlocal_block: the fast paths against the explicit N×N form, against an
independent reference in the "Non-local_pytorch" checkpoint layout, gradients, validation."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import largest_saved_tensor

from nltutorial import nonlocal_block
from nltutorial.cost import peak_memory
from nltutorial.nonlocal_block import (IMPLEMENTATIONS, MODES, NonLocalBlock, blocked_softmax_attention,
                                       choose_implementation, relu_pairs_sorted, wake)
from nltutorial.video_models import video_resnet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny shapes gain nothing from threads, and lose a lot when the CPU is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DIMS = (1, 2, 3)
SOFTMAX_MODES = ("gaussian", "embedded")
#: tiny spatial sizes per dimension; odd sides exercise the flooring of the max-pooling
SHAPES = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}


# --------------------------------------------------------------------------------------
# An independent reference, written from the paper: the explicit N×N_s matrix, in the
# state-dict layout of the popular "Non-local_pytorch" implementation.
# --------------------------------------------------------------------------------------


class LayoutReference(nn.Module):
    """Plain non-local block: same submodule names as the popular layout, explicit pair matrix."""

    def __init__(self, in_channels, inter_channels, dimension, mode, sub_sample, bn_layer, scale=1.0):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dimension]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dimension]
        pool = {1: nn.MaxPool1d(2), 2: nn.MaxPool2d((2, 2)), 3: nn.MaxPool3d((1, 2, 2))}[dimension]
        self.mode, self.d, self.scale = mode, inter_channels, scale
        self.g = conv(in_channels, inter_channels, 1)
        if mode != "gaussian":
            self.theta = conv(in_channels, inter_channels, 1)
            self.phi = conv(in_channels, inter_channels, 1)
        if sub_sample:
            self.g = nn.Sequential(self.g, pool)
            self.phi = nn.Sequential(self.phi, pool) if mode != "gaussian" else pool
        if mode == "concatenation":
            self.concat_project = nn.Sequential(nn.Conv2d(2 * inter_channels, 1, 1, bias=False), nn.ReLU())
        self.W = nn.Sequential(conv(inter_channels, in_channels, 1), bn(in_channels)) if bn_layer \
            else conv(inter_channels, in_channels, 1)

    def forward(self, x):
        B, C = x.shape[:2]
        g_x = self.g(x).reshape(B, self.d, -1)                          # (B, d, Ns)
        if self.mode == "gaussian":
            th = x.reshape(B, C, -1)
            ph = (self.phi(x) if hasattr(self, "phi") else x).reshape(B, C, -1)
        else:
            th = self.theta(x).reshape(B, self.d, -1)                   # (B, d, N)
            ph = self.phi(x).reshape(B, self.d, -1)                     # (B, d, Ns)
        N, Ns = th.shape[-1], ph.shape[-1]
        if self.mode in SOFTMAX_MODES:
            logits = torch.einsum("bci,bcj->bij", th, ph) * self.scale
            e = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
            A = e / e.sum(dim=-1, keepdim=True)
        elif self.mode == "dot":
            A = torch.einsum("bci,bcj->bij", th, ph) / Ns
        else:
            pairs = torch.cat([th[:, :, :, None].repeat(1, 1, 1, Ns), ph[:, :, None, :].repeat(1, 1, N, 1)], 1)
            A = self.concat_project(pairs)[:, 0] / Ns                   # (B, N, Ns)
        y = torch.einsum("bij,bcj->bci", A, g_x).reshape(B, self.d, *x.shape[2:])
        return self.W(y) + x


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BatchNorm statistics included, so W_z y is not zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
    return module.eval()


def make_pair(dim, mode, sub_sample, bn_layer, C=6, d=3, dtype=torch.float64, **kwargs):
    """(block, reference) with the reference's random weights loaded into the block, strict=True."""
    scale = kwargs.get("attention_scale", 1.0)
    if scale is None:
        scale = 1 / math.sqrt(C if mode == "gaussian" else d)
    ref = randomise(LayoutReference(C, d, dim, mode, sub_sample, bn_layer, scale)).to(dtype)
    block = NonLocalBlock(C, d, dim, mode, sub_sample, bn_layer, **kwargs).to(dtype).eval()
    block.load_state_dict(ref.state_dict(), strict=True)
    return block, ref


def rand_x(dim, B=2, C=6, dtype=torch.float64, seed=1, shape=None):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, *(shape or SHAPES[dim]), generator=gen, dtype=dtype)


# --------------------------------------------------------------------------------------
# Equivalence and checkpoints
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,mode,sub_sample,bn_layer", itertools.product(DIMS, MODES, (True, False), (True, False)))
def test_fast_equals_naive_equals_reference(dim, mode, sub_sample, bn_layer):
    block, ref = make_pair(dim, mode, sub_sample, bn_layer, implementation="fast")
    x = rand_x(dim)
    with torch.no_grad():
        expected = ref(x)
        fast = block(x)
        block.concat_algorithm = "chunked"  # the other fast path of "concatenation"
        chunked = block(x)
        block.implementation = "naive"
        naive = block(x)
        block.implementation = "auto"
        auto = block(x)
    assert fast.shape == x.shape
    assert (expected - x).abs().max() > 1e-3  # the block really does something
    torch.testing.assert_close(naive, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(chunked, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(auto, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim,mode,sub_sample,bn_layer", itertools.product(DIMS, MODES, (True, False), (True, False)))
def test_state_dict_layout(dim, mode, sub_sample, bn_layer):
    block, ref = make_pair(dim, mode, sub_sample, bn_layer)
    ours = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs
    prefix = "g.0." if sub_sample else "g."
    assert prefix + "weight" in ours and prefix + "bias" in ours
    assert ("W.1.running_var" in ours) == bn_layer and ("W.weight" in ours) == (not bn_layer)
    assert ("theta.weight" in ours) == (mode != "gaussian")
    assert not any(k.startswith("phi") for k in ours) or mode != "gaussian"
    if mode == "concatenation":
        assert ours["concat_project.0.weight"] == (1, 6, 1, 1)  # Conv2d on the pair grid, every dim


@pytest.mark.parametrize("dim", DIMS)
def test_concat_project_weight_from_conv_nd_shape_loads(dim):
    block, ref = make_pair(dim, "concatenation", True, True)
    state = ref.state_dict()
    state["concat_project.0.weight"] = state["concat_project.0.weight"].reshape(1, 6, *([1] * dim))
    other = NonLocalBlock(6, 3, dim, "concatenation").double().eval()
    other.load_state_dict(state, strict=True)
    x = rand_x(dim)
    torch.testing.assert_close(other(x), ref(x))


@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_attention_scale_none_is_inverse_sqrt_d(mode):
    block, ref = make_pair(2, mode, False, True, attention_scale=None)
    x = rand_x(2)
    torch.testing.assert_close(block(x), ref(x))
    block2, ref2 = make_pair(2, mode, False, True, attention_scale=0.3)
    torch.testing.assert_close(block2(x), ref2(x))


@pytest.mark.parametrize("mode", MODES)
def test_large_inter_channels_matches_naive(mode):
    torch.manual_seed(0)
    block = randomise(NonLocalBlock(16, 512, 2, mode, sub_sample=False, concat_algorithm="chunked",
                                    implementation="fast")).double()
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        fast = block(x)
        block.chunk_size = 5  # also the chunked path used when no fused kernel fits
        chunked = block(x)
        block.implementation = "naive"
        naive = block(x)
    torch.testing.assert_close(fast, naive)
    torch.testing.assert_close(chunked, naive)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_chunked_fast_path_matches_reference(mode, chunk_size):
    block, ref = make_pair(2, mode, False, True, chunk_size=chunk_size, concat_algorithm="chunked",
                           implementation="fast")
    x = rand_x(2, shape=(3, 5))
    torch.testing.assert_close(block(x), ref(x))


def test_relu_pairs_sorted_with_ties():
    """Integer-valued a, b: many a_i + b_j are exactly 0 and many b_j are equal."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(-3, 4, (2, 40, 1), generator=gen).double()
    b = torch.randint(-3, 4, (2, 1, 30), generator=gen).double()
    v = torch.randn(2, 30, 5, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(relu_pairs_sorted(a, b, v), torch.relu(a + b) @ v)
    assert relu_pairs_sorted(a[:, :0], b, v).shape == (2, 0, 5)


def test_relu_pairs_sorted_float32_accuracy():
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(1, 4096, 1, generator=gen), torch.randn(1, 1, 4096, generator=gen)
    v = torch.randn(1, 4096, 16, generator=gen)
    exact = torch.relu(a.double() + b.double()) @ v.double()
    torch.testing.assert_close(relu_pairs_sorted(a, b, v).double(), exact, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------------------
# The blocked explicit map: the softmax map built and used in cache-sized row blocks
# --------------------------------------------------------------------------------------


def plain_softmax_attention(q, k, v, scale):
    """y_i = Σ_j softmax_j(scale q_i·k_j) v_j, written out with explicit exp and sums."""
    s = scale * torch.einsum("bid,bjd->bij", q, k)
    e = torch.exp(s - s.max(dim=-1, keepdim=True).values)
    return torch.einsum("bij,bjc->bic", e / e.sum(dim=-1, keepdim=True), v)


@pytest.mark.parametrize("keep_map", [True, False])                   # the map kept, or rebuilt
@pytest.mark.parametrize("block_pairs", [1, 7, 40, 11 * 37, 2**21])   # 1 row .. every row in one block
@pytest.mark.parametrize("dq,dv", [(5, 3), (3, 5), (4, 4)])
def test_blocked_equals_the_formula_with_gradients(block_pairs, dq, dv, keep_map):
    g = torch.Generator().manual_seed(block_pairs + 10 * dq + dv)
    q, k, v = (torch.randn(2, n, d, generator=g, dtype=torch.float64).requires_grad_()
               for n, d in ((37, dq), (11, dq), (11, dv)))
    with torch.no_grad():
        q.mul_(3.0)                                          # logits of a few units: a peaked softmax
    dy = torch.randn(2, 37, dv, generator=g, dtype=torch.float64)
    got = blocked_softmax_attention(q, k, v, 0.7, block_pairs, keep_map)
    want = plain_softmax_attention(q, k, v, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(got, (q, k, v), dy)
    for a, b in zip(grads, torch.autograd.grad(want, (q, k, v), dy)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    assert torch.autograd.gradcheck(lambda *t: blocked_softmax_attention(*t, 0.7, block_pairs, keep_map),
                                    (q, k, v))


def test_blocked_accepts_strided_inputs_and_shared_q_k():
    """The block's layout: q = k = x viewed as (B, N, C) through a transpose ("gaussian")."""
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)      # (B, C, H, W)
    v = torch.randn(2, 35, 4, dtype=torch.float64, requires_grad=True)
    q = x.flatten(2).transpose(1, 2)                                          # (B, N, C), not contiguous
    got = blocked_softmax_attention(q, q, v, 0.3, block_pairs=64)
    want = plain_softmax_attention(q, q, v, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (gx, gv), (wx, wv) = (torch.autograd.grad(y.square().sum(), (x, v)) for y in (got, want))
    torch.testing.assert_close(gx, wx, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(gv, wv, rtol=1e-11, atol=1e-11)


def test_blocked_keeps_the_map_only_when_differentiated():
    """Training: the B×N×N_s map is saved (no recomputation); inference: one block of it."""
    B, N, Ns, d = 2, 64, 48, 4
    q, k, v = (torch.randn(B, n, d) for n in (N, Ns, Ns))
    block_pairs = 8 * Ns                                                      # blocks of 8 rows
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        blocked_softmax_attention(q.requires_grad_(), k, v, 1.0, block_pairs).sum().backward()
    assert max(sizes) == B * N * Ns
    peak = peak_memory(lambda: blocked_softmax_attention(q.detach(), k, v, 1.0, block_pairs))
    assert peak <= 4 * (B * N * d + B * 8 * Ns + 4 * B * 8)   # y, one block, its row maxima/sums: no map
    assert peak < 4 * B * N * Ns / 4
    assert peak_memory(lambda: plain_softmax_attention(q.detach(), k, v, 1.0)) >= 4 * B * N * Ns


def saved_sizes(fn):
    """The numbers of elements of the tensors autograd saves while fn() runs forward and backward."""
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        fn().sum().backward()
    return sizes


def test_blocked_rebuilds_the_map_above_blocked_max_pairs(monkeypatch):
    """keep_map=False saves O(N) per row (the log-sum-exp), not the map; None decides by size."""
    B, N, Ns, d = 2, 64, 48, 4
    q, k, v = (torch.randn(B, n, d, requires_grad=True) for n in (N, Ns, Ns))
    rebuilt = saved_sizes(lambda: blocked_softmax_attention(q, k, v, 1.0, 8 * Ns, keep_map=False))
    assert max(rebuilt) == B * N * d and B * N in rebuilt                  # q, k, v, y and L: no map
    kept = saved_sizes(lambda: blocked_softmax_attention(q, k, v, 1.0, 8 * Ns, keep_map=True))
    assert max(kept) == B * N * Ns
    assert max(saved_sizes(lambda: blocked_softmax_attention(q, k, v))) == B * N * Ns  # 2**13 <= 2**27
    monkeypatch.setattr(nonlocal_block, "BLOCKED_MAX_PAIRS", B * N * Ns - 1)
    assert max(saved_sizes(lambda: blocked_softmax_attention(q, k, v))) == B * N * d


def test_blocked_names_a_bad_block_size_and_keep_map():
    q = torch.randn(1, 4, 2)
    with pytest.raises(ValueError, match="block_pairs"):
        blocked_softmax_attention(q, q, q, 1.0, block_pairs=0)
    with pytest.raises(TypeError, match="keep_map"):
        blocked_softmax_attention(q, q, q, 1.0, keep_map="yes")


@pytest.mark.parametrize("mode", [*MODES, "concatenation/chunked"])
@pytest.mark.parametrize("implementation", ["fast", "naive"])
def test_fast_path_saves_no_pair_matrix_for_backward(mode, implementation):
    """What autograd keeps for the backward pass: O(N·d) tensors on the fast path, N×N naive."""
    mode, _, algorithm = mode.partition("/")
    block = NonLocalBlock(8, 4, 2, mode, sub_sample=False, implementation=implementation,
                          chunk_size=32, concat_algorithm=algorithm or "sorted")
    x = torch.randn(1, 8, 16, 16, requires_grad=True)
    N = 16 * 16
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = block(x)
    z.sum().backward()
    if implementation == "fast":
        assert max(sizes) <= 16 * N  # O(N·d): (N + 1)·2d at most, far below N·N
    else:
        assert max(sizes) >= N * N


@pytest.mark.parametrize("mode", SOFTMAX_MODES)
def test_query_split_over_threads_matches_reference(mode, monkeypatch):
    """CPU training with B < threads cuts the queries into heads: same values and gradients."""
    import nltutorial.nonlocal_block as nlb

    monkeypatch.setattr(nlb, "MIN_ROWS_PER_SPLIT", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        block, ref = make_pair(2, mode, False, True, implementation="fast")
        x = rand_x(2, B=1, shape=(3, 5)).requires_grad_()  # N = 15 rows: 3 heads of 5
        assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)
        z = block(x)
        z_ref = ref(x)
        torch.testing.assert_close(z, z_ref)
        g = torch.randn_like(z)
        grads = torch.autograd.grad(z, [x, *block.parameters()], g)
        grads_ref = torch.autograd.grad(z_ref, [x, *ref.parameters()], g)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b)
        # ... and still no N×N matrix: the fused kernel needs a stride-1 last dim in every head
        block = NonLocalBlock(8, 4, 2, mode, sub_sample=False, implementation="fast")
        x = torch.randn(1, 8, 16, 16, requires_grad=True)
        assert largest_saved_tensor(block, x) < 256 * 256 // 4  # k, v: split-fold expanded views
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,mode", itertools.product(DIMS, MODES))
def test_gradcheck_fast_path(dim, mode):
    block = randomise(NonLocalBlock(4, 2, dim, mode, sub_sample=dim != 1, implementation="fast")).double()
    shape = {1: (5,), 2: (4, 4), 3: (2, 4, 4)}[dim]
    x = torch.randn(2, 4, *shape, dtype=torch.float64, requires_grad=True)
    names = [n for n, p in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]

    def fn(x, *ps):
        return functional_call(block, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_chunked_path(mode):
    block = randomise(NonLocalBlock(4, 2, 2, mode, sub_sample=False, chunk_size=3,
                                    concat_algorithm="chunked", implementation="fast")).double()
    x = torch.randn(1, 4, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------
# implementation="auto": the rule, and the paths it takes agree with the other two
# --------------------------------------------------------------------------------------


def plain_rule(mode, B, N, Ns, dq, dv, grad=True, device="cpu"):
    """The cost model of the module docstring, restated: cheaper of the explicit and the fast path."""
    p = B * N * Ns
    if device != "cpu" or mode == "concatenation":
        return "fast"
    if p > 2**27:   # the blocked map rebuilt in the backward pass (O(N) memory) where the kernel pads much
        w = max(dq, dv)
        kernel = 14 * w + 128 * (N + 2 * Ns) * w / (N * Ns)
        wide = grad and mode in ("gaussian", "embedded") and dq >= 32 and dv >= 32 and Ns <= 8192
        return "blocked" if wide and 8 * dq + 6 * dv + 500 < kernel else "fast"
    low, slope, start, high = (60, 65, 21, 200) if grad else (70, 60, 20, 270)
    m = min(high, low + slope * max(0, math.log2(p) - start))
    passes = 3 if grad else 1
    explicit = passes * (2 * dq + 2 * dv + m)
    if mode == "dot":
        fast = passes * 2 * (N + Ns) * dq * dv / (N * Ns)
    elif p < 2**18:
        return "naive"
    else:
        w = max(dq, dv)
        fast = (7 if grad else 2) * 2 * w + (2 if grad else 1) * 64 * (N + 2 * Ns) * w / (N * Ns)
    path = "naive" if explicit <= fast and p <= 2**26 else "fast"   # the explicit map up to 256 MiB
    # the explicit map in cache-sized blocks: with gradients, softmax modes, both widths >= 32,
    # maps of 2**21 (below: in the caches anyway) to 2**27 pairs (it keeps one map, not three)
    if grad and mode in ("gaussian", "embedded") and dq >= 32 and dv >= 32 and 2**21 <= p:
        if path == "naive" or 6 * (dq + dv) + 300 < fast:
            return "blocked"
    return path


def test_choose_implementation_follows_the_cost_model():
    shapes = itertools.product(MODES, (1, 2, 8), (64, 256, 1024, 4096, 8192), (1, 4), (8, 64, 256), (8, 128),
                               (True, False))
    seen = set()
    for mode, B, N, pool, dq, dv, grad in shapes:
        got = choose_implementation(mode, B, N, N // pool, dq, dv, grad=grad)
        assert got == plain_rule(mode, B, N, N // pool, dq, dv, grad), (mode, B, N, pool, dq, dv, grad)
        seen.add((mode, got))
    assert {m for m, path in seen if path == "naive"} == {"gaussian", "embedded", "dot"}
    assert {m for m, path in seen if path == "fast"} == set(MODES)
    assert {m for m, path in seen if path == "blocked"} == {"gaussian", "embedded"}
    assert choose_implementation("embedded", 2, 64, 64, 128, 128, device="cuda") == "fast"
    assert choose_implementation("embedded", 2, 64, 64, 128, 128, device="meta") == "fast"
    with pytest.raises(ValueError, match="mode"):
        choose_implementation("softmax", 2, 64, 64, 8, 8)


def test_auto_picks_what_the_measurements_found():
    """The benchmark's shapes (C=256, d=128, B=2): the decisions the module docstring reports."""
    n = {s: s * s for s in (16, 32, 64, 128)}
    pick = lambda mode, side, pool, **kw: choose_implementation(  # noqa: E731
        mode, 2, n[side], n[side] // pool, 256 if mode == "gaussian" else 128, 128, **kw)
    assert pick("embedded", 16, 4) == pick("embedded", 16, 1) == "naive"  # < AUTO_MIN_PAIRS: overheads
    assert pick("embedded", 32, 4) == "naive"                 # 2**19 pairs: the map in the caches
    assert pick("embedded", 32, 1) == pick("gaussian", 32, 1) == "blocked"  # 2**21: the explicit map, blocked
    assert pick("embedded", 64, 1) == pick("embedded", 64, 4) == "fast"   # the map outgrows the caches
    assert pick("embedded", 32, 1, grad=False) == "fast"                   # no recomputation without grad
    assert pick("gaussian", 64, 1) == pick("gaussian", 64, 4) == "blocked"  # fused: w = 256 for d = 128
    assert pick("gaussian", 128, 1) == "fast"                # 16384 keys: 128-row blocks, rebuilt 1.12x fast
    assert pick("embedded", 128, 1) == pick("gaussian", 128, 1, grad=False) == "fast"   # equal widths; no grad
    assert choose_implementation("gaussian", 1, 8 * 56 * 56, 8 * 28 * 28, 256, 128) == "blocked"  # rebuilt, 0.85x
    assert choose_implementation("gaussian", 1, 8 * 56 * 56, 8 * 56 * 56, 256, 128) == "fast"  # 25088 keys
    assert pick("gaussian", 128, 4) == "blocked"             # 2**27: one map, not the explicit three
    assert choose_implementation("gaussian", 1, 8 * 28 * 28, 8 * 28 * 28, 256, 128) == "blocked"  # 3.9e7 pairs
    assert choose_implementation("embedded", 1, 4096, 1024, 8, 64) == "naive"  # PAM, C = 64: keys too thin
    assert choose_implementation("embedded", 1, 4096, 4096, 64, 512) == "blocked"  # PAM, C = 512
    assert pick("dot", 16, 4) == "naive" and pick("dot", 16, 1) == pick("dot", 64, 4) == "fast"
    assert all(pick("concatenation", s, p) == "fast" for s in n for p in (1, 4))


@pytest.fixture
def taken(monkeypatch):
    """Record which private path, _naive, _fast or _blocked, each NonLocalBlock call ran."""
    calls = []
    for name in ("_naive", "_fast", "_blocked"):
        original = getattr(NonLocalBlock, name)

        def spy(self, *args, _original=original, _name=name):
            calls.append(_name[1:])
            return _original(self, *args)

        monkeypatch.setattr(NonLocalBlock, name, spy)
    return calls


#: (C, d, shape): tiny maps (p < AUTO_MIN_PAIRS: the softmax map), and maps of 1024 positions,
#: with narrow (d = 3, 8: the fused kernel or the reordered dot wins) and wide (d = 128)
#: embeddings (the explicit map; not sub-sampled, p = 2 · 1024² = 2**21 = BLOCKED_MIN_PAIRS: blocked)
AUTO_CASES = {"small": (6, 3, None), "small-wide": (256, 128, None), "large-narrow": (16, 8, "large"),
              "large-wide": (256, 128, "large")}
LARGE = {1: (1024,), 2: (32, 32), 3: (4, 16, 16)}
#: the path "auto" takes there: softmax modes, "dot" (concatenation: always "fast")
AUTO_EXPECTED = {"small": ("naive", "fast"), "small-wide": ("naive", "naive"), "large-narrow": ("fast", "fast"),
                 "large-wide": ("naive", "fast")}


def outputs_and_grads(block, x, grad_z):
    block.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    z = block(x)
    z.backward(grad_z)
    return [z, x.grad] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("case", list(AUTO_CASES))
@pytest.mark.parametrize("dim,mode,sub_sample", itertools.product(DIMS, MODES, (True, False)))
def test_auto_fast_naive_agree_outputs_and_gradients(dim, mode, sub_sample, case, taken):
    C, d, shape = AUTO_CASES[case]
    if mode == "concatenation" and shape:              # the explicit form builds (B, 2d, N, Ns): keep d small
        if d == 128:
            pytest.skip("auto takes the fast path for concatenation whatever the widths")
        C, d = 4, 2
    block, ref = make_pair(dim, mode, sub_sample, True, C=C, d=d)
    x = rand_x(dim, C=C, shape=shape and LARGE[dim])
    grad_z = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    results = {}
    paths = [p for p in IMPLEMENTATIONS if p != "blocked" or mode in ("gaussian", "embedded")]
    for implementation in paths:
        block.implementation = implementation
        taken.clear()
        results[implementation] = outputs_and_grads(block, x, grad_z)
        assert taken == [implementation if implementation != "auto" else block.implementation_for(x)]
    expected = "fast" if mode == "concatenation" else AUTO_EXPECTED[case][mode == "dot"]
    if case == "large-wide" and mode in ("gaussian", "embedded") and not sub_sample:
        expected = "blocked"
    block.implementation = "auto"
    assert block.implementation_for(x) == expected
    torch.testing.assert_close(results["naive"][0], ref(x), rtol=1e-10, atol=1e-10)
    assert len(results["auto"]) == len(list(block.parameters())) + 2
    for other in set(paths) - {"naive"}:
        for a, b in zip(results[other], results["naive"]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode, C, d, shape", [
    ("gaussian", 64, 32, (24, 24)),                      # p = 2 · 576² ≈ 2**19.3, dq = 64, dv = 32
    ("embedded", 128, 64, (20, 20)),                     # p = 2 · 400² ≈ 2**18.3, dq = dv = 64
])
def test_auto_runs_the_blocked_path_where_the_rule_picks_it(mode, C, d, shape, taken, monkeypatch):
    """With the lower bound moved down to these small maps, "auto" runs _blocked, same numbers
    (embedded needs d = 64 here: at d = 32 the fused kernel is cheaper by the rule)."""
    monkeypatch.setattr(nonlocal_block, "BLOCKED_MIN_PAIRS", 2**18)
    block, ref = make_pair(2, mode, False, True, C=C, d=d)
    x = rand_x(2, C=C, shape=shape)
    assert block.implementation_for(x.requires_grad_()) == "blocked"
    grad_z = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    taken.clear()
    auto = outputs_and_grads(block, x, grad_z)
    assert taken == ["blocked"]
    block.implementation = "naive"
    naive = outputs_and_grads(block, x, grad_z)
    torch.testing.assert_close(naive[0], ref(x), rtol=1e-10, atol=1e-10)
    for a, b in zip(auto, naive):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_auto_follows_grad_mode_and_chunk_size():
    block = NonLocalBlock(256, mode="gaussian", sub_sample=False, implementation="auto")
    x = torch.randn(1, 256, 64, 64)                       # p = 2**24: blocked with gradients, fast without
    assert block.implementation_for(x) == "blocked"
    with torch.no_grad():
        assert block.implementation_for(x) == "fast"
    block.requires_grad_(False)
    assert block.implementation_for(x) == "fast"
    assert block.implementation_for(x.requires_grad_()) == "blocked"
    chunked = NonLocalBlock(256, mode="embedded", sub_sample=False, chunk_size=64,
                            implementation="auto")
    assert chunked.implementation_for(x) == "fast"        # chunks asked for: the fast path
    block.implementation = "naive"
    assert block.implementation_for(x) == "naive"
    assert NonLocalBlock(8, implementation="auto").implementation_for(torch.randn(0, 8, 4, 4)) == "naive"   # empty batch: no pairs


def test_the_default_path_and_every_other_are_stored_alike():
    block = NonLocalBlock(8)
    assert block.implementation == "auto" and "implementation='auto'" in repr(block)
    for implementation in IMPLEMENTATIONS:
        other = NonLocalBlock(8, implementation=implementation)
        other.load_state_dict(block.state_dict(), strict=True)  # the path is no part of the state
        assert list(other.state_dict()) == list(block.state_dict())
        block.implementation = implementation
        assert copy.deepcopy(block).implementation == implementation
        assert f"implementation={implementation!r}" in repr(block)


# --------------------------------------------------------------------------------------
# Initialisation, layouts and odd inputs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,mode,bn_layer", itertools.product(DIMS, MODES, (True, False)))
def test_identity_at_initialisation(dim, mode, bn_layer):
    torch.manual_seed(0)  # not the order of the tests: "concatenation" can be all ReLU(·) = 0 for a draw
    block = NonLocalBlock(6, dimension=dim, mode=mode, bn_layer=bn_layer)
    x = rand_x(dim, dtype=torch.float32).requires_grad_()
    for train in (True, False):
        block.train(train)
        z = block(x)
        assert torch.equal(z, x)
    z.sum().backward()  # ... and it can learn: W_z receives a gradient
    last = block.W[1].weight if bn_layer else block.W.weight
    assert last.grad is not None and last.grad.abs().sum() > 0
    assert block.inter_channels == 3


def test_inter_channels_default_at_least_one():
    assert NonLocalBlock(1).inter_channels == 1
    assert NonLocalBlock(64).inter_channels == 32


@pytest.mark.parametrize("mode", MODES)
def test_channels_last_noncontiguous_batch_one_odd_sizes(mode):
    block, ref = make_pair(2, mode, True, True)
    x = rand_x(2, B=1, shape=(7, 9))
    expected = ref(x)
    torch.testing.assert_close(block(x.to(memory_format=torch.channels_last)), expected)
    x_t = rand_x(2, B=1, shape=(9, 7)).transpose(2, 3)  # non-contiguous view of shape (1, 6, 7, 9)
    torch.testing.assert_close(block(x_t), ref(x_t.contiguous()))
    block3, ref3 = make_pair(3, mode, True, True)
    x3 = rand_x(3, B=1, shape=(3, 5, 7)).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(block3(x3), ref3(x3.contiguous()))
    # odd sides floor: j runs over 3×4 positions of the 7×9 grid
    _, attn = block(x, return_attention=True)
    assert attn.shape == (1, 63, 12)


# --------------------------------------------------------------------------------------
# Attention maps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim,mode", itertools.product(DIMS, MODES))
def test_return_attention(dim, mode):
    block, ref = make_pair(dim, mode, True, True)
    x = rand_x(dim)
    z, attn = block(x, return_attention=True)
    torch.testing.assert_close(z, ref(x))
    N = math.prod(SHAPES[dim])
    assert attn.shape[:2] == (2, N)
    if mode in SOFTMAX_MODES:
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, N, dtype=attn.dtype))
    if mode != "dot":
        assert (attn >= 0).all()
    block.max_attention_elements = attn.numel() - 1
    with pytest.raises(ValueError, match="max_attention_elements"):
        block(x, return_attention=True)
    block(x)  # the plain forward is not limited


# --------------------------------------------------------------------------------------
# Mixed precision
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*MODES, "concatenation/chunked"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_autocast_bf16_large_inputs_finite(mode, implementation):
    torch.manual_seed(0)
    mode, _, algorithm = mode.partition("/")
    if implementation == "blocked" and mode not in SOFTMAX_MODES:
        pytest.skip("'blocked' is a path of the softmax modes only")
    block = randomise(NonLocalBlock(8, mode=mode, sub_sample=False, implementation=implementation,
                                    concat_algorithm=algorithm or "sorted"))
    block.train()
    x = (100 * torch.randn(2, 8, 6, 6)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = block(x)
        z2, attn = block(x, return_attention=True)
    assert torch.isfinite(z).all() and torch.isfinite(z2).all() and torch.isfinite(attn).all()
    z.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters() if p.grad is not None)


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(in_channels=0), "in_channels"),
        (dict(in_channels=-3), "in_channels"),
        (dict(in_channels=8, inter_channels=0), "inter_channels"),
        (dict(in_channels=8, dimension=4), "dimension"),
        (dict(in_channels=8, dimension=0), "dimension"),
        (dict(in_channels=8, mode="softmax"), "mode"),
        (dict(in_channels=8, implementation="slow"), "implementation"),
        (dict(in_channels=8, mode="dot", implementation="blocked"), "implementation"),
        (dict(in_channels=8, attention_scale=0.0), "attention_scale"),
        (dict(in_channels=8, mode="dot", attention_scale=None), "attention_scale"),
        (dict(in_channels=8, chunk_size=0), "chunk_size"),
        (dict(in_channels=8, max_attention_elements=0), "max_attention_elements"),
        (dict(in_channels=8, mode="concatenation", concat_algorithm="fast"), "concat_algorithm"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NonLocalBlock(**kwargs)


def test_bad_inputs():
    block = NonLocalBlock(64, dimension=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 64, H, W\) for dimension=2, got \(2, 32, 8, 8\)"):
        block(torch.randn(2, 32, 8, 8))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 64, H, W\) for dimension=2, got \(2, 64, 8\)"):
        block(torch.randn(2, 64, 8))
    with pytest.raises(ValueError, match=r"\(B, 64, T, H, W\) for dimension=3"):
        NonLocalBlock(64, dimension=3)(torch.randn(2, 64, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 64, T\) for dimension=1"):
        NonLocalBlock(64, dimension=1)(torch.randn(2, 64, 8, 8))
    with pytest.raises(ValueError, match="sub_sample"):
        block(torch.randn(2, 64, 1, 8))
    with pytest.raises(ValueError, match="implementation"):
        block.implementation = "other"
    NonLocalBlock(64, dimension=2, sub_sample=False).eval()(torch.randn(1, 64, 1, 1))  # one position is fine


# --------------------------------------------------------------------------------------
# CUDA (skipped on CPU-only machines)
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inter_channels", [64, 512])
def test_cuda_fast_matches_naive(mode, inter_channels):
    torch.manual_seed(0)
    block = randomise(NonLocalBlock(2 * inter_channels, inter_channels, 2, mode, sub_sample=True,
                                    implementation="fast")).cuda()
    x = torch.randn(2, 2 * inter_channels, 16, 16, device="cuda", requires_grad=True)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        z = block(x)
        z.sum().backward()
        grad_fast = x.grad.clone()
        x.grad = None
        block.implementation = "naive"
        z_naive = block(x)
        z_naive.sum().backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(z, z_naive, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_fast, x.grad, rtol=1e-3, atol=1e-3)
    with torch.autocast("cuda", dtype=torch.float16):
        block.implementation = "fast"
        assert torch.isfinite(block(10 * x.detach())).all()


# ---------------------------------------------------------------------------------------------
# wake: a non-zero W_z for checks of the attention term
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bn_layer", [True, False])
def test_wake_makes_the_block_differ_from_the_identity_and_is_seeded(bn_layer):
    x = torch.randn(2, 8, 6, 5)
    torch.manual_seed(0)
    block = NonLocalBlock(8, bn_layer=bn_layer).eval()
    assert torch.equal(block(x), x)                                  # fresh: the identity
    assert wake(block, seed=3) is block
    z = block(x)
    assert (z - x).abs().max() > 1e-3
    torch.manual_seed(0)
    again = wake(NonLocalBlock(8, bn_layer=bn_layer).eval(), seed=3)
    assert torch.equal(again(x), z)                                  # same seed, same block
    torch.manual_seed(0)
    other = wake(NonLocalBlock(8, bn_layer=bn_layer).eval(), seed=4)
    assert not torch.equal(other(x), z)


def test_wake_reaches_every_block_of_a_model_and_names_bad_input():
    model = wake(video_resnet("c2d", attention="nl3d"))
    blocks = model.nl_blocks()
    assert len(blocks) == 2 and all(b.W[1].weight.abs().min() > 0 for b in blocks)
    assert not torch.equal(blocks[0].W[1].weight[:4], blocks[1].W[1].weight[:4])  # one stream, not reseeded
    with pytest.raises(ValueError, match="module must be or contain a NonLocalBlock"):
        wake(torch.nn.Conv2d(3, 3, 1))


# --------------------------------------------------------------------------------------
# Inputs: dtype, empty batch, numpy ints, batch of one pixel, memory format (issue 15)
# --------------------------------------------------------------------------------------


def test_dtype_is_checked_and_named():
    block = NonLocalBlock(8, dimension=2, sub_sample=False)
    with pytest.raises(TypeError, match=r"x has dtype torch.float64 but the parameters of NonLocalBlock have "
                                        r"dtype torch.float32"):
        block(torch.randn(2, 8, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got dtype torch.int64"):
        block(torch.ones(2, 8, 3, 3, dtype=torch.long))
    assert block.double()(torch.randn(2, 8, 3, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("dimension, spatial", [(1, (6,)), (2, (4, 5)), (3, (2, 4, 4))])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_empty_batch_gives_an_empty_result(dimension, spatial, sub_sample):
    block = wake(NonLocalBlock(8, dimension=dimension, sub_sample=sub_sample)).train()
    x = torch.randn(0, 8, *spatial, requires_grad=True)
    z, attn = block(x, return_attention=True)
    n = math.prod(spatial)
    kernel = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}[dimension]                    # the max-pooling of sub_sample
    ns = math.prod(s // k for s, k in zip(spatial, kernel)) if sub_sample else n
    assert z.shape == x.shape and attn.shape == (0, n, ns) and z.dtype == x.dtype
    assert block(x).shape == x.shape
    z.sum().backward()
    assert x.grad.shape == x.shape


def test_numpy_ints_are_accepted():
    np = pytest.importorskip("numpy")
    block = NonLocalBlock(np.int64(8), np.int32(4), dimension=np.int64(2), chunk_size=np.int64(16),
                          max_attention_elements=np.int64(4096))
    assert type(block.in_channels) is int and type(block.dimension) is int and block.inter_channels == 4
    assert block.chunk_size == 16 and type(block.max_attention_elements) is int
    assert block(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="in_channels must be a positive int"):
        NonLocalBlock(np.float64(8))


def test_batch_of_one_pixel_in_training_is_named():
    block = NonLocalBlock(8, dimension=2, sub_sample=False).train()
    with pytest.raises(ValueError, match=r"x must give at least 2 values per channel to the BatchNorm of W_z "
                                         r"in training mode, got shape \(1, 8, 1, 1\).*\.eval\(\)"):
        block(torch.randn(1, 8, 1, 1))
    assert block(torch.randn(2, 8, 1, 1)).shape == (2, 8, 1, 1)
    assert block.eval()(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)
    assert NonLocalBlock(8, sub_sample=False, bn_layer=False).train()(torch.randn(1, 8, 1, 1)).shape == (1, 8, 1, 1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dimension, shape, fmt", [(2, (2, 16, 6, 5), torch.channels_last),
                                                   (3, (2, 16, 2, 4, 4), torch.channels_last_3d)])
def test_fresh_block_returns_x_in_its_memory_format(mode, dimension, shape, fmt):
    block = NonLocalBlock(16, dimension=dimension, mode=mode).eval()
    x = torch.randn(shape)
    for inp, layout in ((x, torch.contiguous_format), (x.contiguous(memory_format=fmt), fmt)):
        z = block(inp)
        assert torch.equal(z, inp) and z.is_contiguous(memory_format=layout), (layout, z.stride())
    woke = wake(NonLocalBlock(16, dimension=dimension, mode=mode)).eval()     # a trained-like block too
    assert woke(x).is_contiguous() and woke(x.contiguous(memory_format=fmt)).is_contiguous(memory_format=fmt)


def test_resnet_with_fresh_blocks_equals_the_plain_one_exactly():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Conv2d(16, 10, 3, padding=1)).eval()
    with_nl = nn.Sequential(*plain[:2], NonLocalBlock(16), *plain[2:4], NonLocalBlock(16), plain[4]).eval()
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(with_nl(x), plain(x))
