"""Tests of nltutorial.cost against operation and byte counts worked out by hand."""

import torch
import torch.nn.functional as F
from torch import nn

from nltutorial.cost import count_flops, count_parameters, peak_memory


def test_count_parameters():
    lin = nn.Linear(3, 4)                                     # 3·4 weights + 4 biases
    assert count_parameters(lin) == 16
    lin.bias.requires_grad_(False)
    assert count_parameters(lin) == 16
    assert count_parameters(lin, trainable_only=True) == 12


def test_conv_and_matmul_flops_match_hand_counts():
    conv = nn.Conv2d(6, 10, 5, padding=2, bias=False)
    x = torch.randn(2, 6, 7, 9)
    assert count_flops(conv, x) == 2 * 2 * 10 * 6 * 25 * 7 * 9   # 2 per multiply-add, per output
    a, b = torch.randn(5, 7), torch.randn(7, 3)
    assert count_flops(torch.matmul, a, b) == 2 * 5 * 7 * 3
    assert count_flops(lambda t: t.relu() * 2, a) == 0             # elementwise work is not counted


def test_cpu_attention_is_counted_like_explicit_matmuls():
    B, H, N, Ns, d = 2, 1, 50, 30, 16
    q, k, v = torch.randn(B, H, N, d), torch.randn(B, H, Ns, d), torch.randn(B, H, Ns, d)
    expected = 2 * (2 * B * H * N * Ns * d)                        # q kᵀ and (softmax) v
    fused = count_flops(F.scaled_dot_product_attention, q, k, v)
    explicit = count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert fused == explicit == expected


def test_peak_memory_follows_allocations_and_frees():
    def fn():
        a = torch.ones(1000)                  # 4000 B
        b = torch.ones(2000)                  # 8000 B   -> 12000 live
        del a, b                              # -> 0
        c = torch.ones(500)                   # 2000 B
        view = c.view(20, 25)                 # a view: no new memory
        c.add_(1)                             # in place: no new memory
        return view

    assert peak_memory(fn) == 12000


def test_peak_memory_excludes_inputs_and_parameters_and_counts_the_output():
    lin = nn.Linear(100, 50)
    x = torch.randn(8, 100)
    assert peak_memory(lin, x) == 8 * 50 * 4                     # only the float32 output

    def chain(t):
        u = t * 2                             # 8·100·4 = 3200 B
        w = u + 1                             # 3200 B, u still alive: 6400 B
        return w.sum()                        # + 4 B while u and w are alive

    assert peak_memory(chain, x) == 3200 + 3200 + 4


def test_peak_memory_of_a_float64_product():
    a, b = torch.randn(30, 40, dtype=torch.float64), torch.randn(40, 20, dtype=torch.float64)
    assert peak_memory(torch.matmul, a, b) == 30 * 20 * 8


def test_auto_modules_are_counted_by_their_formula_whatever_the_dispatch():
    """PAM (C = 64): q, k are 8 wide, v 64. The fused CPU kernel pads q, k to 64, so "fast"
    does 2·N²·(64 + 64) multiply-add FLOPs where the formula has 2·N²·(8 + 64); an "auto"
    module is counted by the formula even at sizes where it runs the fused kernel."""
    from nltutorial.danet import PositionAttention
    from nltutorial.nonlocal_block import explicit_auto

    C, side = 64, 56
    N = side * side
    x = torch.randn(1, C, side, side)
    convs = 2 * N * C * (8 + 8 + 64)                          # the three 1×1 convolutions
    formula = convs + 2 * N * N * (8 + 64)
    auto = PositionAttention(C).eval()
    assert auto.implementation == "auto"
    naive = PositionAttention(C, implementation="naive").eval()
    fast = PositionAttention(C, implementation="fast").eval()
    assert count_flops(naive, x) == count_flops(auto, x) == formula
    assert count_flops(fast, x) == convs + 2 * N * N * (64 + 64)      # what the kernel does
    with torch.inference_mode():                              # the dispatch outside counting
        from nltutorial.nonlocal_block import choose_implementation
        assert choose_implementation("embedded", 1, N, N, 8, 64, grad=False) == "fast"
        with explicit_auto():
            torch.testing.assert_close(auto(x), naive(x))


def test_nonlocal_block_auto_is_the_default_and_counts_like_naive():
    from nltutorial import NonLocalBlock

    x = torch.randn(1, 32, 24, 24)
    block = NonLocalBlock(32, mode="gaussian").eval()
    assert block.implementation == "auto"
    naive = NonLocalBlock(32, mode="gaussian", implementation="naive").eval()
    naive.load_state_dict(block.state_dict())
    assert count_flops(block, x) == count_flops(naive, x)
